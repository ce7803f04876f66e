"""Tools the benchmarks call: trivial, CPU-bound, and hung."""

from __future__ import annotations

import os
import time

from tools import tool


@tool
def echo(x: int) -> int:
    """Return its argument.

    Args:
        x: Any integer.
    """
    return x


@tool
def spin_1ms(x: int) -> int:
    """Burn about one millisecond of CPU, then return its argument.

    Args:
        x: Any integer.
    """
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x


@tool
def hang(grandchild: bool) -> str:
    """Sleep forever; optionally leave a double-forked grandchild that ignores SIGTERM.

    Args:
        grandchild: Whether to leave the grandchild.
    """
    if grandchild:
        leave_grandchild()
    time.sleep(3600)
    return ""


def leave_grandchild() -> None:
    import signal

    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execvp("sleep", ["sleep", "3599.5"])
        os._exit(0)
    os.waitpid(pid, 0)
