"""The OpenAI Agents SDK (`openai-agents`): our tools as its `FunctionTool`s, run in the pool.

    from agents import Agent, Runner
    from agent.integrations.oai_agents import function_tools

    with Pool(load_policy("policy.toml")) as pool:
        agent = Agent(name="support", tools=function_tools(pool))
        result = await Runner.run(agent, "Can I still return order 12345?")

Each call runs in a fresh sandboxed worker under the policy's limits; a failure comes
back to the model as `error (kind): message` text, which it can act on, never as an
exception that would end the run. `timeout_seconds` stays unset: the SDK's timeout
only stops waiting, and cannot stop a sync tool's thread, while the pool kills the
worker and its tree at the policy's deadline. A cancelled run kills its calls in
flight. A tool whose policy sets `requires_approval` gets `needs_approval=True`: the
SDK interrupts the run until `RunState.approve()` (and the bridge refuses it if the
SDK ever invoked it unapproved).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agents import FunctionTool
from agents.tool_context import ToolContext

from sandbox import Pool

from ..audit import Trace
from ._bridge import Bridge, BridgedTool


def function_tools(
    pool: Pool, *, tools: Iterable[str] | None = None, trace: Trace | None = None
) -> list[FunctionTool]:
    """One `FunctionTool` per tool of the pool's registry (or of `tools`); each call
    is recorded in `trace` when one is given."""
    bridge = Bridge(pool, tools=tools, trace=trace)
    return [_function_tool(bridge, tool) for tool in bridge.tools()]


def _function_tool(bridge: Bridge, tool: BridgedTool) -> FunctionTool:
    async def invoke(ctx: ToolContext[Any], arguments: str) -> str:
        # The SDK invokes it only after its approval; its record is checked again here.
        approved = tool.requires_approval and ctx.is_tool_approved(tool.name, ctx.tool_call_id)
        result = await bridge.call(
            tool.name, arguments, call_id=ctx.tool_call_id, approved=approved is True
        )
        return result.text

    return FunctionTool(
        name=tool.name,
        description=tool.description,
        params_json_schema=tool.parameters,
        on_invoke_tool=invoke,
        strict_json_schema=tool.strict,
        needs_approval=tool.requires_approval,
    )
