"""How `mcp serve` meets its clients: stdio or Streamable HTTP, until told to stop.

Stdio: the wire is a private copy of fds 0 and 1, taken before any worker exists, and
fds 0 and 1 themselves then point at /dev/null and stderr, so nothing the zygote, a
worker or a library prints can corrupt the protocol. The wire is read without a thread
(a thread blocked in `read` could not be stopped on a signal), so EOF, SIGINT and SIGTERM
all end the server at once.

HTTP: uvicorn on a socket bound before it starts (port 0 asks the OS for one; the line
on stderr says which), behind a bearer-token check when a token is set. The caller
decides whether a token is required (any address but loopback).
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import ipaddress
import os
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HTTP_PATH = "/mcp"
GRACE_S = 2.0
"""How long open HTTP streams may take to close once the server is told to stop."""


@dataclass
class StdioWire:
    """The protocol's own copies of stdin and stdout, and what fds 0 and 1 were."""

    read_fd: int
    write_fd: int
    stdout: Any


def claim_stdio() -> StdioWire:
    """Take fds 0 and 1 for the protocol alone: call before any tool module is imported
    (its top-level code may print) and before any process is started."""
    read_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    write_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    wire = StdioWire(read_fd, write_fd, sys.stdout)
    sys.stdout = sys.stderr  # a stray print goes to the log, never the wire
    return wire


def release_stdio(wire: StdioWire) -> None:
    """Fds 0 and 1 as they were (a usage error after the claim prints as usual)."""
    sys.stdout = wire.stdout
    for fd, own in ((0, wire.read_fd), (1, wire.write_fd)):
        os.set_blocking(own, True)
        os.dup2(own, fd)
        os.close(own)


class _Lines:
    """Lines of text from a descriptor, read as the event loop finds them ready."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False
        # A regular file never blocks, and the event loop cannot poll one.
        self.pollable = not stat.S_ISREG(os.fstat(fd).st_mode)
        if self.pollable:
            os.set_blocking(fd, False)

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while b"\n" not in self.buffer and not self.eof:
            if self.pollable:
                await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            self.eof = not chunk
            self.buffer += chunk
        if not self.buffer:
            raise StopAsyncIteration
        line, newline, self.buffer = self.buffer.partition(b"\n")
        return (line + newline).decode("utf-8", errors="replace")


class _Writer:
    """Text to a descriptor, waiting (without a thread) while the pipe is full."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.gone = False
        os.set_blocking(fd, False)

    async def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data and not self.gone:
            try:
                data = data[os.write(self.fd, data) :]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
            except BrokenPipeError:
                # The client is gone: nobody reads the answers, and its end of stdin
                # closes with it, so EOF stops the server (no traceback on the way).
                self.gone = True

    async def flush(self) -> None:
        return None


async def serve_stdio(server: Server[Any], wire: StdioWire) -> str:
    """Serve one client on the wire; returns why it stopped: `eof`, `SIGINT`, `SIGTERM`."""
    async with until_signal() as stopped:
        reader, writer = _Lines(wire.read_fd), _Writer(wire.write_fd)
        async with stdio_server(stdin=reader, stdout=writer) as (read, write):  # type: ignore[arg-type]
            await server.run(read, write, server.create_initialization_options())
        stopped.reason = stopped.reason or "eof"
    return stopped.reason


@dataclass
class _Stop:
    reason: str = ""


@contextlib.asynccontextmanager
async def until_signal(on_signal: Callable[[], None] | None = None) -> AsyncIterator[_Stop]:
    """Run the body until SIGINT or SIGTERM: then `on_signal()` if given (a graceful
    stop), else the body is cancelled."""
    stop = _Stop()
    async with anyio.create_task_group() as tasks:

        async def watch() -> None:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async for signum in signals:
                    stop.reason = signal.Signals(signum).name
                    if on_signal is None:
                        tasks.cancel_scope.cancel()
                    else:
                        on_signal()

        tasks.start_soon(watch)
        await anyio.lowlevel.checkpoint()  # the receiver is open before the body runs
        try:
            yield stop
        finally:
            tasks.cancel_scope.cancel()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound now, so that a bad address fails before anything runs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def rebinding_guard(host: str) -> TransportSecuritySettings | None:
    """On a loopback address, where no token is needed, only requests that name a
    loopback host (from a loopback page, if from a page) are served: a web page whose
    name was rebound to the address is refused (421). The SDK does this for 127.0.0.1,
    localhost and ::1 only, not for the rest of 127.0.0.0/8. Elsewhere the token guards."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    if not loopback:
        return None
    shown = f"[{host}]" if ":" in host else host
    hosts = [f"{shown}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts],
    )


class BearerToken:
    """Refuse every HTTP request without `Authorization: Bearer <token>` (401)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": "unauthorized: send Authorization: Bearer <token>"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def serve_http(
    server: Server[Any], sock: socket.socket, token: str | None, announce: Callable[[str], None]
) -> str:
    """Serve Streamable HTTP on `sock` until SIGINT or SIGTERM; returns which."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    app: Any = server.streamable_http_app(
        streamable_http_path=HTTP_PATH, host=host, transport_security=rebinding_guard(host)
    )
    if token:
        app = BearerToken(app, token)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # ours: see until_signal

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            shown = f"[{host}]" if ":" in host else host
            announce(f"http://{shown}:{port}{HTTP_PATH}")

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(GRACE_S),
    )
    web = _Server(config)

    def stop() -> None:
        web.should_exit = True

    async with until_signal(stop) as stopped:
        await web.serve(sockets=[sock])
    return stopped.reason or "stopped"
