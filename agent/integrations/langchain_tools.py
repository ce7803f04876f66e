"""LangChain and LangGraph: our tools as `StructuredTool`s, run in the pool.

    from langgraph.prebuilt import ToolNode, create_react_agent
    from agent.integrations.langchain_tools import sandboxed_tools

    with Pool(load_policy("policy.toml")) as pool:
        graph = create_react_agent(model, sandboxed_tools(pool))

Each tool has the strict JSON schema of ours and a `coroutine=` that runs the call
through the bridge (`ainvoke`: cancelling the task kills the worker and its tree), and a
sync `func=` for `invoke`. A failed call raises `ToolException`, which the tool itself
turns into a `ToolMessage` with `status="error"` and the text the model reads
(`error (timeout): ...`), so a graph goes on and the model can act on it. A tool whose
policy sets `requires_approval` runs only when `approve` names it (LangChain tools have
no approval step of their own; LangGraph's `interrupt()` is the graph's, not the tool's).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from langchain_core.tools import StructuredTool, ToolException

from sandbox import Pool

from ..audit import Trace
from ._bridge import Bridge, BridgedTool
from ._sync import run_sync, strict_arguments


def sandboxed_tools(
    pool: Pool,
    *,
    tools: Iterable[str] | None = None,
    trace: Trace | None = None,
    approve: Collection[str] = (),
) -> list[StructuredTool]:
    """One `StructuredTool` per tool of the pool's registry (or of `tools`); each call is
    recorded in `trace` when one is given."""
    bridge = Bridge(pool, tools=tools, trace=trace)
    return [_structured_tool(bridge, tool, tool.name in approve) for tool in bridge.tools()]


class _SandboxedTool(StructuredTool):
    """The model's arguments reach our function as one dict: passed as keywords,
    LangChain would put its own `config` and `run_manager` over the model's values of
    those names, and fail (TypeError) on a key named `self`."""

    def _to_args_and_kwargs(
        self, tool_input: str | dict[str, Any], tool_call_id: str | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super()._to_args_and_kwargs(tool_input, tool_call_id)
        return (args[0] if args else kwargs,), {}


def _structured_tool(bridge: Bridge, tool: BridgedTool, approved: bool) -> StructuredTool:
    async def call(arguments: dict[str, Any] | str) -> str:
        if isinstance(arguments, dict):
            arguments = strict_arguments(tool.parameters, arguments)
        result = await bridge.call(tool.name, arguments, approved=approved)
        if not result.ok:
            raise ToolException(result.text)
        return result.output or ""

    def call_sync(arguments: dict[str, Any] | str) -> str:
        return run_sync(call(arguments))

    return _SandboxedTool.from_function(
        func=call_sync,
        coroutine=call,
        name=tool.name,
        description=tool.description,
        args_schema=tool.parameters,
        infer_schema=False,
        handle_tool_error=True,
    )
