"""A seccomp filter: the system calls a tool never needs, refused in the kernel.

For every tool:
- no `open_by_handle_at` (it opens a file by inode rather than by path: the classic
  container escape), no io_uring (it can open a socket or a file without the matching
  system call), and no system call made through a foreign ABI (x32, 32-bit compat),
  whose numbers this filter does not check;
- no new user namespace (`unshare` or `clone` with CLONE_NEWUSER; `clone3`, whose
  flags sit behind a pointer the filter cannot read, answers ENOSYS, so that libc falls
  back to `clone`): inside one, a tool holds every capability, the usual way into the
  kernel's less-trodden code;
- no keyring calls (`add_key`, `keyctl`, `request_key`): keyrings are not namespaced,
  so they would reach the orchestrator's secrets (moby's default profile refuses them
  for the same reason);
- no `userfaultfd`, `bpf` or `perf_event_open`: kernel attack surface no tool uses;
- without a PID namespace, no `kill(-1)` (every process the uid may signal): a tool
  still signals its own children and process groups, and any pid it names, so this is
  no wall around signals, only the blanket kill taken away; and no `clone` with
  CLONE_PARENT (`clone3` answers ENOSYS then too), whose child would be the zygote's,
  outside the worker's tree: a warm worker's clean-up would leave it running.

`socket()` is allowed for AF_NETLINK with NETLINK_ROUTE alone (addresses and routes,
for getaddrinfo; changing anything through it takes capabilities the worker no longer
has) and, for a tool whose policy gives it the network, AF_INET and AF_INET6. A tool
with a network allowlist gets AF_INET TCP sockets alone (SOCK_STREAM, protocol 0 or
IPPROTO_TCP): enough to reach the proxy's listener on its own namespace's loopback,
and no UDP, no raw or ICMP socket, no IPv6. Every other family fails with EACCES:
packet, vsock, bluetooth, ... and AF_UNIX, so that no tool can reach a host
service's socket (a database, D-Bus, an ssh-agent, docker.sock) whatever the file
layers let it see. `socketpair()` works for stream and seqpacket
pairs, whose two connected ends reach nobody else; not for datagram ones, whose ends
could `sendto` any socket path.

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
from typing import NamedTuple

from . import _linux

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_AND_K = 0x54
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_X32_SYSCALL_BIT = 0x40000000
_CLONE_NEWUSER = 0x10000000
_CLONE_PARENT = 0x00008000
_AF_NETLINK = 16
_NETLINK_ROUTE = 0
_SOCK_TYPE_MASK = 0xF  # the rest of the type argument is SOCK_NONBLOCK, SOCK_CLOEXEC
_IPPROTO_TCP = 6
_CONNECTED_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)

# offsets in struct seccomp_data
_NR, _ARCH = 0, 4
_ARG0, _ARG1, _ARG2 = 16, 24, 32  # the low 32 bits of args[0..2] (little-endian)


class _Arch(NamedTuple):
    audit: int
    has_x32: bool
    numbers: dict[str, int]


# Numbers from the kernel's syscall tables (arch/x86/entry/syscalls/syscall_64.tbl,
# include/uapi/asm-generic/unistd.h for aarch64).
_ARCHES = {
    "x86_64": _Arch(
        0xC000003E,
        True,
        {
            "socket": 41,
            "socketpair": 53,
            "kill": 62,
            "clone": 56,
            "unshare": 272,
            "open_by_handle_at": 304,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "perf_event_open": 298,
            "bpf": 321,
            "userfaultfd": 323,
            "io_uring_setup": 425,
            "clone3": 435,
        },
    ),
    "aarch64": _Arch(
        0xC00000B7,
        False,
        {
            "socket": 198,
            "socketpair": 199,
            "kill": 129,
            "clone": 220,
            "unshare": 97,
            "open_by_handle_at": 265,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "perf_event_open": 241,
            "bpf": 280,
            "userfaultfd": 282,
            "io_uring_setup": 425,
            "clone3": 435,
        },
    ),
}

ALWAYS_REFUSED = ("open_by_handle_at", "io_uring_setup", "perf_event_open", "bpf", "userfaultfd")
KEYRING_CALLS = ("add_key", "request_key", "keyctl")

_libc = ctypes.CDLL(None, use_errno=True)


class Rules(NamedTuple):
    """What one worker's filter refuses beyond `ALWAYS_REFUSED`."""

    network: bool
    """True: any socket family (the tool's policy gives it the network)."""
    loopback_tcp: bool = False
    """AF_INET TCP sockets only (a network allowlist: the proxy is on loopback)."""
    keyring: bool = True
    """Refuse the keyring calls."""
    user_namespaces: bool = True
    """Refuse new user namespaces."""
    kill_all: bool = True
    """Allow kill(-1): as pid 1 of its own PID namespace a worker cleans up with it;
    without one it would signal every process the uid may (`sandbox.layers`)."""


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


Insn = tuple[int, int, int, int]


def _load(offset: int) -> Insn:
    return (_BPF_LD_W_ABS, 0, 0, offset)


def _ret(value: int) -> Insn:
    return (_BPF_RET_K, 0, 0, value)


