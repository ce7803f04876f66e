"""The registry's tools as a low-level MCP `Server`, each call run the agent's way.

`tools/list` gives every tool's strict schema exactly as `ToolSpec.parameters` holds it
(the low-level server advertises what it is given; nothing is derived from a signature).
`tools/call` goes through what an agent's call goes through: the arguments are bound
once (`agent.binding`), a tool that needs approval runs only if `--approve` or `--yes`
allowed it, or (`--ask`) the person at the client said yes to exactly those arguments
through MCP elicitation (`_mcp_ask`; stdio has no terminal), the pool runs it under the policy's
limits, and the trace records it. Every failure comes back as a tool result with
`isError: true` whose text starts with its kind (`timeout: ...`), so the model reads
it; a handler never raises, since an exception is a protocol error the model cannot see.

A client's cancellation (`notifications/cancelled`, or a closed HTTP stream) cancels
the handler's scope, and with it the call (`pool.acall`): its worker and every process
it started are killed at once, and the trace records it as cancelled. While a call
runs, a client that sent a `progressToken` gets the elapsed time as progress; the
policy's deadline holds whatever the client does.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext

from policies import Policy
from sandbox import Limits, Pool, ToolResult
from sandbox.errors import BadArguments, Denied, ToolCallError, UnknownTool
from sandbox.protocol import ToolError
from tools import ArgumentError

from ..approval import Approver, Decision, denial
from ..audit import Event, ToolCalled, Trace
from ..binding import BoundCall, bind, canonical_json
from ._mcp_ask import ASK_TIMEOUT_S, answer_carried, ask_client, asks_by_result, question

SERVER_NAME = "sandboxed-agent"
MAX_QUESTIONS = 32
CANCELLED = (
    "cancelled before it ended (the client cancelled it, or the server stopped); its worker "
    "and every process it started were killed"
)


class ServeStarted(Event):
    """The first line a serving process writes to its trace."""

    event: str = "mcp_serve_started"
    transport: str
    policy: str
    tools: list[str]
    workers: int


class ServeEnded(Event):
    event: str = "mcp_serve_ended"
    reason: str
    calls: int


@dataclass
class ToolService:
    """What the handlers share: the pool, the policy, who approves, the trace."""

    pool: Pool
    policy: Policy
    approver: Approver
    trace: Trace
    progress_every_s: float = 1.0
    offer: list[str] | None = None
    """The tools served, by name; None: every loaded tool. Any other is `unknown_tool`."""
    ask_client: bool = False
    """Ask the person at the client (MCP elicitation) when no flag allows a call."""
    ask_timeout_s: float = ASK_TIMEOUT_S
    max_questions: int = MAX_QUESTIONS
    """Questions the server may wait on at once (`--ask`): a client that never answers
    holds each call for `ask_timeout_s`; past this many, a call is denied at once."""
    calls: int = 0
    _asking: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _trace_lock: threading.Lock = field(default_factory=threading.Lock)

    def tools(self) -> list[types.Tool]:
        return [
            types.Tool(name=spec.name, description=spec.description, input_schema=spec.parameters)
            for spec in self.pool.registry
            if spec.name in self.names()
        ]

    def names(self) -> list[str]:
        every = self.pool.registry.names()
        return every if self.offer is None else [name for name in every if name in self.offer]

    async def call(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        call = _Call(next(self._ids), params.name, canonical_json(params.arguments or {}))
        refused = self._admit(call, params.arguments or {}) or await self._approve(
            ctx, params, call
        )
        if isinstance(refused, types.InputRequiredResult):
            return refused  # the client asks its person and sends the call again
        self.calls += 1
        if refused is not None:
            self._record(call, refused)
            return _as_result(refused)
        assert call.bound is not None
        limits = self.policy.limits_for(call.tool)
        token = ctx.meta.get("progress_token") if ctx.meta else None
        try:
            async with anyio.create_task_group() as tasks:
                if token is not None:
                    tasks.start_soon(self._report_progress, ctx, call.tool, limits.timeout_s)
                result = await self._run(call.tool, call.bound, limits)
                tasks.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            self._record(call, None, limits.timeout_s)
            raise
        self._record(call, result, limits.timeout_s)
        return _as_result(result)

    def _admit(self, call: _Call, arguments: dict[str, Any]) -> ToolResult | None:
        """Bind the arguments once: the refusal, or None (`call` then holds what runs)."""
        name, registry = call.tool, self.pool.registry
        if name not in self.names():  # loaded, maybe, but not served
            return _refused(name, UnknownTool(name, self.names()))
        try:
            call.bound = bind(registry.get(name), arguments)
        except ArgumentError as exc:
            return _refused(name, BadArguments(name, str(exc)))
        call.arguments = call.bound.canonical
        return None

    async def _approve(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams, call: _Call
    ) -> ToolResult | types.InputRequiredResult | None:
        """The approval the tool needs, from the flags or (`ask_client`) the person at the
        client: the refusal, the question for the client, or None when the call may run."""
        name, bound = call.tool, call.bound
        assert bound is not None
        if not self.policy.requires_approval(name):
            return None
        decision = self.approver.decide(bound)
        if not decision.allowed and self.ask_client:
            carried = answer_carried(params, bound)
            if carried is not None:
                decision = carried
            elif asks_by_result(ctx):
                return question(bound, self.ask_timeout_s)
            elif self._asking >= self.max_questions:
                decision = Decision(False, "denied_client_busy", bound.sha256)
            else:
                self._asking += 1  # one event loop: no lock
                try:
                    decision = await ask_client(ctx, bound, self.ask_timeout_s)
                finally:
                    self._asking -= 1
        call.approval, call.approved = decision.how, decision.sha256
        if decision.allowed:
            return None
        if decision.how == "denied_no_tty":
            why = (
                f"a person must approve {name} and did not ({decision.how}): this server "
                f"asks nobody; start it with --approve {name} to allow it, or --ask to ask "
                "the person at the client"
            )
        elif decision.how == "denied_client_unable":
            why = (
                f"a person must approve {name}, and this client cannot be asked (no MCP "
                f"elicitation): start the server with --approve {name} to allow it"
            )
        else:
            why = denial(name, decision.how)
        return _refused(name, Denied(name, why))

    async def _run(self, name: str, bound: BoundCall, limits: Limits) -> ToolResult:
        # Cancelling this await kills the worker and its tree, reaps them, re-raises.
        return await self.pool.acall(name, bound.args, limits=limits)

    async def _report_progress(
        self, ctx: ServerRequestContext[Any], name: str, deadline_s: float
    ) -> None:
        """Elapsed seconds, strictly increasing, until the call ends: the pool knows no
        more than that a call runs (tools send none), and a client that resets its
        timeout on progress keeps waiting for a long tool instead of giving up."""
        start = time.monotonic()
        last = -1.0
        while True:
            elapsed = max(round(time.monotonic() - start, 3), last + 0.001)
            last = elapsed
            await ctx.session.report_progress(
                elapsed,
                deadline_s,
                f"{name} running in the sandbox: {elapsed:.1f} s of at most {deadline_s:g} s",
            )
            await anyio.sleep(self.progress_every_s)

    def _record(
        self, call: _Call, result: ToolResult | None, timeout_s: float | None = None
    ) -> None:
        """One `tool_call` line; `result` None: the client cancelled the call."""
        error = result.error if result else None
        event = ToolCalled(
            step=call.number,
            call_id=f"mcp-{call.number}",
            tool=call.tool,
            arguments=call.arguments,
            arguments_sha256=call.bound.sha256 if call.bound else None,
            approved_sha256=call.approved,
            ok=bool(result and result.ok),
            output=result.output if result else None,
            error_kind=(error.kind if error else None) if result else "cancelled",
            error_message=(error.message if error else None) if result else CANCELLED,
            error_origin=result.error_origin if result else "agent",
            duration_ms=(
                result.duration_ms
                if result
                else round((time.perf_counter() - call.start) * 1000, 3)
            ),
            worker_pid=result.worker_pid if result else None,
            approval=call.approval,
            sent_chars=len(_text(result)) if result else 0,
            timeout_s=timeout_s,
        )
        with self._trace_lock:
            self.trace.emit(event)


@dataclass
class _Call:
    number: int
    tool: str
    arguments: str
    """Canonical JSON: the bound arguments once they validate, else the client's."""
    bound: BoundCall | None = None
    approval: str = "not_required"
    approved: str | None = None
    start: float = field(default_factory=time.perf_counter)


def build_server(service: ToolService) -> Server[Any]:
    """A low-level server whose only capability is tools."""
    tools = service.tools()

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    return Server(
        SERVER_NAME,
        version=_version(),
        instructions=(
            "Every tool call runs in a killable, resource-limited sandbox worker; an error "
            "result starts with its kind (timeout, memory_limit, denied, ...)."
        ),
        on_list_tools=list_tools,
        on_call_tool=service.call,
    )


def _refused(name: str, exc: ToolCallError) -> ToolResult:
    error = ToolError(kind=exc.kind, message=exc.message)
    return ToolResult(
        tool=name, ok=False, output=None, error=error, duration_ms=0.0, error_origin="agent"
    )


def _text(result: ToolResult) -> str:
    """The output, or the error's kind, a colon and its message."""
    if result.ok:
        return result.output or ""
    assert result.error is not None
    return f"{result.error.kind}: {result.error.message}"


def _as_result(result: ToolResult) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=_text(result))], is_error=not result.ok
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sandboxed-agent")
    except PackageNotFoundError:
        return ""
