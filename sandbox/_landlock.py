"""Landlock: an unprivileged process restricts its own file access, for good.

After `restrict(read=[...], write=[...])` the process (and everything it starts) can
read and execute only beneath the `read` paths and write only beneath the `write`
paths, whatever its uid; already-open descriptors keep working. Where the kernel has
ABI 6, it may also no longer signal processes outside its domain or reach abstract
UNIX sockets outside it.

The kernel interface is three system calls; see Documentation/userspace-api/landlock.rst.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct

from . import _linux

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    result = _libc.syscall(
        _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return int(result) if result > 0 else 0


def _handled(abi: int) -> int:
    access = (1 << 13) - 1
    if abi >= 2:
        access |= REFER
    if abi >= 3:
        access |= TRUNCATE
    if abi >= 5:
        access |= IOCTL_DEV
    return access


READ = EXECUTE | READ_FILE | READ_DIR


class LandlockError(OSError):
    pass


class Ruleset:
    """Rules built ahead of time (opening paths is the slow part), enforced later.

    rules = Ruleset(read=[...], write=[workdir])   # in a spare worker
    rules.allow_read(tool_root)                     # at the call
    rules.enforce()                                 # from here on, for good
    """

    def __init__(self, read: list[str] | OpenPaths, write: list[str]) -> None:
        self.abi = abi_version()
        if self.abi < 1:
            raise LandlockError("Landlock is not available in this kernel")
        self.handled = _handled(self.abi)
        scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if self.abi >= 6 else 0
        if self.abi >= 6:
            attr = struct.pack("=QQQ", self.handled, 0, scoped)
        else:
            attr = struct.pack("=Q", self.handled)
        buf = ctypes.create_string_buffer(attr, len(attr))
        fd = _libc.syscall(_SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
        if fd < 0:
            err = ctypes.get_errno()
            raise LandlockError(err, f"landlock_create_ruleset: {os.strerror(err)}")
        self.fd = int(fd)
        if isinstance(read, OpenPaths):
            read.add_to(self.fd, READ & self.handled)
        else:
            for path in read:
                self.allow_read(path)
        for path in write:
            _allow(self.fd, path, self.handled & ~REFER)

    def allow_read(self, path: str) -> None:
        _allow(self.fd, path, READ & self.handled)

    def allow_write(self, path: str) -> None:
        _allow(self.fd, path, self.handled & ~REFER)

    def allow_open_dir(self, fd: int, write: bool) -> None:
        """Allow the directory open as `fd` (reached without links, see `_nofollow`)."""
        _add_rule(self.fd, fd, self.handled & ~REFER if write else READ & self.handled, "")

    def enforce(self) -> None:
        try:
            _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
            if _libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(self.fd), ctypes.c_uint32(0)) != 0:
                err = ctypes.get_errno()
                raise LandlockError(err, f"landlock_restrict_self: {os.strerror(err)}")
        finally:
            os.close(self.fd)


class OpenPaths:
    """Read paths opened once (O_PATH, in the zygote), for many rulesets: a worker
    forked after inherits the descriptors and adds one rule for each, instead of
    opening every path again (a third of its Landlock set-up). Each path is still
    looked up, once (a `stat`): where it names another file than the one held (a
    `docs` moved away and made anew, a file replaced by a rename), the rule is for what
    it names now, as a rule made by path would be; the one held would grant the old
    directory at its new name, and what is put there since, for the zygote's life.
    Paths beneath `per_worker` are opened by each worker itself: there the worker
    mounts its own file system (/proc)."""

    def __init__(self, paths: list[str], per_worker: tuple[str, ...] = ("/proc",)) -> None:
        self.opened: list[tuple[int, bool, str, tuple[int, int]]] = []
        """(descriptor, is a directory, path, (device, inode)) of each path that exists."""
        self.later = [p for p in paths if _beneath(p, per_worker)]
        """Opened at each use (by `Ruleset`), not here."""
        for path in paths:
            if path in self.later:
                continue
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path that does not exist grants nothing
            info = os.fstat(fd)
            self.opened.append((fd, stat.S_ISDIR(info.st_mode), path, (info.st_dev, info.st_ino)))

    def add_to(self, ruleset_fd: int, access: int) -> None:
        for fd, is_dir, path, held in self.opened:
            try:
                now = os.stat(path)
            except OSError:
                continue  # gone: grants nothing
            if (now.st_dev, now.st_ino) != held:
                _allow(ruleset_fd, path, access)  # replaced since the zygote opened it
                continue
            _add_rule(ruleset_fd, fd, access if is_dir else access & _FILE_ONLY, path)
        for path in self.later:
            _allow(ruleset_fd, path, access)


def _beneath(path: str, parents: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in parents)


def outermost(paths: list[str]) -> list[str]:
    """`paths` as one rule each needs them: their real paths, without any that lies
    inside another (whose rule covers it). The tools' read set has one path per
    imported module, mostly inside the interpreter's prefixes: 170 rules became 28
    here, and each cost a path walk and a system call in every spare."""
    kept: list[str] = []
    for real in sorted({os.path.realpath(p) for p in paths}, key=len):
        if not any(real == k or real.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(real)
    return kept


def restrict(read: list[str], write: list[str]) -> int:
    """Apply the rules to this process now; return the ABI used."""
    rules = Ruleset(read, write)
    rules.enforce()
    return rules.abi


def _allow(ruleset_fd: int, path: str, access: int) -> None:
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that does not exist grants nothing
    try:
        # The descriptor's own type, not the path's looked up again: one walk fewer,
        # and no other file can be there by the time of the second look.
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            access &= _FILE_ONLY
        _add_rule(ruleset_fd, target, access, path)
    finally:
        os.close(target)


class _PathBeneath(ctypes.Structure):
    """struct landlock_path_beneath_attr (packed)."""

    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


# One prebuilt attribute and a typed entry point: a worker adds a rule for each of
# ~160 read paths while it waits as a spare, and packing a buffer for each cost more
# than the system call.
_add_rule_syscall = ctypes.CDLL(None, use_errno=True).syscall
_add_rule_syscall.restype = ctypes.c_long
_add_rule_syscall.argtypes = (
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint32,
)
_attr = _PathBeneath()
_attr_address = ctypes.addressof(_attr)


def _add_rule(ruleset_fd: int, target: int, access: int, path: str) -> None:
    _attr.allowed_access = access
    _attr.parent_fd = target
    result = _add_rule_syscall(_SYS_ADD_RULE, ruleset_fd, _RULE_PATH_BENEATH, _attr_address, 0)
    if result != 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"landlock_add_rule({path or target}): {os.strerror(err)}")
