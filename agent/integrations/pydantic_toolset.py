"""pydantic-ai: a toolset whose calls run in our pool.

    from pydantic_ai import Agent, DeferredToolRequests
    from agent.integrations.pydantic_toolset import SandboxToolset

    with Pool(load_policy("policy.toml")) as pool:
        agent = Agent("openai:gpt-4o-mini", toolsets=[SandboxToolset(pool)],
                      output_type=[str, DeferredToolRequests])  # for requires_approval
        result = await agent.run("Can I still return order 12345?")

Each call runs in a fresh sandboxed worker under the policy's limits. A result is the
tool's output; `bad_arguments` raises `ModelRetry` (the model corrects its arguments,
within the tool's retries), and every other kind (`timeout`, `memory_limit`,
`tool_error`, ...) raises `ToolFailed` with the `error (kind): message` text, which the
model sees and adapts to. No `timeout` is set on the tool definitions: pydantic-ai's
abandons a sync tool's thread, while the pool kills the worker and its tree at the
policy's deadline; a cancelled run kills its calls in flight. A tool whose policy sets
`requires_approval` raises `ApprovalRequired` until the call is approved: the run ends
with `DeferredToolRequests`, and goes on with `DeferredToolResults(approvals=...)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic_ai import ApprovalRequired, ModelRetry, RunContext, ToolDefinition
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool
from pydantic_core import SchemaValidator, core_schema

from sandbox import Pool

from ..audit import Trace
from ._bridge import Bridge

ANY_ARGUMENTS = SchemaValidator(core_schema.dict_schema())
"""The worker's side validates, with the tool's own model: here any object passes."""


class SandboxToolset(AbstractToolset[Any]):
    """The pool's tools (or those named in `tools`); `id` is stable, for durable runs."""

    def __init__(
        self,
        pool: Pool,
        *,
        tools: Iterable[str] | None = None,
        trace: Trace | None = None,
        id: str = "sandboxed-agent",
        max_retries: int = 1,
    ) -> None:
        self._bridge = Bridge(pool, tools=tools, trace=trace)
        self._id = id
        self.max_retries = max_retries

    @property
    def id(self) -> str:
        return self._id

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        return {
            tool.name: ToolsetTool(
                toolset=self,
                tool_def=ToolDefinition(
                    name=tool.name,
                    description=tool.description,
                    parameters_json_schema=tool.parameters,
                    strict=True,
                ),
                max_retries=self.max_retries,
                args_validator=ANY_ARGUMENTS,
            )
            for tool in self._bridge.tools()
        }

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> str:
        if self._bridge.requires_approval(name) and not ctx.tool_call_approved:
            raise ApprovalRequired
        result = await self._bridge.call(
            name,
            tool_args,
            call_id=ctx.tool_call_id or "",
            approved=ctx.tool_call_approved,
            step=ctx.run_step,
        )
        if result.ok:
            return result.output or ""
        assert result.error is not None
        if result.error.kind == "bad_arguments":
            raise ModelRetry(result.error.message)
        raise ToolFailed(result.text)
