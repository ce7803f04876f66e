"""What every adapter shares: each tool as (name, description, strict schema), one
async call that runs in the pool and dies with its task, the result as text.

    bridge = Bridge(pool, trace=Trace("audit.jsonl"))
    for tool in bridge.tools(): ...                 # name, description, parameters
    result = await bridge.call("calculate", '{"expression": "6*7"}', call_id="c1")
    result.text                                     # "42", or "error (timeout): ..."

The call goes through `pool.acall`: a framework that cancels the task (its own
timeout, a cancelled run) kills the worker and its tree at once. Arguments are read
once, strictly (`agent.binding`), and the validated dict is what runs and what the
trace records. A tool whose policy sets `requires_approval` runs only when the adapter
says its framework approved this call; otherwise it is `denied`, never run. Nothing
here imports a framework.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies import Policy, check_registry
from sandbox import Limits, Pool, ToolResult
from sandbox.errors import BadArguments, Denied, ToolCallError, UnknownTool
from sandbox.protocol import ToolError
from tools import ArgumentError

from ..audit import ToolCalled, Trace, egress_events
from ..binding import BoundCall, bind

APPROVED_BY_FRAMEWORK = "approved_framework"
"""The trace's `approval` for a call the framework's own approval let through."""


@dataclass(frozen=True)
class BridgedTool:
    name: str
    description: str
    parameters: dict[str, Any]
    """The strict JSON schema of the arguments (`additionalProperties: false`, every
    property required; a parameter with a default is nullable, null meaning it)."""
    requires_approval: bool
    """The policy says a person must approve each call."""
    strict: bool = True
    """The schema is one OpenAI's strict mode takes (`ToolSpec.strict`)."""


class Bridge:
    """The pool's tools for one framework; `tools=` picks some by name (default: all)."""

    def __init__(
        self, pool: Pool, *, tools: Iterable[str] | None = None, trace: Trace | None = None
    ) -> None:
        self.pool = pool
        self.trace = trace
        self.policy = pool.policy if isinstance(pool.policy, Policy) else None
        if self.policy is not None:
            check_registry(self.policy, pool.registry)
        names = list(pool.registry.names() if tools is None else tools)
        unknown = [name for name in names if name not in pool.registry]
        if unknown:
            raise ValueError(
                f"unknown tools {unknown}; the pool's registry has: "
                + ", ".join(pool.registry.names())
            )
        self.names = names

    def tools(self) -> list[BridgedTool]:
        specs = [self.pool.registry.get(name) for name in self.names]
        return [
            BridgedTool(
                spec.name,
                spec.description,
                spec.parameters,
                self.requires_approval(spec.name),
                spec.strict,
            )
            for spec in specs
        ]

    def requires_approval(self, tool: str) -> bool:
        return self.policy is not None and self.policy.requires_approval(tool)

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | str | None,
        *,
        call_id: str = "",
        approved: bool = False,
        step: int = 0,
        limits: Limits | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> ToolResult:
        """Run one call in the pool (cancellable), record it, and return its result.
        `limits` and `settings` go to `pool.acall` (the smolagents executor passes the
        code's state in `settings`)."""
        approval = "not_required"
        if self.requires_approval(tool):
            approval = APPROVED_BY_FRAMEWORK if approved else "denied_not_approved"
        bound = self._bind(tool, arguments)
        if isinstance(bound, ToolCallError):
            result = _failed(tool, bound)
            shown = arguments if isinstance(arguments, str) else _as_json(arguments)
        elif approval == "denied_not_approved":
            result = _failed(tool, Denied(tool, f"a person must approve {tool} and did not"))
            shown = bound.canonical
        else:
            shown = bound.canonical
            try:
                result = await self.pool.acall(tool, bound.args, limits=limits, settings=settings)
            except BaseException:  # cancelled: the worker is dead; the trail says so
                cancelled = ToolCallError(tool, "cancelled: its worker and tree were killed")
                self._record(tool, call_id, step, shown, bound, _failed(tool, cancelled), approval)
                raise
        self._record(tool, call_id, step, shown, bound, result, approval)
        return result

    def _bind(
        self, tool: str, arguments: Mapping[str, Any] | str | None
    ) -> BoundCall | ToolCallError:
        if tool not in self.names:
            return UnknownTool(tool, self.names)
        try:
            return bind(self.pool.registry.get(tool), arguments)
        except ArgumentError as exc:
            return BadArguments(tool, str(exc))

    def _record(
        self,
        tool: str,
        call_id: str,
        step: int,
        arguments: str,
        bound: BoundCall | ToolCallError,
        result: ToolResult,
        approval: str,
    ) -> None:
        if self.trace is None:
            return
        sha256 = bound.sha256 if isinstance(bound, BoundCall) else None
        error = result.error
        self.trace.emit(
            ToolCalled(
                step=step,
                call_id=call_id,
                tool=tool,
                arguments=arguments,
                arguments_sha256=sha256,
                approved_sha256=sha256 if approval == APPROVED_BY_FRAMEWORK else None,
                ok=result.ok,
                output=result.output,
                error_kind=error.kind if error else None,
                error_message=error.message if error else None,
                error_origin=result.error_origin,
                duration_ms=result.duration_ms,
                worker_pid=result.worker_pid,
                approval=approval,
                sent_chars=len(result.text),
            )
        )
        for attempt in egress_events(step, call_id, tool, result):
            self.trace.emit(attempt)


def _as_json(arguments: Mapping[str, Any] | None) -> str:
    """What the model sent, for the trail, when it did not validate."""
    try:
        return json.dumps(arguments, ensure_ascii=True, default=repr)
    except (TypeError, ValueError):
        return repr(arguments)


def _failed(tool: str, exc: ToolCallError) -> ToolResult:
    return ToolResult(
        tool=tool,
        ok=False,
        output=None,
        error=ToolError(kind=exc.kind, message=exc.message),
        duration_ms=0.0,
        error_origin="agent",
    )
