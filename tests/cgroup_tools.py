"""A tool that only a cgroup stops: what it reports says which limit did (the memfd
bomb is tests/attack_tools.py's)."""

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
