"""The orchestrator's egress proxy: where a tool with a network allowlist connects.

A worker with an allowlist lives in a network namespace of its own with only
loopback up. Before any tool runs, its set-up code makes a listening socket on
127.0.0.1 there and hands the descriptor to the orchestrator (`_netns`); the worker
keeps no copy. So the accepting, the parsing, every check and every byte counted
happen here, outside the sandbox, and nothing in the worker is trusted: the stream a
tool writes is read as hostile (bounded heads, a deadline for them, a cap on
connections and bytes per call).

One asyncio loop in a daemon thread serves every call's `Session`; a session starts
with the call and ends with it, closing every connection it accepted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from ..limits import MIB, Limits
from . import addresses, wire
from .allowlist import Destination, IPAddress, Pattern, allowed, parse_pattern
from .config import MAX_HEAD_BYTES, Connection, EgressConfig

MAX_RECORDS = 256
"""Connection attempts one call records one by one; past this they are counted."""
_CONTROL_TIMEOUT_S = 30.0
_CHUNK = 64 * 1024

_log = logging.getLogger(__name__)


class _CapReached(Exception):
    pass


class Egress:
    """The proxy of one pool; `open` a `Session` per call of a tool with an allowlist."""

    def __init__(self, config: EgressConfig) -> None:
        self.config = config
        self.resolver = config.resolver or addresses.system_resolver
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="sandboxed-agent-dns")
        )
        self._sessions: set[Session] = set()
        self._lock = threading.Lock()
        self.closed = False
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sandboxed-agent-egress", daemon=True
        )
        self._thread.start()

    def open(self, listener: socket.socket, tool: str, limits: Limits) -> Session:
        session = Session(self, tool, limits)
        self._run(session.start(listener))
        return session

    def open_connections(self) -> int:
        """Connections open right now, over every session (tests ask)."""
        return sum(len(s.writers) for s in list(self._sessions))

    def close(self) -> None:
        for session in list(self._sessions):
            session.close()
        with self._lock:
            self.closed = True  # a session closed after this returns what it has
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(_CONTROL_TIMEOUT_S)


class Session:
    """One call's connections: accepted, checked, forwarded, recorded; all closed at
    `close`, which returns what was recorded."""

    def __init__(self, egress: Egress, tool: str, limits: Limits) -> None:
        self.egress = egress
        self.tool = tool
        network = limits.network
        self.patterns: tuple[Pattern, ...] = tuple(
            parse_pattern(p) for p in (network if isinstance(network, tuple) else ())
        )
        self.max_connections = limits.max_connections
        self.max_bytes = limits.max_egress_mb * MIB
        self.records: list[Connection] = []
        self.unrecorded = 0
        self.attempts = 0
        self.bytes = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._closed: tuple[Connection, ...] | None = None
        self.exhausted = False
        """The listener stopped listening (the call used its connections)."""

    async def start(self, listener: socket.socket) -> None:
        # A copy of the descriptor: the worker's handle keeps the original for its
        # next call (a warm worker), and closing ours stops only this session's accepts.
        self._listener = socket.socket(fileno=os.dup(listener.fileno()))
        self._listener.setblocking(False)
        # What waits to be accepted predates this call (the call is sent after this):
        # a warm worker's earlier call, whose processes are gone. None of it is served.
        while True:
            try:
                stale, _ = self._listener.accept()
            except OSError:
                break
            stale.close()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())
        self.egress._sessions.add(self)

    def close(self) -> tuple[Connection, ...]:
        with self.egress._lock:
            if self._closed is None and self.egress.closed:
                self._closed = tuple(self.records)  # the pool closed first, and with it all
            if self._closed is None:
                try:
                    self._closed = self.egress._run(self._stop())
                except Exception:  # the loop did not answer: say what was seen so far
                    _log.exception("egress session did not stop")
                    self._closed = tuple(self.records)
                self.egress._sessions.discard(self)
        return self._closed

    async def _stop(self) -> tuple[Connection, ...]:
        waiting = list(self.tasks)
        if self._accepting is not None:
            self._accepting.cancel()
            waiting.append(self._accepting)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        records = list(self.records)
        if self.unrecorded:
            records.append(
                Connection(
                    host="",
                    port=0,
                    allowed=False,
                    reason=f"{self.unrecorded} more attempts, not recorded one by one",
                )
            )
        return tuple(records)

    # -- accepting ------------------------------------------------------------

    async def _accept(self) -> None:
        """Until the call ends, or its connections are used: then the listener stops
        listening for good, so what the tool tries next is refused by its own kernel,
        at no cost to the orchestrator (and the worker is not reused: `exhausted`)."""
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError as exc:  # out of descriptors, say: refuse the rest, said once
                why = exc.strerror or str(exc)
                self.exhausted = True
                self._record(
                    Connection(host="", port=0, allowed=False, reason=f"not accepted: {why}")
                )
                return
            self.attempts += 1
            if self.attempts > self.max_connections:
                conn.close()
                self.exhausted = True
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)  # resets what waits, too
                reason = (
                    f"this call's {self.max_connections} connections were used (max_connections)"
                )
                self._record(Connection(host="", port=0, allowed=False, reason=reason))
                return
            task = loop.create_task(self._serve(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _record(self, record: Connection) -> None:
        if len(self.records) < MAX_RECORDS:
            self.records.append(record)
        else:
            self.unrecorded += 1

    # -- one connection -------------------------------------------------------

    async def _serve(self, conn: socket.socket) -> None:
        start = time.monotonic()
        seen: dict[str, Any] = {"host": "", "port": 0, "protocol": "unknown"}
        counts = {"bytes_out": 0, "bytes_in": 0}
        outcome: dict[str, Any] = {"allowed": False, "reason": "closed before a whole request"}
        writers: list[asyncio.StreamWriter] = []
        try:
            await self._connection(conn, seen, counts, outcome, writers)
        except asyncio.CancelledError:
            outcome["reason"] = "the call ended"
            raise
        except _CapReached:
            outcome.update(reason=self._cap_reason(), cut=True)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            if outcome["allowed"]:
                outcome["reason"] = "reset"
        except Exception as exc:  # a bug here must cost one connection, not the proxy
            _log.exception("egress connection failed")
            outcome["reason"] = f"the proxy failed: {type(exc).__name__}"
        finally:
            ended = outcome["reason"] == "the call ended"
            for w in writers:
                self.writers.discard(w)
                # At the call's end nothing more goes either way: dropped, not flushed.
                # Otherwise the transport sends what it holds, then closes.
                with contextlib.suppress(Exception):
                    if ended:
                        w.transport.abort()
                    else:
                        w.close()
            if not writers:
                conn.close()  # else the transport owns it (and closes it)
            self._record(
                Connection(
                    **seen,
                    **outcome,
                    **counts,
                    duration_ms=round((time.monotonic() - start) * 1000, 3),
                )
            )

    async def _connection(
        self,
        conn: socket.socket,
        seen: dict[str, Any],
        counts: dict[str, int],
        outcome: dict[str, Any],
        writers: list[asyncio.StreamWriter],
    ) -> None:
        reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEAD_BYTES)
        writers.append(writer)
        self.writers.add(writer)
        config = self.egress.config
        try:
            async with asyncio.timeout(config.head_timeout_s):
                request = await wire.read_request(reader, writer)
        except TimeoutError:
            outcome["reason"] = f"no whole request within {config.head_timeout_s:g} s"
            return
        except wire.BadRequest as exc:
            seen.update(protocol=exc.protocol, host=exc.host)
            outcome["reason"] = f"malformed request: {exc}"
            if exc.protocol != "socks5":
                writer.write(wire.http_reply(400, f"refused by the sandbox: {exc}"))
            return
        dest = request.dest
        seen.update(host=dest.host, port=dest.port, protocol=request.protocol)
        address, refusal = await self._decide(dest)
        seen["address"] = address.compressed if address is not None else None
        if refusal is not None:
            outcome["reason"] = refusal
            self._refuse(request, writer, 403, f"refused by the sandbox: {refusal}")
            return
        assert address is not None
        outcome["allowed"] = True
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                up_reader, upstream = await asyncio.open_connection(
                    address.compressed, dest.port, limit=_CHUNK
                )
        except (OSError, TimeoutError) as exc:
            why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else "timed out"
            outcome["reason"] = f"connecting to {address.compressed}:{dest.port} failed: {why}"
            self._refuse(request, writer, 502, outcome["reason"])
            return
        writers.append(upstream)
        self.writers.add(upstream)
        outcome["reason"] = "closed"
        if request.protocol == "connect":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        elif request.protocol == "socks5":
            wire.socks_reply(writer, 0)
        else:
            self._count(counts, "bytes_out", len(request.head))
            upstream.write(request.head)
        # What the tool sent past its request is still in `reader`: the pipe reads it first.
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(reader, upstream, counts, "bytes_out"))
                group.create_task(self._pipe(up_reader, writer, counts, "bytes_in"))
        except* _CapReached:
            outcome.update(reason=self._cap_reason(), cut=True)
        except* (ConnectionError, OSError):
            outcome["reason"] = "reset"

    def _cap_reason(self) -> str:
        return f"this call's {self.max_bytes // MIB} MiB were used (max_egress_mb)"

    def _count(self, counts: dict[str, int], way: str, size: int) -> None:
        self.bytes += size
        counts[way] += size
        if self.bytes > self.max_bytes:
            raise _CapReached

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        counts: dict[str, int],
        way: str,
    ) -> None:
        while data := await reader.read(_CHUNK):
            self._count(counts, way, len(data))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()

    def _refuse(
        self, request: wire.Request, writer: asyncio.StreamWriter, status: int, text: str
    ) -> None:
        if request.protocol == "socks5":
            code = wire.SOCKS_REFUSED if status == 403 else wire.SOCKS_CONN_REFUSED
            wire.socks_reply(writer, code)
        else:
            writer.write(wire.http_reply(status, text))

    async def _decide(self, dest: Destination) -> tuple[IPAddress | None, str | None]:
        """The address to connect to, or why not."""
        if not allowed(self.patterns, dest):
            listed = ", ".join(str(p) for p in self.patterns)
            return None, f"{dest} is not on {self.tool}'s network list ({listed})"
        if dest.address is not None:  # an address the policy lists: trusted as written
            return dest.address, addresses.never(dest.address)
        config = self.egress.config
        fixed = addresses.static(config.resolve, dest.host)
        if fixed is not None:
            return fixed, addresses.never(fixed)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                found = await loop.run_in_executor(
                    None, addresses.answers, dest.host, self.egress.resolver
                )
        except (OSError, TimeoutError) as exc:
            why = str(exc) if isinstance(exc, OSError) else "timed out"
            return None, f"{dest.host} could not be resolved: {why}"
        for address in found:
            why = addresses.refused(address, config.allow_private)
            if why:
                return address, f"{dest.host} resolves to {address.compressed}, {why}"
        return found[0], None
