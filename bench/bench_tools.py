"""Tools the benchmarks call: trivial, CPU-bound, and hung."""

from __future__ import annotations

import os
import signal
import threading
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


STOP = threading.Event()
"""Only a thread peer looks at it: the benchmark's way to end a 'hung' thread at exit,
since nothing else can stop a thread."""


@tool
def hang(grandchild: bool) -> str:
    """Sleep forever and ignore SIGTERM; optionally leave a double-forked grandchild.

    Args:
        grandchild: Whether to leave the grandchild.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if grandchild:
        leave_grandchild()
    STOP.wait(3600)
    return ""


def leave_grandchild() -> None:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execvp("sleep", ["sleep", "3599.5"])  # stats.MARKER
        os._exit(0)
    os.waitpid(pid, 0)
