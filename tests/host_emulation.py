"""Hosts that forbid what the sandbox builds on, emulated for real, then a command.

    python tests/host_emulation.py KIND -- COMMAND [ARG]...

KIND is one of:
- `no-userns` (a normal user): as bubblewrap's --disable-userns does, a user namespace
  of our own (the user mapped to itself) in which user.max_user_namespaces is set to
  0; the command's execve then drops the capabilities that could raise it again, and
  no user namespace can be made below it: a host with the sysctl at 0.
- `docker-default` (root): Docker's defaults for a container: the capability bounding
  set cut to Docker's 14 (no CAP_SYS_ADMIN), and a seccomp filter that refuses what
  moby's default profile refuses a container without CAP_SYS_ADMIN among the calls
  namespaces need: unshare, setns, mount, umount2, pivot_root, clone with any
  CLONE_NEW* flag (EPERM), clone3 (ENOSYS, so that libc falls back to clone).
- `docker-flags` (root): the same container started with `--cap-add SYS_ADMIN
  --security-opt seccomp=unconfined`: Docker's 14 capabilities and CAP_SYS_ADMIN, no
  filter.
- `docker-seccomp-unconfined` (root): `--security-opt seccomp=unconfined` alone.

Not emulated: Docker's masked /proc paths and read-only /sys/fs/cgroup, and its
AppArmor profile (this kernel has no AppArmor).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
DOCKER_CAPABILITIES = (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31)
"""CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP (moby's defaults)."""
CAP_SYS_ADMIN = 21
CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
X86_64 = {
    "arch": 0xC000003E,
    "refused": (272, 308, 165, 166, 155),  # unshare, setns, mount, umount2, pivot_root
    "clone": 56,
    "clone3": 435,
}


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def keep_capabilities(kept: tuple[int, ...]) -> None:
    """Cut the bounding set to `kept`: root's execve then gets only those."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in kept:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")


def _statement(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def docker_filter() -> None:
    """The part of moby's default seccomp profile that namespaces meet."""
    if platform.machine() != "x86_64":
        raise OSError(
            f"the emulated Docker profile is written for x86_64, not {platform.machine()}"
        )
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog = [_statement(ld, 4), _statement(jeq, X86_64["arch"], 1, 0), _statement(ret, allow)]
    prog.append(_statement(ld, 0))
    for number in X86_64["refused"]:
        prog += [_statement(jeq, number, 0, 1), _statement(ret, eperm)]
    prog += [_statement(jeq, X86_64["clone3"], 0, 1), _statement(ret, enosys)]
    prog += [_statement(jeq, X86_64["clone"], 0, 3), _statement(ld, 16)]
    prog += [_statement(jset, CLONE_NAMESPACES, 0, 1), _statement(ret, eperm)]
    prog.append(_statement(ret, allow))
    code = b"".join(prog)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buffer))
    holder = ctypes.create_string_buffer(fprog)
    address = ctypes.c_ulong(ctypes.addressof(holder))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, address, 0, 0), "seccomp")


def forbid_user_namespaces() -> None:
    """A user namespace of our own (the user mapped to itself), its limit set to 0."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from sandbox import _linux, _userns

    uid, gid = os.geteuid(), os.getegid()
    _linux.unshare(_linux.CLONE_NEWUSER)
    _userns.write_maps(uid, gid)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def main(argv: list[str]) -> None:
    kind, cut = argv[0], argv.index("--")
    command = argv[cut + 1 :]
    if kind == "no-userns":
        forbid_user_namespaces()
    elif kind == "docker-default":
        keep_capabilities(DOCKER_CAPABILITIES)
        docker_filter()  # still holding CAP_SYS_ADMIN: no no_new_privs needed
    elif kind == "docker-flags":
        keep_capabilities((*DOCKER_CAPABILITIES, CAP_SYS_ADMIN))
    elif kind == "docker-seccomp-unconfined":
        keep_capabilities(DOCKER_CAPABILITIES)
    else:
        raise SystemExit(f"unknown host kind {kind!r}")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
