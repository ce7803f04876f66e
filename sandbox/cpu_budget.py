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

from . import _cpuacct
from .channel import Deadline, FrameReader

MIN_WAKE_S = 0.01
"""Shortest sleep between two reads, as the budget runs out (overshoot is at most
this times the number of CPUs)."""


class CpuSpent(Exception):
    """The call's tree used its `cpu_s`."""

    def __init__(self, used: float) -> None:
        super().__init__(used)
        self.used = used


class CpuBudget:
    """One call's CPU seconds, counted from the moment it is made."""

    def __init__(self, usage_file: str | None, cpu_s: float) -> None:
        self.cpu_s = cpu_s
        # Any CPU the tree can run on: a tool may widen its own affinity within its
        # cpuset, so the orchestrator's affinity is not a bound, the machine's is.
        self.cpus = os.cpu_count() or 1
        self.file = usage_file
        self.start = self._read() or 0.0

    def _read(self) -> float | None:
        if self.file is None:
            return None
        try:
            return _cpuacct.usage_s(self.file)
        except (OSError, ValueError):
            self.file = None  # gone with its worker: the exit status tells the rest
            return None

    def used(self) -> float | None:
        now = self._read()
        return None if now is None else now - self.start

    def check(self) -> float | None:
        """Raise CpuSpent if the budget is used; else when to look again (monotonic
        time), or None when there is no cgroup to read."""
        used = self.used()
        if used is None:
            return None
        left = self.cpu_s - used
        if left <= 0:
            raise CpuSpent(used)
        return time.monotonic() + max(left / self.cpus, MIN_WAKE_S)


def read_answer(reader: FrameReader, deadline: float, max_size: int, budget: CpuBudget) -> bytes:
    """`reader.read` until `deadline`, waking to check `budget` on the way; CpuSpent
    when it runs out first, also when it ran out just before the answer came."""
    while True:
        wake = budget.check()
        try:
            frame = reader.read(deadline if wake is None else min(wake, deadline), max_size)
        except Deadline:
            if time.monotonic() >= deadline:
                raise
            continue
        budget.check()
        return frame
