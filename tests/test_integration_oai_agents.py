"""The OpenAI Agents SDK runs our tools in the pool (`agent.integrations.oai_agents`),
with the SDK's own model client talking to the scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

agents = pytest.importorskip("agents")

import adapter_scenario as scenario  # noqa: E402
from agents.tool_context import ToolContext  # noqa: E402
from conftest import unique_marker  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

from agent.audit import Trace, read_trace  # noqa: E402
from agent.integrations.oai_agents import function_tools  # noqa: E402
from agent.replay import ScriptedModelServer, call, say  # noqa: E402
from sandbox import Pool  # noqa: E402


def sdk_run(base_url: str, tools: list, task: str, state=None):
    model = agents.OpenAIChatCompletionsModel(
        model="scripted", openai_client=AsyncOpenAI(base_url=base_url, api_key="none")
    )
    agent = agents.Agent(name="support", instructions="Use the tools.", tools=tools, model=model)
    config = agents.RunConfig(tracing_disabled=True)
    return asyncio.run(agents.Runner.run(agent, state or task, run_config=config))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    yield from scenario.module_pool(tmp_path_factory)


def test_the_sdk_agent_gets_results_and_errors_it_can_act_on(pool: Pool, tmp_path: Path) -> None:
    marker = unique_marker()
    trace_path = tmp_path / "audit.jsonl"
    trace = Trace(trace_path)
    with ScriptedModelServer(scenario.script(marker)) as server:
        tools = function_tools(pool, tools=["calculate", "double_fork", "read_secret"], trace=trace)
        assert all(t.timeout_seconds is None for t in tools)  # the pool kills, not the SDK
        result = sdk_run(server.base_url, tools, "Go.")
        trace.close()
        assert result.final_output == scenario.ANSWER
        scenario.check(server.requests, marker, trace_path)


def test_requires_approval_interrupts_the_sdk_run_until_approved(
    pool: Pool, tmp_path: Path
) -> None:
    def step(request: dict) -> object:
        shown = scenario.tool_messages(request)
        if not shown:
            return call(("issue_refund", {"order_id": "12345", "amount": 10.0}))
        return say(shown[-1])

    trace_path = tmp_path / "audit.jsonl"
    trace = Trace(trace_path)
    with ScriptedModelServer(step) as server:
        tools = function_tools(pool, tools=["issue_refund"], trace=trace)
        assert tools[0].needs_approval is True
        # Invoked without the SDK's approval (a bug, another runner): refused, not run.
        args = '{"order_id": "12345", "amount": 10.0}'
        unasked = ToolContext(
            None, tool_name="issue_refund", tool_call_id="c0", tool_arguments=args
        )
        refused = asyncio.run(tools[0].on_invoke_tool(unasked, args))
        assert refused.startswith("error (denied)"), refused
        assert [e["approval"] for e in read_trace(trace_path)] == ["denied_not_approved"]
        first = sdk_run(server.base_url, tools, "Refund 10 dollars on order 12345.")
        assert len(first.interruptions) == 1
        assert len(read_trace(trace_path)) == 1  # nothing more ran before the yes
        state = first.to_state()
        state.approve(first.interruptions[0])
        second = sdk_run(server.base_url, tools, "", state)
        trace.close()
    assert second.final_output == "Refunded 10.00 USD for order 12345"
    _, event = read_trace(trace_path)
    assert event["approval"] == "approved_framework" and event["ok"]
