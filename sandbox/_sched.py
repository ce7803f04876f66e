"""Short scheduler slices for the processes a call waits on, where the kernel has them.

A fresh call hands off twice: the orchestrator wakes the worker with the call, the
worker wakes the orchestrator with the answer. On a busy machine each woken task
waited for the running one's slice to end (1.4 ms by default here, on every hand-off,
more often than not). Since Linux 6.12 a task may ask for a shorter slice of its own
(`sched_setattr` with `sched_runtime` for SCHED_OTHER; no privilege needed): a woken
task with a short slice runs at once. It changes when a task runs, not how much CPU
it gets: its share stays that of its nice value. An older kernel ignores the field.

Who gets one: each worker (set as it is forked), and each thread that calls the pool
(once, on its first call). Not the zygote: woken by every request for a spare, it
would take the CPU from the caller that asked.

    set_short_slice()     # this thread, and what it starts or forks after"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import threading
from collections.abc import Callable

from ._linux import _libc

SLICE_NS = 100_000
"""The shortest slice the kernel allows (0.1 ms)."""
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
_ATTR = struct.Struct("IIQiIQQQII")  # struct sched_attr, SCHED_ATTR_SIZE_VER1
_SCHED_OTHER = 0
_RESET_ON_FORK = 0x01


def _get() -> tuple[int, ...] | None:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    buf = ctypes.create_string_buffer(_ATTR.size)
    if _libc.syscall(numbers[1], 0, buf, _ATTR.size, 0) != 0:
        return None
    return _ATTR.unpack(buf.raw)


def _set(attr: tuple[int, ...], runtime_ns: int) -> bool:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return False
    fields = list(attr)
    fields[0], fields[2], fields[5] = _ATTR.size, attr[2] & _RESET_ON_FORK, runtime_ns
    buf = ctypes.create_string_buffer(_ATTR.pack(*fields), _ATTR.size)
    return _libc.syscall(numbers[0], 0, buf, 0) == 0


def current_slice_ns() -> int | None:
    """This thread's own slice (0: the kernel's default); None where unknown."""
    attr = _get()
    return None if attr is None or attr[1] != _SCHED_OTHER else attr[5]


def set_short_slice() -> bool:
    """Ask for `SLICE_NS` for this thread (and what it forks or starts after);
    SCHED_OTHER threads only. False where it was not set."""
    attr = _get()
    if attr is None or attr[1] != _SCHED_OTHER:
        return False
    return _set(attr, SLICE_NS)


def short_slice_for_children() -> Callable[[], bool]:
    """`set_short_slice` worked out now, for the children this thread forks later (the
    zygote's workers): each then makes one system call instead of two and the
    packing around them, on its set-up's clock. The attribute is this thread's own
    (policy, nice) with the short slice: a child inherits both."""
    numbers = _SYSCALLS.get(platform.machine())
    attr = _get()
    if numbers is None or attr is None or attr[1] != _SCHED_OTHER:
        return lambda: False
    fields = list(attr)
    fields[0], fields[2], fields[5] = _ATTR.size, attr[2] & _RESET_ON_FORK, SLICE_NS
    buf = ctypes.create_string_buffer(_ATTR.pack(*fields), _ATTR.size)
    syscall, number = _libc.syscall, numbers[0]
    return lambda: syscall(number, 0, buf, 0) == 0


def set_default_slice() -> bool:
    """Back to the kernel's default slice (what a short one's thread forks inherits)."""
    attr = _get()
    if attr is None or attr[1] != _SCHED_OTHER or attr[5] == 0:
        return False
    return _set(attr, 0)


def set_batch() -> bool:
    """SCHED_BATCH for this thread: a woken batch task never preempts the running one
    (the zygote: asked for a spare by a caller, it then forks and makes cgroups in the
    kernel, which here is not preempted, and held that caller's CPU for up to 10 ms
    under load). Its share of the CPU is unchanged. False where it was not set."""
    return batch_of(0)


def batch_of(pid: int) -> bool:
    """`set_batch` for the thread `pid` (root may set it on any process)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    return True


def off_this_cpu(pid: int) -> bool:
    """Keep the process `pid` off the CPU this thread runs on, on the others it may use:
    a killed worker tears its address space down in the kernel, which here is not
    preempted, and woken on the killer's CPU it ran that ahead of the killer's return
    (1-2 ms, whatever its policy). False where it has no other CPU, or may not be moved."""
    try:
        others = os.sched_getaffinity(pid) - {_libc.sched_getcpu()}
        if not others:
            return False
        os.sched_setaffinity(pid, others)
    except OSError:
        return False
    return True


def set_normal() -> bool:
    """Back to SCHED_OTHER (a worker of a batch zygote, where no short slice was set)."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    return True


class ShortSlices(threading.local):
    """`set_short_slice` once per thread that calls `ensure` (the first call pays the
    reschedule a change of slice causes, about a millisecond on a busy machine; a
    change undone after each call cost that twice per call)."""

    done = False

    def ensure(self) -> None:
        if not self.done:
            self.done = True
            set_short_slice()
