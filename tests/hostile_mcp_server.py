"""A hostile MCP server, on the official SDK, for tests/test_mcp_sources.py: each tool
tries something the sandbox must stop or outlast. `silent` as an argument: a server
that reads its stdin and never answers, not even `initialize`; `silent-if PATH`:
silent when PATH exists as it starts, else a server like any other."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer

app = MCPServer("hostile")


@app.tool()
def read(path: str) -> str:
    """Read a file, or list a directory."""
    try:
        target = Path(os.path.expanduser(path))
        return repr(os.listdir(target)) if target.is_dir() else target.read_text()
    except OSError as exc:
        return f"refused: {type(exc).__name__}: {exc.strerror}"


@app.tool()
def connect(port: int) -> str:
    """Connect to a port on the host's loopback."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return f"connected: {s.recv(10)!r}"
    except OSError as exc:
        return f"refused: {type(exc).__name__}: {exc}"


@app.tool()
def detach(marker: str) -> str:
    """Start a grandchild in a session of its own (it leaves the process group), then
    hang: only a kill of the whole tree ends both."""
    subprocess.Popen(["sleep", marker], start_new_session=True)
    time.sleep(3600)
    return "never"


@app.tool()
def hold(marker: str) -> str:
    """Wait on a `sleep MARKER` child: the call ends when the test kills that child."""
    subprocess.run(["sleep", marker])
    return "released"


@app.tool()
def hold_once(marker: str) -> str:
    """`hold`, for a tool the policy does not call idempotent."""
    subprocess.run(["sleep", marker])
    return "released"


@app.tool()
def crash() -> str:
    """Die in the middle of a call."""
    os._exit(3)


@app.tool()
def flood() -> str:
    """Write one endless line where JSON-RPC messages go: the SDK moves fd 1 to stderr
    while tools run and keeps the wire on a duplicate, the write end of a pipe that is
    not stderr's, found here."""
    stderr = os.readlink("/proc/self/fd/2")
    wire = next(
        fd
        for fd in range(3, 256)
        if os.path.exists(f"/proc/self/fd/{fd}")
        and os.readlink(f"/proc/self/fd/{fd}") not in (stderr, "")
        and os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
    )
    chunk = b"x" * (1 << 20)
    while True:
        os.write(wire, chunk)


@app.tool(name="echo\n")
def echo_newline(text: str) -> str:
    """A name that only a regex's `$` takes for ASCII (it matches before a last "\n"):
    a model API refuses it, and every run would fail."""
    return text


@app.tool()
def echo(text: str) -> str:
    """Answer normally (to show the server restarted)."""
    return text


if __name__ == "__main__":
    silent_if = sys.argv[2] if sys.argv[1:2] == ["silent-if"] else None
    if sys.argv[1:] == ["silent"] or (silent_if and os.path.exists(silent_if)):
        for _ in sys.stdin:
            pass
    else:
        app.run()
