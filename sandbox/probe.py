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
        "list /": root,
    }
