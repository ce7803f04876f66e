"""CPU time of a worker's whole tree, from a CPU accounting cgroup per worker.

RLIMIT_CPU counts one process: six children of a tool each get the whole `cpu_s`. A
cgroup counts every process in it, and each child of a worker stays in its worker's.
Where the machine has one, the zygote makes a cgroup of its own, nested in the one it
runs in (so a container's own accounting holds), and one per worker below it; the
orchestrator reads the usage while it waits for the answer.

Probed, never assumed, in this order: cgroup v1 `cpuacct` (`cpuacct.usage`, in
nanoseconds), then cgroup v2 (`cpu.stat`, `usage_usec`; counted without the cpu
controller enabled), wherever /proc/self/mountinfo has them mounted (a hybrid host's
v2 is at /sys/fs/cgroup/unified).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from . import _cgroups

V1_USAGE = "cpuacct.usage"
V2_USAGE = "cpu.stat"


def usage_s(usage_file: str) -> float:
    """CPU seconds used so far by every process ever in the cgroup of `usage_file`
    (what exited included). Raises OSError when it cannot be read."""
    with open(usage_file) as f:
        text = f.read()
    if os.path.basename(usage_file) == V1_USAGE:
        return int(text) / 1e9
    for line in text.splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    raise OSError(f"{usage_file} has no usage_usec")


class UsageFile:
    """A usage file held open, so that each read is one `pread` (a call reads it at
    least once: three system calls and a text decoder were a fifth of a warm call)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._v1 = os.path.basename(path) == V1_USAGE
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def usage_s(self) -> float:
        """As `usage_s(path)`. Raises OSError once the cgroup is gone (ENODEV) or closed."""
        if self._fd is None:
            raise OSError(f"{self.path} is closed")
        data = os.pread(self._fd, 4096, 0)
        if self._v1:
            return int(data) / 1e9
        for line in data.splitlines():
            if line.startswith(b"usage_usec "):
                return int(line.split()[1]) / 1e6
        raise OSError(f"{self.path} has no usage_usec")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def candidates(named: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(parent directory for our cgroup, name of its usage file), best first: beneath a
    delegated subtree if `named` holds one for cpuacct, else beneath our own cgroup."""
    found = []
    for v2, usage in ((False, V1_USAGE), (True, V2_USAGE)):
        mount = _cgroups.hierarchy("" if v2 else "cpuacct")
        marker = "cgroup.controllers" if v2 else usage
        if mount is None or not os.path.isfile(os.path.join(mount[0], marker)):
            continue
        for parent in _cgroups.parents("cpuacct", named or {}, v2=v2):
            found.append((parent, usage))
    return found


def make_root(
    name: str, sweep: Callable[[str], None], named: Mapping[str, str] | None = None
) -> tuple[str | None, str, str]:
    """Make the zygote's CPU cgroup: (its path or None, its usage file's name, why not).
    A child is made and read once, so a hierarchy that only looks usable is refused."""
    reasons = []
    for parent, usage in candidates(named):
        sweep(parent)
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except OSError as exc:
            reasons.append(f"mkdir {path}: {exc.strerror}")
            continue
        probe = os.path.join(path, "probe")
        try:
            os.mkdir(probe)
            usage_s(os.path.join(probe, usage))
        except (OSError, ValueError) as exc:
            reasons.append(f"{probe}: {exc}")
            for directory in (probe, path):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            continue
        os.rmdir(probe)
        return path, usage, ""
    return None, "", "; ".join(reasons) or "no cpuacct (v1) or cgroup v2 hierarchy mounted"
