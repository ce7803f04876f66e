"""pydantic-ai runs our tools in the pool (`agent.integrations.pydantic_toolset`), with
its own OpenAI chat model talking to the scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pydantic_ai = pytest.importorskip("pydantic_ai")

import adapter_scenario as scenario  # noqa: E402
from conftest import unique_marker  # noqa: E402
from pydantic_ai.models.openai import OpenAIChatModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402

from agent.audit import Trace, read_trace  # noqa: E402
from agent.integrations.pydantic_toolset import SandboxToolset  # noqa: E402
from agent.replay import ScriptedModelServer, Step, call, say  # noqa: E402
from sandbox import Pool  # noqa: E402


def agent_for(base_url: str, toolset: SandboxToolset) -> Any:
    model = OpenAIChatModel("scripted", provider=OpenAIProvider(base_url=base_url, api_key="none"))
    return pydantic_ai.Agent(
        model, toolsets=[toolset], output_type=[str, pydantic_ai.DeferredToolRequests]
    )


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    yield from scenario.module_pool(tmp_path_factory)


def test_the_agent_gets_results_and_errors_it_can_act_on(pool: Pool, tmp_path: Path) -> None:
    marker = unique_marker()
    trace_path = tmp_path / "audit.jsonl"
    trace = Trace(trace_path)
    with ScriptedModelServer(scenario.script(marker)) as server:
        toolset = SandboxToolset(
            pool, tools=["calculate", "double_fork", "read_secret"], trace=trace
        )
        result = asyncio.run(agent_for(server.base_url, toolset).run("Go."))
        trace.close()
        assert result.output == scenario.ANSWER
        scenario.check(server.requests, marker, trace_path)


def test_approval_defers_the_call_and_bad_arguments_ask_the_model_again(
    pool: Pool, tmp_path: Path
) -> None:
    def step(request: dict) -> Step:
        shown = scenario.tool_messages(request)
        if not shown:
            return call(("issue_refund", {"order_id": "12345", "amount": 10.0}))
        if len(shown) == 1:
            return call(("calculate", {"expr": "6*7"}))
        if len(shown) == 2:
            return call(("calculate", {"expression": "6*7"}))
        return say(" | ".join(shown))

    trace_path = tmp_path / "audit.jsonl"
    trace = Trace(trace_path)
    with ScriptedModelServer(step) as server:
        toolset = SandboxToolset(pool, tools=["issue_refund", "calculate"], trace=trace)
        assert toolset.id == "sandboxed-agent"
        agent = agent_for(server.base_url, toolset)
        first = asyncio.run(agent.run("Refund 10 dollars on order 12345."))
        assert isinstance(first.output, pydantic_ai.DeferredToolRequests)
        (asked,) = first.output.approvals
        assert asked.tool_name == "issue_refund"
        assert read_trace(trace_path) == []  # nothing ran before the yes
        approvals = pydantic_ai.DeferredToolResults(approvals={asked.tool_call_id: True})
        second = asyncio.run(
            agent.run(message_history=first.all_messages(), deferred_tool_results=approvals)
        )
        trace.close()
    refund, retry, answer = second.output.split(" | ")
    assert refund == "Refunded 10.00 USD for order 12345"
    # ModelRetry: the model is told what was wrong, in pydantic-ai's retry prompt.
    assert "expr" in retry and "unexpected argument" in retry, retry
    assert answer == "42"
    events = read_trace(trace_path)
    assert [(e["tool"], e["approval"]) for e in events] == [
        ("issue_refund", "approved_framework"),
        ("calculate", "not_required"),
        ("calculate", "not_required"),
    ]
    assert [e["error_kind"] for e in events] == [None, "bad_arguments", None]
