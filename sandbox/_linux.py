"""Linux process-control calls the standard library lacks, each with a way to ask
whether it works here.

Everything in this module is a thin ctypes wrapper; callers decide what to do when a
call fails (see `zygote.py`: a PID namespace when the kernel gives one, a child
subreaper plus a tree kill when it does not).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import signal
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_CAPABILITY_VERSION_3 = 0x20080522
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED, their locks:
# uid 0 never regains capabilities, even through execve.
_SECUREBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to us when the thread that forked us exits."""
    prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> None:
    """Orphaned descendants become our children instead of init's, so we can find them."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


CAP_DAC_READ_SEARCH = 2

_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
_KEYCTL_GET_KEYRING_ID = 0
_KEYCTL_JOIN_SESSION_KEYRING = 1
_KEYCTL_CLEAR = 7
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5


def _keyctl(operation: int, arg: int | None) -> int:
    number = _SYS_KEYCTL.get(platform.machine())
    if number is None:
        raise OSError(f"keyctl: no system call number for {platform.machine()}")
    result = _libc.syscall(
        ctypes.c_long(number), ctypes.c_int(operation), ctypes.c_long(arg or 0), 0, 0, 0
    )
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl({operation}): {os.strerror(err)}")
    return int(result)


def join_new_session_keyring() -> None:
    """Replace the session keyring we inherited with a new, empty, anonymous one:
    keyrings are not namespaced, and the orchestrator's may hold secrets."""
    _keyctl(_KEYCTL_JOIN_SESSION_KEYRING, None)


def keyctl_get_keyring_id(special: int) -> int:
    return _keyctl(_KEYCTL_GET_KEYRING_ID, special)


def clear_user_keyrings() -> None:
    """Empty our uid's user keyrings, which outlive every process of the uid: what an
    earlier call of the same uid left there must not reach this one."""
    for keyring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
        try:
            _keyctl(_KEYCTL_CLEAR, keyring)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:  # a kernel without keyrings has none to leak
                raise


def drop_privileges(
    uid: int | None,
    keep: tuple[int, ...] = (),
    groups: tuple[int, ...] = (),
    *,
    dumpable: bool = True,
) -> None:
    """Give up root for good: switch to `uid` (also as gid, with only `groups` as
    supplementary groups) when one is given, and keep no capability but those in `keep`.
    With `dumpable` False, a switch of uid leaves the process non-dumpable.

    The securebits are set and locked first: NOROOT (uid 0 never regains capabilities,
    even through execve) and NO_SETUID_FIXUP (the switch of uid keeps the capability
    sets as they are, so they can be narrowed to `keep` after it). The bounding set is
    emptied, so that nothing is regained through execve either.
    """
    if os.geteuid() == 0:
        prctl(PR_SET_SECUREBITS, _SECUREBITS_LOCKED_NOROOT)
    if not _bounding_set_empty:
        drop_bounding_set()
    _libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    if uid is not None:
        os.setgroups(list(groups))
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # The switch made us non-dumpable, which hands /proc/self to root: without
        # capabilities the tool could not read its own fds or environment there. No
        # other process shares the uid (or, with `nobody`, the PID namespace).
        if dumpable:
            prctl(PR_SET_DUMPABLE, 1)
    mask = sum(1 << c for c in keep)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    # {effective, permitted, inheritable} for capabilities 0-31, then for 32-63
    data = (ctypes.c_uint32 * 6)(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0, mask >> 32, mask >> 32, 0)
    _check(_libc.capset(header, data), "capset")


_bounding_set_empty = False


def drop_bounding_set() -> None:
    """Empty the capability bounding set: nothing can be gained through execve. The
    zygote does it once (it never execs), so that its workers need not make the forty
    calls each; the set is inherited."""
    global _bounding_set_empty
    cap = 0
    while True:
        failed = _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0
        if failed and ctypes.get_errno() == 22:  # EINVAL: past the last capability
            break
        if failed:
            return  # EPERM (no CAP_SETPCAP): capset in drop_privileges empties the rest
        cap += 1
        if cap > 128:
            break
    _bounding_set_empty = True


def host_pid() -> int:
    """Our pid as the machine's /proc knows it: the zygote may be pid 1 of a PID
    namespace of its own, and names that must be unique (cgroups) need this one."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return os.getpid()


def capabilities_effective() -> int:
    """This process's effective capability mask, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (Linux 5.12+)
_MOUNT_ATTR_RDONLY = 0x1
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000


def _mount_attr(attr_set: int, attr_clr: int) -> ctypes.Array[ctypes.c_char]:
    """struct mount_attr: attr_set, attr_clr, propagation, userns_fd."""
    packed = struct.pack("=QQQQ", attr_set, attr_clr, 0, 0)
    return ctypes.create_string_buffer(packed, len(packed))


# Made once (in the zygote): the kernel only reads them.
_SET_RDONLY = _mount_attr(_MOUNT_ATTR_RDONLY, 0)
_CLEAR_RDONLY = _mount_attr(0, _MOUNT_ATTR_RDONLY)


def set_readonly(target: str, readonly: bool, recursive: bool) -> bool:
    """`mount_setattr`: set (or clear) the read-only flag of the mount at `target`,
    and with `recursive` of every mount beneath it, leaving their other flags as they
    are. False where the kernel has no `mount_setattr` (before 5.12); raises on any
    other failure."""
    attr = _SET_RDONLY if readonly else _CLEAR_RDONLY
    result = _libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(_AT_FDCWD),
        target.encode(),
        ctypes.c_uint(_AT_RECURSIVE if recursive else 0),
        attr,
        ctypes.c_size_t(len(attr)),
    )
    if result != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            return False
        raise OSError(err, f"mount_setattr {target}: {os.strerror(err)}")
    return True


def private_mounts(workdir: str, size_mb: int, own_proc: bool, owner: int | None = None) -> None:
    """A mount namespace of our own: the workdir becomes a tmpfs of `size_mb` (a disk
    quota) owned by `owner`, and with `own_proc` /proc shows only our PID namespace."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    options = f"size={size_mb}m,mode=0700"
    if owner is not None:
        options += f",uid={owner},gid={owner}"
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, options)
    if own_proc:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """glibc has no wrapper for it: the raw system call."""
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: no system call number for {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode()), "pivot_root")


def resize_tmpfs(path: str, size_mb: int) -> None:
    mount(None, path, None, MS_REMOUNT | MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode=0700")


class PidNamespaces:
    """Hands out a fresh PID namespace for each fork of a single-threaded parent.

    `unshare(CLONE_NEWPID)` only affects the next child, and a second unshare fails
    with EINVAL until the parent joins its own namespace again; so each fork is
    bracketed by `enter()` and `leave()`. The forked child is pid 1 of its namespace:
    when it dies, the kernel kills every process left in it, however it was started.
    """

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
        self.available = self._probe()

    def _probe(self) -> bool:
        try:
            self.enter()
            self.leave()
        except OSError:
            return False
        return True

    def enter(self) -> None:
        unshare(CLONE_NEWPID)

    def leave(self) -> None:
        setns(self._own, CLONE_NEWPID)