def _refuse(err: int) -> Insn:
    return _ret(_RET_ERRNO | err)


def _when(number: int, then: list[Insn]) -> list[Insn]:
    """`then` runs for system call `number` (the accumulator holds the number), which
    must end in a return; other calls skip past it."""
    return [(_BPF_JEQ_K, 0, len(then), number), *then]


def _program(rules: Rules) -> list[Insn]:
    arch = _ARCHES[platform.machine()]
    nr = arch.numbers
    program: list[Insn] = [_load(_ARCH), (_BPF_JEQ_K, 1, 0, arch.audit), _refuse(errno.EACCES)]
    program.append(_load(_NR))
    if arch.has_x32:
        program += [(_BPF_JGE_K, 0, 1, _X32_SYSCALL_BIT), _refuse(errno.EACCES)]
    refused = list(ALWAYS_REFUSED) + (list(KEYRING_CALLS) if rules.keyring else [])
    for name in refused:
        err = errno.EPERM if name in KEYRING_CALLS else errno.EACCES
        program += _when(nr[name], [_refuse(err)])
    # Without a PID namespace, clone(CLONE_PARENT) makes a child of the worker's
    # parent: neither the worker's clean-up (its children) nor a tree kill finds it.
    clone_refused = (_CLONE_NEWUSER if rules.user_namespaces else 0) | (
        _CLONE_PARENT if not rules.kill_all else 0
    )
    if clone_refused:
        program += _when(nr["clone3"], [_refuse(errno.ENOSYS)])
    flags = [("unshare", _CLONE_NEWUSER if rules.user_namespaces else 0)]
    for name, refused_flags in [*flags, ("clone", clone_refused)]:
        if refused_flags:  # both take the flags in args[0]
            program += _when(
                nr[name],
                [
                    _load(_ARG0),
                    (_BPF_JSET_K, 0, 1, refused_flags),
                    _refuse(errno.EPERM),
                    _ret(_RET_ALLOW),
                ],
            )
    if not rules.kill_all:  # pid_t -1, whatever the upper half of the register holds
        program += _when(
            nr["kill"],
            [_load(_ARG0), (_BPF_JEQ_K, 0, 1, 0xFFFFFFFF), _refuse(errno.EPERM), _ret(_RET_ALLOW)],
        )
    check: list[Insn] = [_load(_ARG0)]
    for family in (socket.AF_INET, socket.AF_INET6) if rules.network else ():
        check += [(_BPF_JEQ_K, 0, 1, family), _ret(_RET_ALLOW)]
    if rules.loopback_tcp and not rules.network:
        # AF_INET, SOCK_STREAM (whatever flags), protocol 0 or TCP; else on to the
        # netlink check, which reloads args[0] and refuses what it is not.
        check += [
            (_BPF_JEQ_K, 0, 8, socket.AF_INET),
            _load(_ARG1),
            (_BPF_AND_K, 0, 0, _SOCK_TYPE_MASK),
            (_BPF_JEQ_K, 0, 4, socket.SOCK_STREAM),
            _load(_ARG2),
            (_BPF_JEQ_K, 1, 0, 0),
            (_BPF_JEQ_K, 0, 1, _IPPROTO_TCP),
            _ret(_RET_ALLOW),
            _load(_ARG0),
        ]
    # Netlink for routes and addresses alone (getaddrinfo, if_nameindex): not
    # NETLINK_SOCK_DIAG, which would list the host's sockets to a tool with the network.
    check += [
        (_BPF_JEQ_K, 0, 3, _AF_NETLINK),
        _load(_ARG2),
        (_BPF_JEQ_K, 0, 1, _NETLINK_ROUTE),
        _ret(_RET_ALLOW),
    ]
    program += _when(nr["socket"], [*check, _refuse(errno.EACCES)])
    # A connected pair reaches nobody else; a datagram end could `sendto` any path.
    pair: list[Insn] = [_load(_ARG1), (_BPF_AND_K, 0, 0, _SOCK_TYPE_MASK)]
    for kind in _CONNECTED_TYPES:
        pair += [(_BPF_JEQ_K, 0, 1, kind), _ret(_RET_ALLOW)]
    program += _when(nr["socketpair"], [*pair, _refuse(errno.EACCES)])
    return [*program, _ret(_RET_ALLOW)]


@functools.cache
def compiled(rules: Rules) -> tuple[_Program, ctypes.Array[_Filter]]:
    """The filter as the kernel takes it (and the array it points into, kept alive).
    The zygote builds each before it forks: it took a third of a millisecond of each
    fresh worker's first call."""
    program = _program(rules)
    filters = (_Filter * len(program))(*[_Filter(*insn) for insn in program])
    return _Program(len(program), filters), filters


def install(rules: Rules) -> None:
    """Install the filter on this thread, for good; sets no_new_privs first."""
    reason = supported()
    if reason:
        raise OSError(errno.ENOSYS, reason)
    prog, _ = compiled(rules)
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    result = _libc.prctl(
        _PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog), 0, 0
    )
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {errno.errorcode.get(err, err)}")
