"""Kill a process tree without a PID namespace, and prove that none of it is left.

With PID namespaces (the usual case) killing the worker kills its tree and this
module only serves the proof. Without them the worker is a child subreaper, so every
descendant, even one that double-forked and called setsid, stays below it and is
found here; we kill bottom-up and repeat until nothing new appears, which also
catches a process that forked while we were killing.
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

KILL_ROUNDS = 50
"""Enough for any fork race; a fork bomb is bounded by the pids cgroup or RLIMIT_NPROC."""


def kill_tree(pid: int) -> None:
    """SIGKILL every descendant of `pid` (not `pid` itself) and its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for _ in range(KILL_ROUNDS):
        try:
            descendants = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        alive = [p for p in descendants if is_running(p)]
        if not alive:
            return
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)  # stop first: a stopped process cannot fork
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def is_running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def survivors(pids: list[int]) -> list[int]:
    """Those of `pids` that still run (zombies do not count: they hold no resources)."""
    alive = []
    for pid in pids:
        try:
            if is_running(psutil.Process(pid)):
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive
