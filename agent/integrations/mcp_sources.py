"""Third-party MCP servers as tool sources: each `[mcp_servers.NAME]` of the policy runs
under `sandbox.launch` (its own root, namespaces, Landlock, seccomp, limits), and its
tools join the agent's as `NAME__TOOL`, with their schemas.

    with McpSources(policy) as sources:            # starts each server, lists its tools
        pool = SourcedPool(Pool(policy), sources)  # what the agent calls tools through
        pool.call("time__get_current_time", {"timezone": "UTC"})

A call past its `timeout_s` kills the server with its whole tree (the launcher's PID
namespace) and the next call starts it again; a server that exits, floods its stdout or
never answers `initialize` is stopped, and the call gets a typed error (`crashed`,
`output_limit`, `timeout`) that the model reads. Approval, idempotency and the per-call
keys come from the policy: `[mcp_servers.NAME]`, then `[tools.NAME__TOOL]`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict

from policies import Policy
from policies.schema import MCP_SEPARATOR, McpServerPolicy
from sandbox import Limits, ToolResult
from sandbox.cancel import CancelToken
from sandbox.errors import ErrorKind, PolicyError, SandboxedAgentError
from sandbox.launch import command_line
from sandbox.protocol import ToolError
from tools import ArgumentError, Registry, ToolSpec
from tools.arguments import parse_object

from ._mcp_schema import InvalidSchema, SchemaChecker
from ._mcp_stdio import Connection, ServerGone, content_text, launcher_env

EXIT_GRACE_S = 5.0
"""How long a server whose stdout ended has to be seen exiting (its status is the
better reason) before it is stopped."""
DESCRIPTION_CHARS = 2000
"""Longest tool description a server may put in the model's context."""
SCHEMA_CHARS = 32_000
"""Longest schema (as JSON) of a tool offered: it goes into every model request."""
MAX_MESSAGE_FLOOR = 1 << 20
"""A server's message may be this long at least (a tool list with long schemas)."""


_API_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
"""What a function name may hold in the model APIs: ASCII only (`str.isalnum` would take
a Greek omicron in an `echο` that passes for `echo`)."""


class McpServerFailed(SandboxedAgentError):
    """A server could not be started, or its tools could not be listed."""


class StoppedForAnother(ServerGone):
    """A server stopped because of one call (past its deadline, cancelled): the other
    calls it was answering did nothing wrong, and an idempotent one is sent again."""


@dataclass(frozen=True)
class McpToolSpec(ToolSpec):
    """A server's tool in the agent's list: its schema as the server gave it, checked
    with JSON Schema here (the model gets `bad_arguments` naming what is wrong)."""

    server: str = ""
    remote_name: str = ""
    checker: SchemaChecker | None = None
    """The schema, checked once when the server listed it (`_mcp_schema`)."""

    @property
    def openai_schema(self) -> dict[str, Any]:
        # Not strict: a server's schema need not meet strict mode's rules (every key
        # required, no additionalProperties), and is never rewritten to.
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def validate(self, arguments: Mapping[str, Any] | str | bytes | None) -> dict[str, Any]:
        args = parse_object(arguments)
        checker = self.checker
        if checker is None:
            try:
                checker = SchemaChecker(self.parameters)
            except InvalidSchema as exc:
                raise ArgumentError(
                    f"invalid arguments for {self.name}: its schema is not JSON Schema ({exc})"
                ) from None
        problems = checker.problems(args)
        if problems:
            raise ArgumentError(f"invalid arguments for {self.name}: " + "; ".join(problems[:5]))
        return args

    def bind(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload


class _AnyArguments(BaseModel):
    """Unused for validation (the JSON Schema is): a ToolSpec names a model."""

    model_config = ConfigDict(extra="allow")


def _runs_in_its_server(**_: Any) -> Any:
    raise RuntimeError("an MCP tool runs in its server, through McpSources.call")


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema the Chat Completions API takes (`properties` present)."""
    out = dict(schema) if isinstance(schema, dict) else {}
    out.setdefault("type", "object")
    out.setdefault("properties", {})
    return out


class _Server:
    """One server's connection, started on demand in the sources' event loop."""

    def __init__(self, name: str, table: McpServerPolicy, policy: Policy) -> None:
        self.name = name
        self.table = table
        words = list(table.command)
        if words[0] in ("python", "python3"):
            words[0] = sys.executable  # the Python running the agent, with its packages
        self.argv = command_line(
            words,
            table.limits(),
            read_paths=table.read_paths,
            write_paths=table.write_paths,
            env=list(table.env),
            disable=policy.disabled_layers,
            strict=policy.isolation == "strict",
            accept_unwalled_signals=policy.accept_unwalled_signals,
        )
        self.env = launcher_env(dict(table.env))
        self.max_message = max(MAX_MESSAGE_FLOOR, 4 * table.max_output_chars)
        self.live: Connection | None = None
        self.starts = 0
        self._starting = asyncio.Lock()

    async def connection(self) -> Connection:
        """The live connection, or a new one (a restart) once the last is gone."""
        async with self._starting:
            live = self.live
            if live is None or live.why is not None:
                if live is not None:
                    await live.stopped.wait()
                live = Connection(self.name, self.argv, self.env, self.max_message)
                self.live = live
                self.starts += 1
                asyncio.get_running_loop().create_task(
                    live.run(self.table.startup_timeout_s), name=f"mcp-{self.name}"
                )
            await live.ready.wait()
            if live.why is not None:
                await live.stopped.wait()
                raise ServerGone(live.why.kind, live.why.message + live.stderr_head())
            return live

    async def call(
        self,
        tool: str,
        args: dict[str, Any],
        timeout_s: float,
        deadline_s: float | None = None,
        cancel: CancelToken | None = None,
    ) -> Any:
        """`timeout_s`: what is left of the call's deadline, `deadline_s` (as said). A
        restart the call waits for counts in it: a server silent as it starts again
        would otherwise hold the call for its `startup_timeout_s`."""
        deadline_s = deadline_s or timeout_s
        ends = anyio.current_time() + timeout_s
        with anyio.move_on_after(timeout_s) as starting:
            live = await self.connection()
        if starting.cancelled_caught:
            raise ServerGone(
                "timeout",
                f"{self.name}{MCP_SEPARATOR}{tool} did not answer within {deadline_s:g} s: "
                f"the MCP server {self.name} was still starting (it has "
                f"{self.table.startup_timeout_s:g} s to answer initialize)",
            )
        if cancel is not None and cancel.cancelled:
            # Checked here, on the loop the kill runs on: a cancel from now on finds
            # this connection live and stops it; one before would find none to stop.
            raise ServerGone("crashed", "the call was cancelled")
        assert live.session is not None
        try:
            with anyio.fail_after(max(ends - anyio.current_time(), 0.001)):
                return await live.session.call_tool(tool, args)
        except TimeoutError:
            why = f"a call to {self.name}{MCP_SEPARATOR}{tool} passed its {deadline_s:g} s deadline"
            live.stop(StoppedForAnother("timeout", why))
            await live.stopped.wait()
            raise ServerGone(
                "timeout",
                f"{self.name}{MCP_SEPARATOR}{tool} did not answer within {deadline_s:g} s: the "
                f"server was killed with its processes (it starts again on the next call)",
            ) from None
        except Exception as exc:
            closed = isinstance(exc, MCPError) and exc.code == types.CONNECTION_CLOSED
            if closed and live.why is None:
                # Its stdout ended: an exit, whose status says more, is noticed soon.
                with anyio.move_on_after(min(EXIT_GRACE_S, ends - anyio.current_time())):
                    await live.stopped.wait()
                live.stop(ServerGone("crashed", f"the MCP server {self.name} closed its stdout"))
            if isinstance(live.why, StoppedForAnother):  # not this call's doing
                await live.stopped.wait()
                raise StoppedForAnother(
                    "crashed",
                    f"the MCP server {self.name} was stopped while this call ran, because "
                    f"{live.why.message}; it starts again on the next call",
                ) from None
            if live.why is not None:  # it stopped while the call waited
                await live.stopped.wait()
                raise ServerGone(live.why.kind, live.why.message + live.stderr_head()) from None
            raise

    async def close(self) -> None:
        live = self.live
        if live is not None:
            live.stop(ServerGone("crashed", "closed"))
            await live.stopped.wait()


class McpSources:
    """Every `[mcp_servers]` server of a policy, each under `sandbox.launch`. Thread-safe:
    its calls run on one event loop of its own, in a thread."""

    def __init__(self, policy: Policy, servers: list[str] | None = None) -> None:
        self.policy = policy
        names = list(policy.mcp_servers) if servers is None else servers
        self._servers = {n: _Server(n, policy.mcp_servers[n], policy) for n in names}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sandboxed-agent-mcp", daemon=True
        )
        self._thread.start()
        self.specs: list[McpToolSpec] = []
        try:
            for name in self._servers:
                self.specs += self._start(name)
        except BaseException:
            self.close()
            raise
        self._by_name = {spec.name: spec for spec in self.specs}

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _start(self, name: str) -> list[McpToolSpec]:
        try:
            live = self._run(self._servers[name].connection())
        except ServerGone as exc:
            raise McpServerFailed(f"[mcp_servers.{name}]: {exc.message}") from None
        specs = []
        for tool in live.tools:
            full = f"{name}{MCP_SEPARATOR}{tool.name}"
            if len(full) > 64 or not _API_NAME.fullmatch(full):  # `$` takes a last "\n"
                continue  # a name the model API refuses (or a look-alike): not offered
            if any(spec.name == full for spec in specs):
                continue  # listed twice: the first is the one offered
            parameters = _parameters(tool.input_schema)
            try:
                if len(json.dumps(parameters)) > SCHEMA_CHARS:
                    continue  # a schema as long as a book: not offered
                checker = SchemaChecker(parameters)
            except (InvalidSchema, ValueError, RecursionError):
                continue  # not a JSON Schema: nothing could check its arguments
            specs.append(
                McpToolSpec(
                    name=full,
                    description=(tool.description or tool.title or full).strip()[
                        :DESCRIPTION_CHARS
                    ],
                    func=_runs_in_its_server,
                    model=_AnyArguments,
                    parameters=parameters,
                    defaults=frozenset(),
                    json_native=True,
                    server=name,
                    remote_name=tool.name,
                    checker=checker,
                )
            )
        offered = {spec.name for spec in specs}
        for table in self.policy.tools:
            if self.policy.mcp_server_of(table) == name and table not in offered:
                where = self.policy.source_of(f"tools.{table}") or self.policy.source
                known = ", ".join(sorted(offered)) or "none"
                raise PolicyError(
                    f"{where}: [tools.{table}]: the MCP server {name} has no such tool "
                    f"(its tools: {known})"
                )
        return specs

    def __contains__(self, tool: object) -> bool:
        return tool in self._by_name

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | str | None,
        *,
        limits: Limits | None = None,
        cancel: CancelToken | None = None,
    ) -> ToolResult:
        """One call, always a `ToolResult`; `limits` (the policy's for the tool when None)
        gives its deadline and output limit. `cancel` kills the server at once."""
        start = time.perf_counter()
        spec = self._by_name[tool]
        limits = limits or self.policy.limits_for(tool)
        try:
            args = spec.validate(arguments)
        except ArgumentError as exc:
            return _result(tool, start, error=(ErrorKind.BAD_ARGUMENTS, str(exc)))
        server = self._servers[spec.server]
        key = cancel._enter(tool) if cancel is not None else None
        if cancel is not None and key is not None:
            cancel._arm(key, lambda: self._loop.call_soon_threadsafe(self._kill, spec.server))
        try:
            answer = self._answer(server, spec, args, limits.timeout_s, start, cancel)
        except ServerGone as exc:
            return _result(tool, start, error=(ErrorKind(exc.kind), exc.message))
        except concurrent.futures.CancelledError:
            return _result(tool, start, error=(ErrorKind.CRASHED, "the call was cancelled"))
        except Exception as exc:  # a JSON-RPC error from the server: its answer
            return _result(tool, start, error=(ErrorKind.TOOL_ERROR, f"{exc}"[:2000]))
        finally:
            if cancel is not None and key is not None:
                cancel._disarm(key)
                cancel._leave(key, tool)
        text = content_text(answer)
        if len(text) > limits.max_output_chars:
            message = (
                f"{tool} returned {len(text)} characters; the limit is {limits.max_output_chars}"
            )
            return _result(tool, start, error=(ErrorKind.OUTPUT_LIMIT, message))
        if answer.is_error:
            return _result(tool, start, error=(ErrorKind.TOOL_ERROR, text[:2000] or "failed"))
        return _result(tool, start, output=text)

    def _answer(
        self,
        server: _Server,
        spec: McpToolSpec,
        args: dict[str, Any],
        timeout_s: float,
        start: float,
        cancel: CancelToken | None,
    ) -> Any:
        """The server's answer; a call of an idempotent tool whose server was stopped
        for another call is sent once more, to the restarted server, within its deadline."""
        resent = False
        while True:
            left = timeout_s - (time.perf_counter() - start)
            future = asyncio.run_coroutine_threadsafe(
                server.call(spec.remote_name, args, max(left, 0.001), timeout_s, cancel),
                self._loop,
            )
            try:
                return future.result()
            except StoppedForAnother:
                left = timeout_s - (time.perf_counter() - start)
                again = not resent and self.policy.idempotent(spec.name)
                if not again or (cancel is not None and cancel.cancelled) or left <= 0:
                    raise
                resent = True

    def _kill(self, server: str) -> None:
        live = self._servers[server].live
        if live is not None:
            live.stop(StoppedForAnother("crashed", f"a call to {server} was cancelled"))

    def starts(self, server: str) -> int:
        """How many times `server` was started (a restart after a kill counts)."""
        return self._servers[server].starts

    def close(self) -> None:
        """Stop every server and its tree, and the event loop; safe to call twice."""
        if self._loop.is_closed():
            return
        if self._loop.is_running():
            for server in self._servers.values():
                try:
                    self._run(server.close())
                except Exception:
                    pass
            self._run(_settle())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> McpSources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _settle() -> None:
    """A few turns of the loop, for the closed pipes' last callbacks to run before it
    stops (else their transports complain, when collected, of a closed loop)."""
    for _ in range(10):
        await asyncio.sleep(0)


def _result(
    tool: str,
    start: float,
    output: str | None = None,
    error: tuple[ErrorKind, str] | None = None,
) -> ToolResult:
    return ToolResult(
        tool=tool,
        ok=error is None,
        output=output,
        error=ToolError(kind=error[0], message=error[1]) if error else None,
        duration_ms=round((time.perf_counter() - start) * 1000, 3),
        error_origin="sandbox" if error else None,
    )


class SourcedPool:
    """A `Pool` with the MCP servers' tools beside its own: what the agent loop calls
    (`registry`, `size`, `call`). Built-in and `--tools` calls go to the pool."""

    def __init__(self, pool: Any, sources: McpSources) -> None:
        self.pool = pool
        self.sources = sources
        self.size = pool.size
        self.registry = Registry()
        self.registry.sources = list(pool.registry.sources)
        for spec in [*pool.registry, *sources.specs]:
            self.registry.add_spec(spec)

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        limits: Limits | None = None,
        settings: Mapping[str, Any] | None = None,
        cancel: CancelToken | None = None,
    ) -> ToolResult:
        if tool in self.sources:
            return self.sources.call(tool, arguments, limits=limits, cancel=cancel)
        return self.pool.call(tool, arguments, limits=limits, settings=settings, cancel=cancel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)
