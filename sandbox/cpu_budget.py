"""A call's `cpu_s` over its worker's whole tree, watched by the orchestrator.

The worker's CPU accounting cgroup (`sandbox._cpuacct`) holds every process of the
call. While it waits for the answer, the orchestrator wakes at the earliest moment the
tree could have spent what is left of its budget (what is left, divided by the CPUs it
could be running on), reads the usage, and either kills the tree or sleeps again for
the new remainder: a few reads per call, never a busy poll. RLIMIT_CPU stays as each
process's own backstop, and is all there is where no CPU cgroup can be made.
"""

from __future__ import annotations

import os
import time

from ._cpuacct import UsageFile
from .channel import Deadline, FrameReader

MIN_WAKE_S = 0.01
"""Shortest sleep between two reads, as the budget runs out (overshoot is at most
this times the number of CPUs)."""


class CpuSpent(Exception):
    """The call's tree used its `cpu_s`."""

    def __init__(self, used: float) -> None:
        super().__init__(used)
        self.used = used


def _possible_cpus() -> int:
    """Every CPU this machine can ever run a process on (hot-plugged ones included):
    a tool may widen its own affinity within its cpuset, so neither the orchestrator's
    affinity nor the CPUs online now are a bound. Read once: it cannot change."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            count = 0
            for part in f.read().strip().split(","):
                first, _, last = part.partition("-")
                count += int(last or first) - int(first) + 1
            return max(count, os.cpu_count() or 1)
    except (OSError, ValueError):
        return os.cpu_count() or 1


CPUS = _possible_cpus()


class CpuBudget:
    """One call's CPU seconds, counted from the moment it is made."""

    def __init__(self, usage: UsageFile | None, cpu_s: float) -> None:
        self.cpu_s = cpu_s
        self.cpus = CPUS
        self.file = usage
        self.due: float | None = None
        """The earliest moment the tree can have spent the budget, as of the last read."""
        self.wake: float | None = None
        """When to read again (None: there is no cgroup to read)."""
        now = time.monotonic()
        self.start = self._read() or 0.0
        if self.file is not None:
            self._plan(now, cpu_s)

    def _read(self) -> float | None:
        if self.file is None:
            return None
        try:
            return self.file.usage_s()
        except (OSError, ValueError):
            self.file = None  # gone with its worker: the exit status tells the rest
            return None

    def _plan(self, now: float, left: float) -> None:
        # `now` was taken before the read: the tree cannot spend `left` sooner.
        self.due = now + left / self.cpus
        self.wake = now + max(left / self.cpus, MIN_WAKE_S)

    def used(self) -> float | None:
        now = self._read()
        return None if now is None else now - self.start

    def check(self) -> float | None:
        """Raise CpuSpent if the budget is used; else when to look again (monotonic
        time), or None when there is no cgroup to read."""
        now = time.monotonic()
        used = self.used()
        if used is None:
            self.due = self.wake = None
            return None
        left = self.cpu_s - used
        if left <= 0:
            raise CpuSpent(used)
        self._plan(now, left)
        return self.wake

    def check_after(self) -> None:
        """`check`, when the answer has come: no read before `due`, since no tree of
        `cpus` CPUs can have spent the budget by then."""
        if self.due is None or time.monotonic() >= self.due:
            self.check()


def read_answer(reader: FrameReader, deadline: float, max_size: int, budget: CpuBudget) -> bytes:
    """`reader.read` until `deadline`, waking to check `budget` on the way; CpuSpent
    when it runs out first, also when it ran out just before the answer came."""
    wake = budget.wake  # read as the budget was made: nothing is spent yet
    while True:
        try:
            frame = reader.read(deadline if wake is None else min(wake, deadline), max_size)
        except Deadline:
            if time.monotonic() >= deadline:
                raise
            wake = budget.check()
            continue
        budget.check_after()
        return frame
