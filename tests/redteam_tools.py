"""Hostile tools of the red-team round that tests/test_attacks_redteam.py uses (the
round's other reproducers live beside the tests that took them up)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from tools import tool
from tools.context import current


def _address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path


@tool
def rt_dgram_send(path: str) -> str:
    """Send one datagram to a host UNIX socket through a socketpair end.

    Args:
        path: The socket's path, or `@name` for an abstract socket.
    """
    ours, _theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        ours.sendto(b"from the tool", _address(path))
    except OSError as exc:
        return f"denied: {exc}"
    return "SENT"


@tool
def rt_root_on_host(path: str) -> str:
    """Read a root-owned 0600 file outside the policy, append to it, and open the
    kernel's core_pattern for writing (opened and closed, nothing written).

    Args:
        path: The root-owned file.
    """
    found = []
    try:
        with open(path) as f:
            found.append(f"READ {f.read().strip()!r}")
        with open(path, "a") as f:
            f.write("written by the tool\n")
        found.append("APPENDED")
    except OSError as exc:
        found.append(f"file denied: {exc}")
    try:
        os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))
        found.append("CORE_PATTERN WRITABLE")
    except OSError as exc:
        found.append(f"core_pattern denied: {exc}")
    return "; ".join(found)


@tool
def rt_kill(pids: list[int]) -> str:
    """SIGKILL each process, as a tool that wants its neighbours gone would (the
    orchestrator, sshd, another call): which it reached.

    Args:
        pids: Host pids outside the call.
    """
    killed = []
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError as exc:
            killed.append(f"{pid} denied: {exc.strerror}")
        else:
            killed.append(f"{pid} KILLED")
    return "; ".join(killed)


@tool
def rt_kill_everyone_then_own_children(marker: str) -> str:
    """kill(-1) with signal 0 (a permission check that harms no one: the probe of a
    tool about to send SIGKILL), then what tools do to their own children: a
    `subprocess` timeout, and a SIGKILL to a process group of its own.

    Args:
        marker: What the children sleep, for the test to find any left.
    """
    try:
        os.kill(-1, 0)
        everyone = "REACHED"
    except OSError as exc:
        everyone = f"denied: {exc.strerror}"
    try:
        subprocess.run(["sleep", marker], timeout=0.2)
        timeout = "no timeout"
    except subprocess.TimeoutExpired:
        timeout = "killed at the timeout"
    group = subprocess.Popen(["sleep", marker], start_new_session=True)
    os.killpg(group.pid, 9)
    return json.dumps({"everyone": everyone, "timeout": timeout, "group": group.wait()})


@tool
def rt_overwrite(path: str) -> str:
    """Append to a file the policy lets the tool read, as uid 0 would (root may write
    root's own files without any capability).

    Args:
        path: A file under the tool's root.
    """
    try:
        with open(path, "a") as f:
            f.write("OWNED\n")
    except OSError as exc:
        return f"denied: {exc.strerror}"
    return "WRITTEN"


_CLONE, _CLONE_PARENT, _SIGCHLD = 56, 0x00008000, 17  # x86_64


@tool
def rt_clone_parent(marker: str) -> str:
    """clone(CLONE_PARENT): a child of the worker's parent (the zygote), not of the
    worker, so neither a subreaper's clean-up nor a tree kill finds it; it calls setsid,
    leaving the worker's process group too, and sleeps `marker` seconds.

    Args:
        marker: What the escaped child sleeps, for the test to find it.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.syscall(_CLONE, _CLONE_PARENT | _SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os.setsid()
        os.execv("/bin/sleep", ["sleep", marker])
    if pid < 0:
        return f"refused: {os.strerror(ctypes.get_errno())}"
    return f"ESCAPED as {pid}"


_KEYCTL, _ADD_KEY = 250, 248  # x86_64
_KEY_SPEC_USER_KEYRING = -4
_KEYCTL_SEARCH, _KEYCTL_READ = 10, 11


@tool
def rt_key_plant(description: str, secret: str) -> str:
    """Add a key to the worker uid's user keyring (not the fresh session keyring).

    Args:
        description: The key's name.
        secret: Its payload.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    data = secret.encode()
    key = libc.syscall(
        _ADD_KEY, b"user", description.encode(), data, len(data), _KEY_SPEC_USER_KEYRING
    )
    return f"key {key} errno {ctypes.get_errno()}"


@tool
def rt_key_find(description: str) -> str:
    """Look for a key in the worker uid's user keyring and read it.

    Args:
        description: The key's name.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    key = libc.syscall(
        _KEYCTL, _KEYCTL_SEARCH, _KEY_SPEC_USER_KEYRING, b"user", description.encode(), 0
    )
    if key <= 0:
        return "not found"
    buf = ctypes.create_string_buffer(200)
    n = libc.syscall(_KEYCTL, _KEYCTL_READ, key, buf, 200)
    libc.syscall(_KEYCTL, 7, _KEY_SPEC_USER_KEYRING)  # KEYCTL_CLEAR: leave nothing behind
    return f"FOUND {buf.raw[: max(n, 0)].decode(errors='replace')}"


@tool
def rt_hold_processes(count: int) -> str:
    """Start `count` sleeping children, say so in data_dir, and wait for `release`
    to appear there (30 s at most).

    Args:
        count: How many.
    """
    data = current().data_dir or ""
    started = 0
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        started += 1
    with open(os.path.join(data, "ready"), "w") as f:
        f.write(str(started))
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(data, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"held {started}"


@tool
def rt_fork_some(count: int) -> str:
    """Fork `count` children that exit at once; report how many forks succeeded.

    Args:
        count: How many.
    """
    done = 0
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        done += 1
    return str(done)
