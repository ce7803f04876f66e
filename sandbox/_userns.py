"""A user namespace of the zygote's own, for an orchestrator that is not root (or is
root without CAP_SYS_ADMIN, as in a container by default).

Inside it the zygote holds every capability, over namespaces it creates itself and
nothing of the host's: so it can give each worker what root gets (PID, mount, IPC
namespaces, the jail root, the empty network namespace) without being root. The
caller's own uid and gid are mapped to themselves, as bubblewrap does by default: the
zygote keeps `os.geteuid()`, workers run as the user, and once a worker drops its
capabilities it has no more power than the user had.

The order is the kernel's: `unshare(CLONE_NEWUSER)` by a single-threaded process, then
`uid_map`, `deny` into `setgroups` (without it an unprivileged gid_map is refused, and
with it no one can shed a group to read what the group may not: CVE-2014-8989), then
`gid_map`. Root maps uid 0 to itself, which Linux 5.12+ allows only to a creator that
holds CAP_SETFCAP (else a file capability set inside would count outside).

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

CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN, CAP_SETFCAP = 6, 7, 21, 31
ROOT_MAP_CAPABILITIES = (CAP_SETUID, CAP_SETGID, CAP_SETFCAP)


def write_maps(uid: int, gid: int) -> None:
    """Map `uid` and `gid` to themselves in the user namespace we just entered."""
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny\n")
    except FileNotFoundError:
        # A kernel older than 3.19 lets an unprivileged gid_map keep supplementary
        # groups that could then be dropped to reach what they deny: refuse it.
        raise OSError("this kernel has no /proc/self/setgroups (CVE-2014-8989)") from None
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise OSError(exc.errno, f"writing {path}: {exc.strerror}") from None


def enter(pid_namespace: bool) -> None:
    """Make this process (the zygote) the owner of a new user namespace, and with
    `pid_namespace` pid 1 of a new PID namespace in it. Returns in the new zygote; the
    original process waits for it and exits with its status."""
    uid, gid = os.geteuid(), os.getegid()
    flags = _linux.CLONE_NEWUSER | (_linux.CLONE_NEWPID if pid_namespace else 0)
    helper = _MapWriter() if uid == 0 and _may_map_ranges() else None
    try:
        _linux.unshare(flags)
    except BaseException:
        if helper is not None:
            helper.cancel()
        raise
    if helper is not None:
        helper.write()
    else:
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


def _may_map_ranges() -> bool:
    """Root without CAP_SYS_ADMIN may still hold what a map of more than its own uid
    takes, in the namespace it leaves (Docker's defaults keep all three)."""
    effective = _linux.capabilities_effective()
    return all(effective & (1 << cap) for cap in ROOT_MAP_CAPABILITIES)


def root_ranges() -> list[tuple[int, int]]:
    """(first, count) of the ids root maps to themselves: itself, nobody, and the
    block workers take their uids from (`sandbox.uids`), as they are on the host."""
    from .uids import NOBODY, UID_BASE, UID_SPAN

    return [(0, 1), (NOBODY, 1), (UID_BASE, UID_SPAN)]


class _MapWriter:
    """A child forked before `unshare`, so still in the namespace we leave and holding
    its capabilities there: only such a process may write a map of several ranges
    (the one inside has its capabilities in the new namespace alone). It waits for
    the word, writes our maps, and says what failed, if anything."""

    def __init__(self) -> None:
        go_r, self._go = os.pipe2(os.O_CLOEXEC)
        self._said, said_w = os.pipe2(os.O_CLOEXEC)
        target = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._go)
            os.close(self._said)
            try:
                if os.read(go_r, 1) == b"1":
                    lines = "".join(f"{i} {i} {n}\n" for i, n in root_ranges())
                    # setgroups stays allowed: workers set their groups, as root's do.
                    _write(f"/proc/{target}/uid_map", lines)
                    _write(f"/proc/{target}/gid_map", lines)
            except BaseException as exc:
                os.write(said_w, str(exc).encode()[:500] or b"failed")
            finally:
                os._exit(0)
        os.close(go_r)
        os.close(said_w)

    def write(self) -> None:
        os.write(self._go, b"1")
        os.close(self._go)
        with os.fdopen(self._said, "rb") as f:
            said = f.read().decode(errors="replace")
        os.waitpid(self.pid, 0)
        if said:
            raise OSError(f"the maps, written from outside: {said}")

    def cancel(self) -> None:
        os.close(self._go)  # it reads nothing and exits
        os.close(self._said)
        os.waitpid(self.pid, 0)


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


def why_refused(error: str, proc: str = "/proc", root: str = "/") -> str:
    """The host's reason for refusing user namespaces, and its fix, in one line.
    `proc`, `root`: where /proc and / are (a test gives trees of its own)."""
    for name, bad, fix in (
        (
            "sys/kernel/unprivileged_userns_clone",
            "0",
            "kernel.unprivileged_userns_clone = 0 (Debian, Arch): "
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ),
        (
            "sys/user/max_user_namespaces",
            "0",
            "user.max_user_namespaces = 0: sysctl -w user.max_user_namespaces=15000",
        ),
        (
            "sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "kernel.apparmor_restrict_unprivileged_userns = 1 (Ubuntu 23.10+): add an "
            "AppArmor profile that allows userns for this Python (see the README), or "
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        ),
    ):
        if _read(os.path.join(proc, name)) == bad:
            return f"{error}: {fix}"
    if "gVisor" in _read(os.path.join(proc, "version")):
        return f"{error}: gVisor does not offer nested namespaces to this process"
    status = _status(proc)
    caps = int(status.get("CapEff", "0"), 16)
    if os.geteuid() == 0 and "uid_map" in error and not caps & (1 << CAP_SETFCAP):
        return (
            f"{error}: root without CAP_SETFCAP may not map uid 0 into a user namespace "
            "(Linux 5.12+): keep CAP_SETFCAP (Docker keeps it by default) or CAP_SYS_ADMIN"
        )
    filtered = status.get("Seccomp") == "2"
    if filtered or _in_container(proc, root):
        root = os.geteuid() == 0
        no_admin = root and not caps & (1 << CAP_SYS_ADMIN)
        cause = "a seccomp filter refuses unshare" if filtered else "the container refuses it"
        if no_admin:
            cause += ", and root has no CAP_SYS_ADMIN"
        return (
            f"{error}: {cause} (Docker's defaults): run the container with --security-opt "
            "seccomp=unconfined (or a profile that allows unshare, setns, mount, "
            "pivot_root and clone with CLONE_NEW* flags)"
            + (", and --cap-add SYS_ADMIN for root's own namespaces" if no_admin else "")
        )
    return error


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _status(proc: str) -> dict[str, str]:
    fields = {}
    for line in _read(os.path.join(proc, "self", "status")).splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _in_container(proc: str, root: str) -> bool:
    if any(os.path.exists(os.path.join(root, p)) for p in (".dockerenv", "run/.containerenv")):
        return True
    text = _read(os.path.join(proc, "1", "cgroup"))
    return any(word in text for word in ("docker", "kubepods", "containerd", "libpod"))
