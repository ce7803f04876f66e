"""A user namespace of the zygote's own, for an orchestrator that is not root.

Inside it the zygote holds every capability, over namespaces it creates itself and
nothing of the host's: so it can give each worker what root gets (PID, mount, IPC
namespaces, the jail root, the empty network namespace) without being root. The
caller's own uid and gid are mapped to themselves, as bubblewrap does by default: the
zygote keeps `os.geteuid()`, workers run as the user, and once a worker drops its
capabilities it has no more power than the user had.

The order is the kernel's: `unshare(CLONE_NEWUSER)` by a single-threaded process, then
`uid_map`, `deny` into `setgroups` (without it an unprivileged gid_map is refused, and
with it no one can shed a group to read what the group may not: CVE-2014-8989), then
`gid_map`.

With a PID namespace as well, the zygote becomes pid 1 of one owned by its user
namespace (the process that was started stays behind and waits for it): only from
there can it make a fresh PID namespace for every worker and step back out, which
`setns` refuses into the host's.
"""

from __future__ import annotations

import os
import signal
from typing import NoReturn

from . import _linux


def write_maps(uid: int, gid: int) -> None:
    """Map `uid` and `gid` to themselves in the user namespace we just entered."""
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1\n")
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny\n")
    except FileNotFoundError:
        # A kernel older than 3.19 lets an unprivileged gid_map keep supplementary
        # groups that could then be dropped to reach what they deny: refuse it.
        raise OSError("this kernel has no /proc/self/setgroups (CVE-2014-8989)") from None
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1\n")


def enter(pid_namespace: bool) -> None:
    """Make this process (the zygote) the owner of a new user namespace, and with
    `pid_namespace` pid 1 of a new PID namespace in it. Returns in the new zygote; the
    original process waits for it and exits with its status."""
    uid, gid = os.geteuid(), os.getegid()
    flags = _linux.CLONE_NEWUSER | (_linux.CLONE_NEWPID if pid_namespace else 0)
    _linux.unshare(flags)
    write_maps(uid, gid)
    if not pid_namespace:
        return
    pid = os.fork()
    if pid == 0:
        # The waiting process is our only link to the orchestrator's process tree:
        # if it is killed, so is this namespace, workers and all.
        # (Had it died already, the orchestrator's end of our control socket would be
        # closed too, and we would exit on reading it.)
        _linux.set_parent_death_signal(signal.SIGKILL)
        return
    _wait_for(pid)


def _wait_for(pid: int) -> NoReturn:
    """The original process: pass SIGTERM on, hold nothing open, exit as the zygote did."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as the zygote: the orchestrator decides
    os.closerange(3, 65536)  # the control socket is the zygote's alone
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(1)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def probe(pid_namespace: bool) -> None:
    """In a throwaway child: the whole sequence a zygote will go through, as a host
    that allows `unshare` but refuses the maps (AppArmor's restriction) is caught only
    by trying each step."""
    enter(pid_namespace=False)
    flags = _linux.CLONE_NEWNS | _linux.CLONE_NEWNET | _linux.CLONE_NEWIPC
    _linux.unshare(flags | (_linux.CLONE_NEWPID if pid_namespace else 0))


def why_refused(error: str) -> str:
    """The host's reason for refusing unprivileged user namespaces, and its fix."""
    for path, bad, fix in (
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "0",
            "kernel.unprivileged_userns_clone = 0 (Debian, Arch): "
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ),
        (
            "/proc/sys/user/max_user_namespaces",
            "0",
            "user.max_user_namespaces = 0: sysctl -w user.max_user_namespaces=15000",
        ),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "kernel.apparmor_restrict_unprivileged_userns = 1 (Ubuntu 23.10+): add an "
            "AppArmor profile that allows userns for this Python (see the README), or "
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        ),
    ):
        try:
            with open(path) as f:
                if f.read().strip() == bad:
                    return fix
        except OSError:
            pass
    if _in_gvisor():
        return f"{error}: gVisor does not offer nested namespaces to this process"
    if _in_container():
        return (
            f"{error}: the container refuses unshare(CLONE_NEWUSER), as Docker's default "
            "seccomp profile does: run it with --security-opt seccomp=unconfined (or a "
            "profile that allows unshare and clone with CLONE_NEWUSER)"
        )
    return error


def _in_container() -> bool:
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return True
    try:
        with open("/proc/1/cgroup") as f:
            text = f.read()
    except OSError:
        return False
    return any(word in text for word in ("docker", "kubepods", "containerd", "libpod"))


def _in_gvisor() -> bool:
    try:
        with open("/proc/version") as f:
            return "gVisor" in f.read()
    except OSError:
        return False
