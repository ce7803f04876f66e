"""One third-party MCP server under `sandbox.launch`, over stdio with bounds the SDK's own
`stdio_client` does not have: a message longer than `max_message_bytes`, or more than
`MAX_NOISE_LINES` lines that are not JSON-RPC, stops the server (a flood would otherwise
grow our memory without end); its stderr is drained, and only its start kept.

The connection is owned by one task from start to stop (`Connection.run`), as the
SDK's cancel scopes require; calls come from other tasks of the same event loop and
only send requests on its session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp import ClientSession
from mcp.shared.message import SessionMessage

STDERR_KEPT = 2000
"""Bytes of a server's stderr kept for the error that explains its end."""
MAX_NOISE_LINES = 1000
"""Lines that are not JSON-RPC a server may write before it is taken for a flood."""
MAX_TOOLS = 256
"""Tools one server may list: each goes into every model request, and a server whose
pages never end would otherwise grow our memory until its start-up deadline."""
STOP_WAIT_S = 10.0
"""How long the launcher may take to kill the server's tree and exit, after SIGTERM."""


class ServerGone(Exception):
    """The server stopped (it exited, flooded, or was stopped): `kind` says which."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Connection:
    """A started server: its session once `ready` is set, `stopped` once it is gone."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], max_message_bytes: int):
        self.name = name
        self.argv = argv
        self.env = env
        self.max_message_bytes = max_message_bytes
        self.session: ClientSession | None = None
        self.tools: list[types.Tool] = []
        self.ready = anyio.Event()
        self.stopped = anyio.Event()
        self.why: ServerGone | None = None
        """Why it stopped, once it has (or is stopping)."""
        self._stop = anyio.Event()
        self._stderr = bytearray()
        self._process: anyio.abc.Process | None = None

    def stop(self, why: ServerGone) -> None:
        """Stop the server and its whole tree now; the first reason given is kept."""
        if self.why is None:
            self.why = why
        self._stop.set()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)  # the launcher kills at once

    def stderr_head(self) -> str:
        text = self._stderr.decode("utf-8", "replace").strip()
        return f"; its stderr: {text[:STDERR_KEPT]}" if text else ""

    async def run(self, startup_timeout_s: float) -> None:
        """Start, initialize, list the tools, then hold the session until stopped."""
        try:
            self._process = await anyio.open_process(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # our terminal's Ctrl-C is ours to act on
            )
        except OSError as exc:
            self.why = ServerGone("crashed", f"cannot start the MCP server {self.name}: {exc}")
            self.ready.set()
            self.stopped.set()
            return
        try:
            await self._hold(startup_timeout_s)
        finally:
            with anyio.CancelScope(shield=True):
                await self._end()

    async def _hold(self, startup_timeout_s: float) -> None:
        process = self._process
        assert process is not None
        read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](16)
        write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](16)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._read_stdout, process, read_send)
            tasks.start_soon(self._write_stdin, process, write_recv)
            tasks.start_soon(self._read_stderr, process)
            tasks.start_soon(self._watch_exit, process)
            try:
                async with ClientSession(read_recv, write_send) as session:
                    with anyio.move_on_after(startup_timeout_s) as waited:
                        await self._start(session)
                    if waited.cancelled_caught and self.why is None:
                        self.stop(
                            ServerGone(
                                "crashed",
                                f"the MCP server {self.name} did not answer initialize and "
                                f"tools/list within {startup_timeout_s:g} s: stopped",
                            )
                        )
                    if self.why is None:
                        self.session = session
                    self.ready.set()
                    await self._stop.wait()
            except Exception as exc:  # the session ended under us: the server went away
                if self.why is None:
                    self.stop(ServerGone("crashed", f"the MCP server {self.name} failed: {exc}"))
            finally:
                self.ready.set()
                tasks.cancel_scope.cancel()

    async def _start(self, session: ClientSession) -> None:
        try:
            await session.initialize()
            cursor = None
            while True:
                params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                listed = await session.list_tools(params=params)
                self.tools += listed.tools
                if len(self.tools) > MAX_TOOLS:
                    self.stop(
                        ServerGone(
                            "output_limit",
                            f"the MCP server {self.name} lists more than {MAX_TOOLS} tools: "
                            "stopped",
                        )
                    )
                    return
                cursor = listed.next_cursor
                if not cursor:
                    return
        except Exception as exc:
            if self.why is None:
                self.stop(
                    ServerGone("crashed", f"the MCP server {self.name} failed to start: {exc}")
                )

    async def _end(self) -> None:
        """Stop the launcher (it kills the tree at once) and wait until it has exited."""
        process = self._process
        assert process is not None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_WAIT_S):
                await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        with contextlib.suppress(Exception):
            await process.aclose()  # its pipes' transports too, while the loop runs
        if self.why is None:
            self.why = ServerGone("crashed", f"the MCP server {self.name} stopped")
        self.session = None
        self.stopped.set()

    async def _watch_exit(self, process: anyio.abc.Process) -> None:
        status = await process.wait()
        if self.why is None:
            self.stop(ServerGone("crashed", f"the MCP server {self.name} {_exited(status)}"))

    async def _read_stdout(
        self,
        process: anyio.abc.Process,
        send: anyio.abc.ObjectSendStream[SessionMessage | Exception],
    ) -> None:
        assert process.stdout is not None
        buffer = b""
        noise = 0
        async with send:
            try:
                async for chunk in process.stdout:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    if len(buffer) > self.max_message_bytes or any(
                        len(line) > self.max_message_bytes for line in lines
                    ):
                        self.stop(self._flood(f"a message of more than {self.max_message_bytes}"))
                        return
                    for line in lines:
                        if not line.strip():
                            continue
                        try:
                            message = types.jsonrpc_message_adapter.validate_json(line)
                        except ValueError:
                            noise += 1
                            if noise > MAX_NOISE_LINES:
                                self.stop(self._flood(f"{MAX_NOISE_LINES} lines that are not"))
                                return
                            continue
                        await send.send(SessionMessage(message))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                return

    def _flood(self, what: str) -> ServerGone:
        return ServerGone(
            "output_limit",
            f"the MCP server {self.name} sent {what} JSON-RPC bytes on stdout: stopped",
        )

    async def _write_stdin(
        self, process: anyio.abc.Process, receive: anyio.abc.ObjectReceiveStream[SessionMessage]
    ) -> None:
        assert process.stdin is not None
        async with receive:
            try:
                async for item in receive:
                    data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send((data + "\n").encode())
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                return

    async def _read_stderr(self, process: anyio.abc.Process) -> None:
        assert process.stderr is not None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async for chunk in process.stderr:
                room = STDERR_KEPT - len(self._stderr)
                if room > 0:
                    self._stderr += chunk[:room]


def _exited(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    if status == 70:
        return "could not be started in the sandbox"
    return f"exited with status {status}"


def launcher_env(names: dict[str, str | bool]) -> dict[str, str]:
    """The launcher's environment: PATH, the locale, TZ and TMPDIR of ours, and the
    server's own variables (a value from the policy, or `true`: ours). The launcher keeps
    only the first three and these for the server; nothing else of ours reaches it."""
    from sandbox.zygote import clean_environment

    env = clean_environment(dict(os.environ))
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]  # where the launcher's root goes
    for name, value in names.items():
        if isinstance(value, str):
            env[name] = value
        elif value and name in os.environ:
            env[name] = os.environ[name]
    return env


def content_text(result: Any) -> str:
    """A tool result's content as the model reads it: text as it is, anything else named."""
    parts = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            kind = getattr(block, "mime_type", None) or getattr(block, "type", "content")
            parts.append(f"[{kind} content, not shown]")
    if not parts and result.structured_content is not None:
        import json

        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)
