"""smolagents through the sandbox: a `ToolCallingAgent` with our tools, and a `CodeAgent`
whose code runs in `run_python`, each against the scripted model on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import shared, sleepers, unique_marker

from agent.audit import Trace, read_trace
from agent.replay import ScriptedModelServer, Step, call, say
from policies import parse_policy
from sandbox import Pool
from tools import Registry

smolagents = pytest.importorskip("smolagents")
from agent.integrations.smolagents_tools import SandboxExecutor, sandboxed_tools  # noqa: E402

TOOLS = str(Path(__file__).with_name("framework_tools.py"))
POLICY = f"""
load_tools = ["tools.python", "{TOOLS}"]
[tools.hang]
timeout_s = 1.5
[tools.run_python]
timeout_s = 2
cpu_s = 2
"""


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    policy = parse_policy(POLICY, "test.toml", Path.cwd())
    registry = Registry.default()
    for source in policy.load_tools:
        registry.load(source)
    with Pool(policy, registry=registry, size=2, **policy.pool_options()) as p:
        yield shared(p)


def model(server: ScriptedModelServer) -> Any:
    return smolagents.OpenAIModel(model_id="scripted", api_base=server.base_url, api_key="none")


def conversation(request: dict[str, Any], start: int = 1) -> str:
    """Everything the model was shown after its instructions (from `start`), as one
    text: smolagents sends each tool's result or error in a user message (and merges
    neighbours)."""
    texts = []
    for message in request["messages"][start:]:
        content = message["content"]
        parts = content if isinstance(content, list) else [{"text": content}]
        texts.append("".join(str(p.get("text", "")) for p in parts))
    return "\n".join(texts)


def test_a_tool_calling_agent_runs_our_tools_in_the_sandbox(pool: Pool, tmp_path: Path) -> None:
    marker = unique_marker()
    script = [
        call(("get_order_status", {"order_id": "12345"})),
        call(("hang", {"marker": marker})),
        call(("read_path", {"path": "/etc/shadow"})),
        call(("issue_refund", {"order_id": "12345", "amount": 5.0})),
        call(("final_answer", {"answer": "delivered"})),
    ]
    trace_file = tmp_path / "trace.jsonl"
    with ScriptedModelServer(script) as server:
        trace = Trace(trace_file)
        agent = smolagents.ToolCallingAgent(
            tools=sandboxed_tools(pool, trace=trace), model=model(server), max_steps=6
        )
        answer = agent.run("Where is order 12345?")
        trace.close()
    assert answer == "delivered"
    seen = conversation(server.requests[-1])
    assert '"status":"delivered"' in seen
    assert "error (timeout): hang did not finish within 1.5 s" in seen
    assert "error (tool_error): FileNotFoundError" in seen and "root:" not in seen
    assert "error (denied): a person must approve issue_refund" in seen
    assert sleepers(marker) == []
    calls = [e for e in read_trace(trace_file) if e["event"] == "tool_call"]
    kinds = [(c["tool"], c["error_kind"]) for c in calls]
    assert kinds == [
        ("get_order_status", None),
        ("hang", "timeout"),
        ("read_path", "tool_error"),
        ("issue_refund", "denied"),
    ]
    assert calls[0]["arguments"] == '{"order_id":"12345"}' and calls[0]["worker_pid"]


def code(source: str) -> Step:
    """A CodeAgent's turn: a thought, then the code between its tags."""
    return say(f"Thought: next step.\n<code>\n{source}\n</code>")


def test_a_code_agent_runs_each_step_in_a_fresh_sandbox(pool: Pool, tmp_path: Path) -> None:
    script = [
        code("import math\nK = 3\ndef f(x):\n    return math.isqrt(x) + K\nprint('defined')"),
        code("K = 10\nprint('f(16) =', f(16))\nopen('/etc/shadow').read()"),
        code("while True:\n    pass"),
        code("gen = (i for i in range(3))\nfinal_answer({'f': f(81), 'seen': seen})"),
    ]
    trace_file = tmp_path / "trace.jsonl"
    with ScriptedModelServer(script) as server:
        trace = Trace(trace_file)
        agent = smolagents.CodeAgent(
            tools=[],
            model=model(server),
            executor=SandboxExecutor(pool, trace=trace),
            additional_authorized_imports=["*"],
            max_steps=6,
        )
        answer = agent.run("Compute.", additional_args={"seen": [1, 2]})
        trace.close()
    # Step 4 ran in a new worker and still had f, K (as step 2 left it) and the variable.
    assert answer == {"f": 19, "seen": [1, 2]}
    assert "You can import from any package you want" in conversation(server.requests[0], 0)
    text = conversation(server.requests[-1])
    assert "Execution logs:\ndefined" in text
    assert "f(16) = 14" in text  # f saw K = 10: it reads the globals of the step it runs in
    assert "FileNotFoundError" in text and "/etc/shadow" in text
    assert "error (timeout): run_python did not finish within 2 s" in text or (
        "error (cpu_limit)" in text
    )
    calls = [e for e in read_trace(trace_file) if e["event"] == "tool_call"]
    assert [c["tool"] for c in calls] == ["run_python"] * 4
    assert len({c["worker_pid"] for c in calls}) == 4


def test_tools_from_code_are_refused_and_approve_lets_a_tool_run(pool: Pool) -> None:
    executor = SandboxExecutor(pool)
    with pytest.raises(ValueError, match="get_order_status"):
        executor.send_tools({t.name: t for t in sandboxed_tools(pool, tools=["get_order_status"])})
    [refund] = sandboxed_tools(pool, tools=["issue_refund"], approve=["issue_refund"])
    assert "12345" in refund(order_id="12345", amount=5.0)  # named in approve: it runs
    out = executor("import json\ngen = (i for i in range(3))\nx = json.dumps([1])")
    again = executor("x * 2")
    assert again.output == "'[1][1]'" and not again.is_final_answer
    assert "gen (a generator) was not kept: it cannot be pickled" in out.logs
    with pytest.raises(TypeError, match="must be JSON data"):
        executor.send_variables({"when": object()})
