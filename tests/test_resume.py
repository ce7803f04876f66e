"""Runs checkpointed after every step and resumed after an error, a kill mid-call, and
SIGKILL at many points: the database always opens, no completed call runs twice, and a
call that was in flight runs again only if idempotent or approved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.approval import Approver
from agent.audit import Trace, read_trace
from agent.checkpoints import CheckpointError, RunStore
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, fail, say
from policies import ToolPolicy, load_policy, parse_policy
from sandbox import Pool

ROOT = Path(__file__).resolve().parent.parent

SLOW_TOOLS = '''
import time
from tools import tool

@tool
def slow_refund(order_id: str) -> str:
    """Refund an order, slowly."""
    time.sleep(3)
    return f"refunded {order_id}"
'''


def turn_of(request: dict[str, Any]) -> int:
    return sum(1 for m in request["messages"] if m["role"] == "assistant")


def echo_last_tool(request: dict[str, Any]) -> Step:
    tools = [m for m in request["messages"] if m["role"] == "tool"]
    return say(f"Result: {tools[-1]['content'] if tools else 'none'}")


def test_a_run_resumes_after_a_model_error_without_rerunning_calls(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    policy = load_policy()
    trace_path = tmp_path / "trace.jsonl"
    calls = [("get_order_status", {"order_id": "12345"}), ("calculate", {"expression": "2*3"})]
    first = [call(*calls), fail(401, "bad key")]
    with Pool(policy, size=2) as pool:
        with ScriptedModelServer(first) as server:
            client = ModelClient(model="m", base_url=server.base_url, api_key=None, max_retries=0)
            trace = Trace(trace_path)
            result = Agent(pool, policy, client, store=store, trace=trace).run("Order 12345?")
        assert result.reason == "model_error" and result.run_id
        record = store.load(result.run_id)
        assert record.state == "model_error" and record.steps == 1
        assert [c.state for c in record.calls] == ["done", "done"]
        with ScriptedModelServer(echo_last_tool) as server:
            client = ModelClient(model="m", base_url=server.base_url, api_key=None, max_retries=0)
            resumed = Agent(pool, policy, client, store=store, trace=trace).resume(record)
            sent = server.requests[0]["messages"]
        trace.close()
    assert resumed.ok and resumed.answer == "Result: 6" and resumed.steps == 2
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool"]
    calls = [e for e in read_trace(trace_path) if e["event"] == "tool_call"]
    assert sorted(e["tool"] for e in calls) == ["calculate", "get_order_status"]  # once each
    assert store.load(result.run_id).state == "answer"
    with pytest.raises(CheckpointError, match="already answered"):
        Agent(pool, policy, client, store=store).resume(store.load(result.run_id))


def cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        **kw,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def wait_for(condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def store_at() -> RunStore:
    return RunStore(Path(os.environ["XDG_DATA_HOME"]) / "sandboxed-agent" / "runs.db")


def latest_run(store: RunStore) -> Any:
    runs = store.runs(1)
    return runs[0] if runs else None


@pytest.mark.parametrize("approve", [False, True], ids=["denied", "approved"])
def test_a_call_in_flight_at_a_kill_reruns_only_with_approval(
    tmp_path: Path, approve: bool
) -> None:
    tools = tmp_path / "slow.py"
    tools.write_text(SLOW_TOOLS)

    def model(request: dict[str, Any]) -> Step:
        return (
            call(("slow_refund", {"order_id": "12345"}))
            if turn_of(request) == 0
            else echo_last_tool(request)
        )

    with ScriptedModelServer(model) as server:
        base = ["--tools", str(tools), "--base-url", server.base_url]
        store = store_at()
        proc = cli("run", "Refund 12345", *base)
        run = wait_for(
            lambda: (r := latest_run(store)) and r.calls and r.calls[0].state == "running" and r,
            "the call to start",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert store.load(run.id).state == "killed"
        listing = subprocess.run(
            [sys.executable, "-m", "agent", "runs"], capture_output=True, text=True, cwd=ROOT
        )
        assert run.id in listing.stdout and "killed" in listing.stdout
        approval = ["--approve", "slow_refund"] if approve else []
        status, out, err = finish(cli("run", "--resume", run.id, *base, *approval))
    assert status == 0, err
    if approve:
        assert out.strip() == "Result: refunded 12345"
    else:
        assert "not run again: slow_refund was in flight when the run stopped" in out
    assert store.load(run.id).state == "answer"


def test_sigkill_at_many_points_always_resumes_to_one_answer(tmp_path: Path) -> None:
    """Each run is killed at a different moment after it starts, then resumed until it
    answers. The database always opens, every call of the conversation has exactly one
    answer, and no call that completed is run again."""
    plan = [
        [("calculate", {"expression": "1+1"})],
        [("get_current_date", {}), ("calculate", {"expression": "2*3"})],
        [("calculate", {"expression": "10/4"})],
    ]

    def model(request: dict[str, Any]) -> Step:
        turn = turn_of(request)
        if turn < len(plan):
            return call(*plan[turn], delay_s=0.05)
        return say("done", delay_s=0.05)

    policy = tmp_path / "policy.toml"
    policy.write_text("[defaults]\nidempotent = false\n[tools.calculate]\nidempotent = false\n")
    resumed_mid_run = 0
    store = store_at()
    with ScriptedModelServer(model) as server:
        for offset in [0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.4]:
            trace = tmp_path / f"trace-{offset}.jsonl"
            args = ["--base-url", server.base_url, "--trace", str(trace), "--policy", str(policy)]
            known = {r.id for r in store.runs()}
            proc = cli("run", "Compute things", *args)
            run = wait_for(
                lambda: (r := latest_run(store)) and r.id not in known and r,  # noqa: B023
                "the run to start",
            )
            time.sleep(offset)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            record = store.load(run.id)  # opens, whatever the moment
            if record.state == "answer":
                continue
            resumed_mid_run += record.steps > 0
            status, out, err = finish(cli("run", "--resume", run.id, *args, "--yes"))
            assert status == 0, err
            assert out.strip() == "done"
            _check_conversation(store.load(run.id).messages)
            events = [e for e in read_trace(trace) if e["event"] == "tool_call"]
            twice = [k for k, n in Counter(e["call_id"] for e in events).items() if n > 1]
            assert not twice, f"calls run twice: {twice}"
    assert resumed_mid_run >= 3, "too few kills landed mid-run to prove anything"


def _check_conversation(messages: list[dict[str, Any]]) -> None:
    """Every tool call has exactly one answer, right after its assistant turn."""
    for i, message in enumerate(messages):
        ids = [c["id"] for c in message.get("tool_calls") or []]
        if not ids:
            continue
        answers = []
        for follower in messages[i + 1 :]:
            if follower["role"] != "tool":
                break
            answers.append(follower["tool_call_id"])
        assert sorted(answers) == sorted(ids), json.dumps(messages)[:2000]


def test_a_corrupt_run_store_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CheckpointError, match="is not a usable run file"):
        RunStore(path)
    assert path.read_bytes() == b"not a database at all" * 100


def test_resume_needs_a_known_run_and_not_a_task_too(tmp_path: Path) -> None:
    nowhere = ["--base-url", "http://127.0.0.1:9/v1"]
    status, _, err = finish(cli("run", "--resume", "nope", *nowhere))
    assert status == 1 and "no run 'nope'" in err
    status, _, err = finish(cli("run", "task", "--resume", "x", *nowhere))
    assert status == 2 and "not both" in err
    policy = parse_policy("[defaults]\nidempotent = true\n", "p.toml", tmp_path)
    assert policy.idempotent("anything")


def test_ctrl_c_leaves_a_run_that_resumes(tmp_path: Path) -> None:
    tools = tmp_path / "slow.py"
    tools.write_text(SLOW_TOOLS)

    def model(request: dict[str, Any]) -> Step:
        if turn_of(request) == 0:
            return call(("slow_refund", {"order_id": "12345"}))
        return echo_last_tool(request)

    store = store_at()
    with ScriptedModelServer(model) as server:
        base = ["--tools", str(tools), "--base-url", server.base_url]
        proc = cli("run", "Refund 12345", *base)
        run = wait_for(
            lambda: (r := latest_run(store)) and r.calls and r.calls[0].state == "running" and r,
            "the call to start",
        )
        proc.send_signal(signal.SIGINT)
        status, _, err = finish(proc)
        assert status == 1, err
        assert (
            f"interrupted (run {run.id}; go on with: sandboxed-agent run --resume {run.id})" in err
        )
        record = store.load(run.id)
        assert record.state == "interrupted"
        assert record.calls[0].state == "running"  # stopped at once, not when the call ended
        status, out, err = finish(cli("run", "--resume", run.id, *base, "--yes"))
    assert status == 0, err
    assert out.strip() == "Result: refunded 12345"


def test_a_run_goes_on_without_checkpoints_when_the_store_is_unusable() -> None:
    path = store_at().path
    path.write_bytes(b"not a database at all" * 100)
    with ScriptedModelServer([say("Hello")]) as server:
        status, out, err = finish(cli("run", "Hi", "--base-url", server.base_url))
        assert status == 0 and out.strip() == "Hello"
        assert "warning: this run is not checkpointed:" in err and "not a usable run file" in err
        status, _, err = finish(cli("run", "--resume", "x", "--base-url", server.base_url))
    assert status == 1 and "not a usable run file" in err
    assert path.read_bytes() == b"not a database at all" * 100


def test_the_person_asked_about_a_call_in_flight_is_told_so(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    policy = load_policy()
    turn = call(("calculate", {"expression": "6*7"})).message
    messages = [{"role": "user", "content": "6*7?"}, turn]
    run_id = store.start("6*7?", "m", messages[:1])
    call_id = turn["tool_calls"][0]["id"]
    store.step(run_id, messages, 1, 0.0, [(call_id, "calculate", '{"expression": "6*7"}')])
    store.call_started(run_id, call_id)
    asked: list[str] = []
    approver = Approver(interactive=True, ask=lambda prompt: asked.append(prompt) or "y")
    strict = policy.model_copy(update={"tools": {**policy.tools, "calculate": ToolPolicy()}})
    with Pool(strict, size=1) as pool, ScriptedModelServer(echo_last_tool) as server:
        client = ModelClient(model="m", base_url=server.base_url, api_key=None, max_retries=0)
        agent = Agent(pool, strict, client, store=store, approver=approver)
        result = agent.resume(store.load(run_id))
    assert result.answer == "Result: 42"
    assert len(asked) == 1 and "was in flight when the run stopped" in asked[0]
    assert "The model wants to run calculate" in asked[0]
