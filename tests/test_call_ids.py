"""A model server that gives a tool call an id it already used (a later turn's
`call_0` again, or two calls of one turn) loses no call: each keeps its own row in the
checkpoint and its own line in the audit trail, the conversation sent back answers
each call under the id it carries there, and a run stopped in the middle of a reused
id's call resumes to both results."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from conftest import AgentMain
from test_resume import (
    HELD_TOOLS,
    _check_conversation,
    cli,
    finish,
    finished,
    latest_run,
    store_at,
    turn_of,
    wait_for,
)

from agent.audit import Trace, read_trace
from agent.checkpoints import RunStore
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, say
from policies import load_policy
from sandbox import Pool


def reusing(step: Step, call_id: str = "call_0") -> Step:
    """`step` with every one of its calls given `call_id`."""
    for tool_call in (step.message or {}).get("tool_calls") or []:
        tool_call["id"] = call_id
    return step


def results(request: dict[str, Any]) -> Step:
    """The answer: every tool result the conversation holds, in order."""
    return say(json.dumps([m["content"] for m in request["messages"] if m["role"] == "tool"]))


def unique_ids(messages: list[dict[str, Any]]) -> None:
    ids = [c["id"] for m in messages for c in m.get("tool_calls") or []]
    assert len(ids) == len(set(ids)), ids
    _check_conversation(messages)


def test_an_id_used_again_keeps_every_call_apart(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    policy = load_policy()
    trace_path = tmp_path / "trace.jsonl"
    script = [
        reusing(call(("calculate", {"expression": "2*3"}))),
        reusing(call(("calculate", {"expression": "3*4"}), ("calculate", {"expression": "4*5"}))),
    ]

    def model(request: dict[str, Any]) -> Step:
        turn = turn_of(request)
        return script[turn] if turn < len(script) else results(request)

    with Pool(policy, size=1) as pool, ScriptedModelServer(model) as server:
        client = ModelClient(model="m", base_url=server.base_url, api_key=None, max_retries=0)
        trace = Trace(trace_path)
        result = Agent(pool, policy, client, store=store, trace=trace).run("Sums?")
        trace.close()
        sent = server.requests[-1]["messages"]
    assert result.ok and json.loads(result.answer) == ["6", "12", "20"], result
    unique_ids(sent)
    record = store.load(result.run_id)
    assert [(c.step, c.state, c.outcome.sent if c.outcome else None) for c in record.calls] == [
        (1, "done", "6"),
        (2, "done", "12"),
        (2, "done", "20"),
    ]
    assert len({c.call_id for c in record.calls}) == 3
    events = [e for e in read_trace(trace_path) if e["event"] == "tool_call"]
    assert [e["output"] for e in events] == ["6", "12", "20"]
    assert [e["call_id"] for e in events] == [c.call_id for c in record.calls]
    # The first keeps its id; the second had it in an earlier turn; the third shared it
    # with the second within its turn, which the model client told apart (call_0_1).
    assert [e["model_call_id"] for e in events] == [None, "call_0", None]


def test_a_run_stopped_in_a_reused_ids_call_resumes_to_both_results(
    tmp_path: Path, agent_main: AgentMain
) -> None:
    tools = tmp_path / "slow.py"
    tools.write_text(HELD_TOOLS)

    def model(request: dict[str, Any]) -> Step:
        turn = turn_of(request)
        if turn == 0:
            return reusing(call(("calculate", {"expression": "6*7"})))
        if turn == 1:
            return reusing(call(("slow_refund", {"order_id": "12345"})))
        return results(request)

    store = store_at()
    with ScriptedModelServer(model) as server:
        base = ["--tools", str(tools), "--base-url", server.base_url]
        proc = cli("run", "Refund 12345", *base)
        run = wait_for(
            lambda: (
                (r := latest_run(store))
                and any(c.tool == "slow_refund" and c.state == "running" for c in r.calls)
                and r
            ),
            "the second call to start",
            timeout=180,
        )
        proc.send_signal(signal.SIGINT)
        status, _, err = finish(proc)
        assert status == 130, err  # stopped by Ctrl-C
        record = store.load(run.id)
        # The first call's row is still there: the second's did not replace it.
        assert [(c.tool, c.state) for c in record.calls] == [
            ("calculate", "done"),
            ("slow_refund", "running"),
        ]
        with tools.open("a") as source:
            source.write("# released\n")
        status, out, err = finished(agent_main("run", "--resume", run.id, *base, "--yes"))
        sent = server.requests[-1]["messages"]
    assert status == 0, err
    assert json.loads(out) == ["42", "refunded 12345"]
    unique_ids(sent)
    assert [c.state for c in store.load(run.id).calls] == ["done", "done"]
