"""Hostile tools that reach for what the host shares with every process: UNIX sockets,
file metadata, SysV IPC, keyrings, user namespaces, the pool's own directory."""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from tools import tool

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
IPC_CREAT = 0o1000
IPC_RMID = 0
_KEY_SPEC_SESSION_KEYRING = -3
_SYS_KEYCTL, _SYS_ADD_KEY = 250, 248  # x86_64
_CLONE_NEWUSER = 0x10000000


def _try(fn: object) -> str:
    try:
        result = fn()  # type: ignore[operator]
    except OSError as exc:
        return f"denied: {type(exc).__name__}: {exc.strerror or exc}"
    return f"ALLOWED: {str(result)[:300]}"


def _checked(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


@tool
def attack_unix_connect(path: str) -> str:
    """Connect to a UNIX socket, send a line and read the answer.

    Args:
        path: The socket's path, or `@name` for an abstract socket.
    """

    def talk() -> bytes:
        address = "\0" + path[1:] if path.startswith("@") else path
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(address)
            sock.sendall(b"ping\n")
            return sock.recv(100)

    return _try(talk)


@tool
def attack_stat(path: str) -> str:
    """Read a file's size, owner and mtime.

    Args:
        path: Absolute path.
    """

    def look() -> str:
        info = os.stat(path)
        return f"size={info.st_size} uid={info.st_uid} mtime={info.st_mtime}"

    return _try(look)


@tool
def attack_inotify(path: str) -> str:
    """Watch a directory for files being created, changed and deleted.

    Args:
        path: Absolute path of the directory.
    """

    def watch() -> int:
        fd = _checked(_libc.inotify_init1(os.O_CLOEXEC), "inotify_init1")
        try:
            return _checked(_libc.inotify_add_watch(fd, path.encode(), 0xFFF), "add_watch")
        finally:
            os.close(fd)

    return _try(watch)


@tool
def attack_list_dir(path: str) -> str:
    """List a directory, relative to the working directory if not absolute.

    Args:
        path: The directory.
    """
    return _try(lambda: sorted(os.listdir(path)))


@tool
def attack_sysv_plant(key: int) -> str:
    """Leave a 64 MiB SysV shared memory segment and a queued message behind.

    Args:
        key: The IPC key to use.
    """

    def plant() -> str:
        shm = _checked(_libc.shmget(key, 64 << 20, IPC_CREAT | 0o666), "shmget")
        address = _libc.shmat(shm, None, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat")
        ctypes.memset(address, 1, 64 << 20)  # the pages are real, charged to nobody
        queue = _checked(_libc.msgget(key, IPC_CREAT | 0o666), "msgget")
        message = struct.pack("l", 1) + b"secret from an earlier run"
        _checked(_libc.msgsnd(queue, message, len(message) - 8, 0), "msgsnd")
        return f"shm {shm}, queue {queue}"

    return _try(plant)


@tool
def attack_sysv_read(key: int) -> str:
    """Read a message another process queued under a key.

    Args:
        key: The IPC key.
    """

    def read() -> bytes:
        queue = _checked(_libc.msgget(key, 0), "msgget")
        buffer = ctypes.create_string_buffer(8 + 200)
        size = _checked(_libc.msgrcv(queue, buffer, 200, 0, 0o4000), "msgrcv")  # IPC_NOWAIT
        return buffer.raw[8 : 8 + size]

    return _try(read)


@tool
def attack_keyring(description: str) -> str:
    """Find a key the orchestrator holds in its session keyring, then plant one there.

    Args:
        description: The key's description.
    """
    libc = _libc
    found = _try(
        lambda: _checked(
            libc.syscall(
                _SYS_KEYCTL, 10, _KEY_SPEC_SESSION_KEYRING, b"user", description.encode(), 0
            ),
            "keyctl(SEARCH)",
        )
    )
    planted = _try(
        lambda: _checked(
            libc.syscall(
                _SYS_ADD_KEY, b"user", b"planted", b"x", 1, ctypes.c_long(_KEY_SPEC_SESSION_KEYRING)
            ),
            "add_key",
        )
    )

    def keys() -> str:
        with open("/proc/keys") as f:
            return f.read().strip() or "(empty)"

    listed = _try(keys)
    return f"search {found} | plant {planted} | /proc/keys {listed}"


@tool
def attack_user_namespace() -> str:
    """Make a user namespace: a full capability set inside it."""

    def make() -> str:
        _checked(_libc.unshare(_CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        with open("/proc/self/status") as f:
            return next(line for line in f if line.startswith("CapEff")).strip()

    direct = _try(make)
    # The same through a program, as an exploit would start one.
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/usr/bin/unshare", ["unshare", "--user", "--map-root-user", "true"])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return f"{direct} | unshare(1) exit {os.waitstatus_to_exitcode(status)}"
