"""A tool that reports what a worker can do, for `sandboxed-agent doctor` to verify
each layer from inside a real worker rather than trusting the set-up code."""

from __future__ import annotations

import os
import socket

from tools import tool


def _status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return "?"


def _attempt(action: str, fn: object) -> str:
    try:
        fn()  # type: ignore[operator]
    except OSError as exc:
        return f"denied ({exc.strerror or exc})"
    return "ALLOWED"


@tool(name="sandbox_probe")
def probe() -> dict[str, str]:
    """Report the worker's own isolation, from the inside."""

    def connect() -> None:
        with socket.create_connection(("1.1.1.1", 53), timeout=1):
            pass

    def write_outside() -> None:
        path = f"/tmp/sandboxed-agent-probe-{os.getpid()}"
        with open(path, "x"):
            pass
        os.unlink(path)

    def read_shadow() -> None:
        with open("/etc/shadow", "rb") as f:
            f.read(1)

    def list_root() -> str:
        return ", ".join(sorted(os.listdir("/")))

    def unix_socket() -> None:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()

    def user_namespace() -> None:
        from ._linux import CLONE_NEWUSER, unshare

        unshare(CLONE_NEWUSER)

    def keyring() -> None:
        from ._linux import KEY_SPEC_SESSION_KEYRING, keyctl_get_keyring_id

        keyctl_get_keyring_id(KEY_SPEC_SESSION_KEYRING)

    def stat_shadow() -> None:
        os.stat("/etc/shadow")

    try:
        root = list_root()
    except OSError as exc:
        root = f"denied ({exc.strerror or exc})"
    interfaces = ", ".join(name for _, name in socket.if_nameindex())
    return {
        "pid": str(os.getpid()),
        "uid/gid": f"{os.getuid()}/{os.getgid()}",
        "capabilities": _status_field("CapEff"),
        "capability bounding set": _status_field("CapBnd"),
        "no_new_privs": _status_field("NoNewPrivs"),
        "network interfaces": interfaces or "none",
        "connect to 1.1.1.1:53": _attempt("connect", connect),
        "write /tmp": _attempt("write", write_outside),
        "read /etc/shadow": _attempt("read", read_shadow),
        "stat /etc/shadow": _attempt("stat", stat_shadow),
        "make a UNIX socket": _attempt("socket", unix_socket),
        "make a user namespace": _attempt("unshare", user_namespace),
        "use the keyring": _attempt("keyctl", keyring),
        "SysV IPC objects seen": str(_sysv_objects()),
        "list /": root,
    }


def _sysv_objects() -> int:
    """Shared memory segments, queues and semaphores this worker can see."""
    count = 0
    for name in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{name}") as f:
                count += sum(1 for line in f) - 1
        except OSError:
            pass
    return count


EGRESS_PROBE_LIST = ("doctor.invalid:9",)
"""The allowlist `doctor` gives `sandbox_egress_probe`: a name that never resolves."""


@tool(name="sandbox_egress_probe")
def egress_probe() -> dict[str, str]:
    """Report, from inside a worker with a network allowlist, what it can reach."""
    proxy = os.environ.get("HTTPS_PROXY", "")

    def connect() -> None:
        with socket.create_connection(("1.1.1.1", 53), timeout=1):
            pass

    def udp() -> None:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()

    def ipv6() -> None:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()

    def through_proxy() -> str:
        host, _, port = proxy.removeprefix("http://").rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"CONNECT 1.1.1.1:53 HTTP/1.1\r\n\r\n")
            line = s.recv(300).split(b"\r\n", 1)[0].decode("ascii", "replace")
        status = line.split(" ", 2)
        if len(status) > 1 and status[1] == "200":
            return "ALLOWED"
        return f"refused ({line})" if line else "closed"

    try:
        proxied = through_proxy() if proxy else "no proxy set"
    except OSError as exc:
        proxied = f"failed ({exc.strerror or exc})"
    return {
        "network interfaces": ", ".join(name for _, name in socket.if_nameindex()) or "none",
        "proxy": proxy or "none",
        "connect to 1.1.1.1:53": _attempt("connect", connect),
        "make a UDP socket": _attempt("socket", udp),
        "make an IPv6 socket": _attempt("socket", ipv6),
        "CONNECT 1.1.1.1:53 via the proxy": proxied,
    }
