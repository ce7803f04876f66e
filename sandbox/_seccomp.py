"""A seccomp filter: no network socket for a tool without the network, and for every
tool no `open_by_handle_at`, no io_uring, no foreign system call ABI.

Without the network it allows `socket()` only for AF_UNIX (local, guarded by the file
rules) and AF_NETLINK (the kernel's own; changing anything through it takes
capabilities the worker no longer has); every other family (internet, packet, vsock, bluetooth, ...)
fails with EACCES. `io_uring_setup` is refused, since an io_uring can open a socket
or a file without the matching system call; `open_by_handle_at`, since it opens a file
by inode rather than by path (the classic container escape when a read capability is
kept); and every system call made through a foreign ABI (x32, 32-bit compat), whose
numbers this filter does not check.

A network namespace already leaves a worker without interfaces; this filter is the
layer below it, and the one that holds where no namespace can be made. It is also what
stops AF_VSOCK, which network namespaces do not isolate.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import platform
import socket

from . import _linux

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_X32_SYSCALL_BIT = 0x40000000
_IO_URING_SETUP = 425

# audit arch, system call numbers, whether the x32 ABI shares the arch value
_ARCHES = {
    "x86_64": (0xC000003E, {"socket": 41, "open_by_handle_at": 304}, True),
    "aarch64": (0xC00000B7, {"socket": 198, "open_by_handle_at": 265}, False),
}

ALLOWED_FAMILIES = (socket.AF_UNIX, 16)  # 16: AF_NETLINK

_libc = ctypes.CDLL(None, use_errno=True)


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def supported() -> str | None:
    """None when this machine's architecture is covered; else why not."""
    machine = platform.machine()
    if machine not in _ARCHES:
        return f"no filter for the {machine} architecture"
    return None


def _load(offset: int) -> tuple[int, int, int, int]:
    return (_BPF_LD_W_ABS, 0, 0, offset)


def _ret(value: int) -> tuple[int, int, int, int]:
    return (_BPF_RET_K, 0, 0, value)


def _if_not(op: int, k: int) -> tuple[int, int, int, int]:
    """Run the next instruction only when the test holds (jumps are relative)."""
    return (op, 0, 1, k)


def _program(network: bool) -> list[tuple[int, int, int, int]]:
    arch, numbers, has_x32 = _ARCHES[platform.machine()]
    allow, deny = _ret(_RET_ALLOW), _ret(_RET_ERRNO | errno.EACCES)
    program = [_load(4), (_BPF_JEQ_K, 1, 0, arch), deny, _load(0)]  # arch, then nr
    if has_x32:
        program += [_if_not(_BPF_JGE_K, _X32_SYSCALL_BIT), deny]
    for number in (_IO_URING_SETUP, numbers["open_by_handle_at"]):
        program += [_if_not(_BPF_JEQ_K, number), deny]
    if network:
        return [*program, allow]
    program += [(_BPF_JEQ_K, 1, 0, numbers["socket"]), allow, _load(16)]  # args[0]: family
    for family in ALLOWED_FAMILIES:
        program += [_if_not(_BPF_JEQ_K, family), allow]
    return [*program, deny]


@functools.cache
def compiled(network: bool) -> tuple[_Program, ctypes.Array[_Filter]]:
    """The filter as the kernel takes it (and the array it points into, kept alive).
    The zygote builds both before it forks: it took a third of a millisecond of each
    fresh worker's first call."""
    program = _program(network)
    filters = (_Filter * len(program))(*[_Filter(*insn) for insn in program])
    return _Program(len(program), filters), filters


def install(network: bool) -> None:
    """Install the filter on this thread, for good; sets no_new_privs first."""
    reason = supported()
    if reason:
        raise OSError(errno.ENOSYS, reason)
    prog, _ = compiled(network)
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    result = _libc.prctl(
        _PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog), 0, 0
    )
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {errno.errorcode.get(err, err)}")
