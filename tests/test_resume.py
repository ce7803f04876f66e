"""Runs checkpointed after every step and resumed after an error, a kill mid-call, and
SIGKILL at many points: the database always opens, no completed call runs twice, and a
call that was in flight runs again only if idempotent or approved."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMain

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


HELD_TOOLS = '''
import time
from pathlib import Path
from tools import tool

@tool
def slow_refund(order_id: str) -> str:
    """Refund an order, once its test lets it go on."""
    # The test appends the release line to this very file (the worker sees the file,
    # not its directory): the call stays in flight however loaded the machine is.
    for _ in range(2400):
        if "# " + "released" in Path(__file__).read_text().splitlines():
            return f"refunded {order_id}"
        time.sleep(0.05)
    return "never released"
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


def finished(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return done.returncode, done.stdout, done.stderr


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
    tmp_path: Path, approve: bool, agent_main: AgentMain
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
        # What follows the kill, in this process (conftest.AgentMain): the killed run
        # was a program.
        listing = agent_main("runs")
        assert run.id in listing.stdout and "killed" in listing.stdout
        approval = ["--approve", "slow_refund"] if approve else []
        status, out, err = finished(agent_main("run", "--resume", run.id, *base, *approval))
    assert status == 0, err
    if approve:
        assert out.strip() == "Result: refunded 12345"
    else:
        assert "not run again: slow_refund was in flight when the run stopped" in out
    assert store.load(run.id).state == "answer"


GATE_TOOLS = """
import time
from pathlib import Path
from tools import context, tool

@tool
def gate(name: str) -> str:
    \"\"\"Wait while the test holds this gate (a file in the data_dir), then pass.\"\"\"
    hold = Path(context.data_dir()) / "hold"
    deadline = time.monotonic() + 120
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return f"passed {name}"
"""

KILL_PLAN = [
    [("calculate", {"expression": "1+1"})],
    [("get_current_date", {}), ("gate", {"name": "a"})],
    [("calculate", {"expression": "10/4"})],
]


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed, named by its own progress: `model_turn` holds the model's
    answer to that turn until the kill, `gate` holds the gate tool's call. A point
    that holds nothing is killed as soon as `reached` is seen, wherever the run has
    got to by then, so its `reached` must stay true once it is."""

    name: str
    reached: Callable[[Any], bool]
    model_turn: int | None = None
    gate: bool = False

    @property
    def held(self) -> bool:
        return self.model_turn is not None or self.gate


def _calls(record: Any) -> dict[str, str]:
    return {c.tool + str(c.step): c.state for c in record.calls}


KILL_POINTS = [
    KillPoint("waiting for the first turn", lambda r: r.steps == 0, model_turn=0),
    KillPoint("as soon as turn 1 is checkpointed", lambda r: r.steps >= 1),
    KillPoint(
        "waiting for turn 2, turn 1 answered",
        lambda r: r.steps == 1 and _calls(r) == {"calculate1": "done"},
        model_turn=1,
    ),
    KillPoint(
        "one call of turn 2 done, the other in flight",
        lambda r: (
            _calls(r).get("get_current_date2") == "done" and _calls(r).get("gate2") == "running"
        ),
        gate=True,
    ),
    KillPoint("as soon as the gate has passed", lambda r: _calls(r).get("gate2") == "done"),
    KillPoint("waiting for turn 3", lambda r: r.steps == 2, model_turn=2),
    KillPoint("as soon as turn 3's call is done", lambda r: _calls(r).get("calculate3") == "done"),
    KillPoint("waiting for the answer", lambda r: r.steps == 3, model_turn=3),
    KillPoint("after the answer", lambda r: r.status == "answer"),
]


