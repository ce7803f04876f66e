"""LangChain / LangGraph through the sandbox: our tools as `StructuredTool`s in
`create_react_agent` (its `ToolNode`), against the scripted model on loopback, through
the sync path (`invoke`) and the async one (`ainvoke`, the bridge's coroutine)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import shared, sleepers, unique_marker

from agent.audit import Trace, read_trace
from agent.replay import ScriptedModelServer, call, say
from policies import parse_policy
from sandbox import Pool
from tools import Registry

pytest.importorskip("langchain_core")
prebuilt = pytest.importorskip("langgraph.prebuilt")
langchain_openai = pytest.importorskip("langchain_openai")
from agent.integrations.langchain_tools import sandboxed_tools  # noqa: E402

TOOLS = str(Path(__file__).with_name("framework_tools.py"))
POLICY = f"""
load_tools = ["{TOOLS}"]
[tools.hang]
timeout_s = 1.5
"""


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    policy = parse_policy(POLICY, "test.toml", Path.cwd())
    registry = Registry.default()
    for source in policy.load_tools:
        registry.load(source)
    with Pool(policy, registry=registry, size=2, **policy.pool_options()) as p:
        yield shared(p)


def react_agent(server: ScriptedModelServer, tools: list[Any]) -> Any:
    model = langchain_openai.ChatOpenAI(
        model="scripted", base_url=server.base_url, api_key="none", max_retries=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent is deprecated for langchain's
        return prebuilt.create_react_agent(model, tools)


def tool_messages(request: dict[str, Any]) -> list[str]:
    """What the model was shown of each tool call, in order."""
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def test_a_react_agent_runs_our_tools_in_the_sandbox(pool: Pool, tmp_path: Path) -> None:
    marker = unique_marker()
    script = [
        call(("get_order_status", {"order_id": "12345"})),
        call(("hang", {"marker": marker})),
        call(("read_path", {"path": "/etc/shadow"})),
        call(("issue_refund", {"order_id": "12345", "amount": 5.0})),
        say("It was delivered."),
    ]
    trace_file = tmp_path / "trace.jsonl"
    trace = Trace(trace_file)
    with ScriptedModelServer(script) as server:
        graph = react_agent(server, sandboxed_tools(pool, trace=trace))
        state = graph.invoke({"messages": [("user", "Where is order 12345?")]})
    trace.close()
    assert state["messages"][-1].content == "It was delivered."
    seen = tool_messages(server.requests[-1])
    assert '"status":"delivered"' in seen[0]
    assert seen[1].startswith("error (timeout): hang did not finish within 1.5 s")
    assert seen[2].startswith("error (tool_error): FileNotFoundError") and "root:" not in seen[2]
    assert seen[3].startswith("error (denied): a person must approve issue_refund")
    statuses = [m.status for m in state["messages"] if m.type == "tool"]
    assert statuses == ["success", "error", "error", "error"]
    assert sleepers(marker) == []
    calls = [e for e in read_trace(trace_file) if e["event"] == "tool_call"]
    assert [(c["tool"], c["error_kind"]) for c in calls] == [
        ("get_order_status", None),
        ("hang", "timeout"),
        ("read_path", "tool_error"),
        ("issue_refund", "denied"),
    ]


def test_the_async_path_kills_a_hung_tool_too(pool: Pool) -> None:
    marker = unique_marker()
    script = [
        call(("hang", {"marker": marker}), ("calculate", {"expression": "6 * 7"})),
        say("42, and the carrier did not answer."),
    ]
    with ScriptedModelServer(script) as server:
        graph = react_agent(server, sandboxed_tools(pool, tools=["hang", "calculate"]))
        state = asyncio.run(graph.ainvoke({"messages": [("user", "6 * 7?")]}))
    assert state["messages"][-1].content.startswith("42")
    seen = tool_messages(server.requests[-1])
    assert seen[0].startswith("error (timeout): hang did not finish within 1.5 s")
    assert seen[1] == "42"
    assert sleepers(marker) == []


def test_approve_lets_a_tool_that_asks_for_a_yes_run(pool: Pool) -> None:
    [refund] = sandboxed_tools(pool, tools=["issue_refund"], approve=["issue_refund"])
    assert "12345" in refund.invoke({"order_id": "12345", "amount": 5.0})
    [unapproved] = sandboxed_tools(pool, tools=["issue_refund"])
    said = asyncio.run(unapproved.ainvoke({"order_id": "12345", "amount": 5.0}))
    assert said.startswith("error (denied)")
    # A key the schema does not have is named, never dropped on the way.
    extra = refund.invoke({"order_id": "12345", "amount": 5.0, "note": "x"})
    assert extra.startswith("error (bad_arguments)") and "note: unexpected argument" in extra


def test_cancelling_the_graph_kills_the_tool_at_once(pool: Pool) -> None:
    """LangGraph's cancellation reaches the bridge: the worker and its helper are gone
    when the cancelled task returns, long before the tool's deadline would kill them."""
    marker = unique_marker()
    script = [call(("hang", {"marker": marker})), say("never reached")]

    async def cancel_while_hung() -> list[int]:
        graph = react_agent(server, sandboxed_tools(pool, tools=["hang"]))
        task = asyncio.create_task(graph.ainvoke({"messages": [("user", "Track it.")]}))
        deadline = asyncio.get_running_loop().time() + 30
        while not sleepers(marker):  # the tool's helper is up: the call is in flight
            assert asyncio.get_running_loop().time() < deadline, "the tool never started"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sleepers(marker)

    with ScriptedModelServer(script) as server:
        assert asyncio.run(cancel_while_hung()) == []
