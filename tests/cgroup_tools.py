"""Tools that only a cgroup stops: what they report says which limit did."""

from __future__ import annotations

import json
import os
import signal

from tools import tool


@tool
def cgroup_fork_bomb() -> str:
    """Fork until refused; report how many children, the process rlimit and the cgroup."""
    children = 0
    try:
        while children < 2000:
            pid = os.fork()
            if pid == 0:
                signal.pause()
                os._exit(0)
            children += 1
    except OSError as exc:
        stopped = exc.strerror
    else:
        stopped = "never"
    with open("/proc/self/limits") as f:
        nproc = next(line.split()[2] for line in f if line.startswith("Max processes"))
    with open("/proc/self/cgroup") as f:
        pids = next((line.strip() for line in f if ":pids:" in line), "")
    return json.dumps({"children": children, "stopped": stopped, "nproc": nproc, "pids": pids})


@tool
def cgroup_memfd_bomb() -> str:
    """Fill anonymous memory files with write(), which RLIMIT_AS does not count."""
    block = b"x" * (1 << 20)
    fds, total = [], 0
    try:
        while total < (2 << 30):
            fd = os.memfd_create("bomb")
            fds.append(fd)
            for _ in range(8):
                os.write(fd, block)
                total += len(block)
    except OSError as exc:
        return f"stopped after {total >> 20} MiB: {exc.strerror}"
    return f"ALLOWED: {total >> 20} MiB"