def test_sigkill_at_many_points_always_resumes_to_one_answer(
    tmp_path: Path, agent_main: AgentMain
) -> None:
    """Each run is killed at a different point of its progress, read from its
    checkpoint and held there by the test's model server or a gate tool, then resumed
    until it answers. The database always opens, every call of the conversation has
    exactly one answer, and no call that completed is run again. Each killed run is a
    program; its resume runs in this process (conftest.AgentMain)."""
    held_turn: list[int | None] = [None]
    asked, answer = threading.Event(), threading.Event()

    def model(request: dict[str, Any]) -> Step:
        turn = turn_of(request)
        if turn == held_turn[0]:
            asked.set()
            answer.wait(120)  # the orchestrator is killed meanwhile
        if turn < len(KILL_PLAN):
            return call(*KILL_PLAN[turn])
        return say("done")

    gate_dir = Path(tempfile.mkdtemp(prefix="sandboxed-agent-gate-"))
    gate_dir.chmod(0o711)  # workers of any uid pass (pytest's tmp is private to root)
    hold = gate_dir / "data" / "hold"
    tools = tmp_path / "gate.py"
    tools.write_text(GATE_TOOLS)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "[defaults]\nidempotent = false\n[tools.calculate]\nidempotent = false\n"
        f'[tools.gate]\ntimeout_s = 150\ndata_dir = "{gate_dir / "data"}"\n'
    )
    store = store_at()
    resumed_mid_run = []
    try:
        with ScriptedModelServer(model) as server:
            for n, point in enumerate(KILL_POINTS):
                trace = tmp_path / f"trace-{n}.jsonl"
                args = ["--base-url", server.base_url, "--trace", str(trace)]
                args += ["--policy", str(policy), "--tools", str(tools)]
                held_turn[0] = point.model_turn
                asked.clear()
                answer.clear()
                if point.gate:
                    hold.parent.mkdir(exist_ok=True)
                    hold.touch()
                known = {r.id for r in store.runs()}
                proc = cli("run", "Compute things", *args)
                run = wait_for(
                    lambda: (r := latest_run(store)) and r.id not in known and r,  # noqa: B023
                    "the run to start",
                )
                wait_for(
                    lambda: point.reached(store.load(run.id)),  # noqa: B023
                    f"the run to reach: {point.name}",
                )
                if point.model_turn is not None:
                    assert asked.wait(60), f"the model was not asked: {point.name}"
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                held_turn[0] = None
                answer.set()
                hold.unlink(missing_ok=True)
                record = store.load(run.id)  # opens, whatever the moment
                if point.held:
                    assert point.reached(record), f"the kill missed its point: {point.name}"
                if record.state == "answer":
                    assert not point.held, point.name
                    continue
                resumed_mid_run.append(point.name)
                done_before = {c.call_id for c in record.calls if c.state == "done"}
                events_before = len(read_trace(trace)) if trace.exists() else 0
                status, out, err = finished(agent_main("run", "--resume", run.id, *args, "--yes"))
                assert status == 0, err
                assert out.strip() == "done"
                _check_conversation(store.load(run.id).messages)
                events = [e for e in read_trace(trace) if e["event"] == "tool_call"]
                twice = [k for k, n in Counter(e["call_id"] for e in events).items() if n > 1]
                assert not twice, f"calls run twice ({point.name}): {twice}"
                again = [
                    e["call_id"]
                    for e in read_trace(trace)[events_before:]
                    if e["event"] == "tool_call" and e["call_id"] in done_before
                ]
                assert not again, f"completed calls run again ({point.name}): {again}"
    finally:
        answer.set()
        shutil.rmtree(gate_dir)
    held = [p.name for p in KILL_POINTS if p.held]
    assert set(held) <= set(resumed_mid_run), (held, resumed_mid_run)


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
    assert status == 2 and "no run 'nope'" in err and "(all: sandboxed-agent runs)" in err
    status, _, err = finish(cli("run", "task", "--resume", "x", *nowhere))
    assert status == 2 and "not both" in err
    policy = parse_policy("[defaults]\nidempotent = true\n", "p.toml", tmp_path)
    assert policy.idempotent("anything")


def test_ctrl_c_leaves_a_run_that_resumes(tmp_path: Path, agent_main: AgentMain) -> None:
    tools = tmp_path / "slow.py"
    tools.write_text(HELD_TOOLS)

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
            timeout=180,  # a program's start and a pool's, on a loaded machine
        )
        proc.send_signal(signal.SIGINT)
        status, _, err = finish(proc)
        assert status == 130, err  # stopped, not failed: as `tool` and `eval` exit
        assert (
            f"interrupted (run {run.id}; go on with: sandboxed-agent run --resume {run.id})" in err
        )
        record = store.load(run.id)
        assert record.state == "interrupted"
        assert record.calls[0].state == "running"  # stopped at once, not when the call ended
        with tools.open("a") as source:  # in place: the jail binds this file, not its name
            source.write("# released\n")
        status, out, err = finished(agent_main("run", "--resume", run.id, *base, "--yes"))
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
    store.call_started(run_id, call_id, '{"expression":"6*7"}')
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
