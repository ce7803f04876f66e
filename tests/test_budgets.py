"""Budgets that hold within a turn: the wall budget, the calls per turn, and the
orchestrator's threads, against the scripted server through the real `openai` client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.audit import Trace, read_trace
from agent.loop import Agent, RunResult
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, say
from policies import parse_policy
from sandbox import Pool
from sandbox.errors import PolicyError
from sandbox.pool import KILL_WAIT_S
from tools import Registry

ROOT = Path(__file__).resolve().parent.parent
POOL_SIZE = 2
SLOW_TIMEOUT_S = 8.0
"""slow_stamp's own timeout: without the wall budget, 30 calls take 15 x this."""


def run_agent(tmp_path: Path, script: list[Step], run_table: str) -> tuple[RunResult, list[Any]]:
    from conftest import HOSTILE

    registry = Registry.default()
    registry.load(HOSTILE)
    text = f"""
[tools.slow_stamp]
timeout_s = {SLOW_TIMEOUT_S}

[run]
model = "scripted"
max_retries = 0
{run_table}
"""
    policy = parse_policy(text, "test.toml", tmp_path)
    trace_path = tmp_path / "trace.jsonl"
    with (
        ScriptedModelServer(script) as server,
        Pool(policy, registry=registry, size=POOL_SIZE) as pool,
    ):
        model = ModelClient(model="scripted", base_url=server.base_url, api_key="x", max_retries=0)
        trace = Trace(trace_path)
        try:
            result = Agent(pool, policy, model, trace=trace).run("go")
        finally:
            trace.close()
    return result, read_trace(trace_path)


def test_a_turn_of_slow_calls_ends_within_the_wall_budget(tmp_path: Path) -> None:
    wall = 2.0
    calls = [("slow_stamp", {"seconds": 600 + i}) for i in range(30)]
    result, events = run_agent(
        tmp_path, [call(*calls), say("done")], f"max_wall_s = {wall}\nmax_calls_per_turn = 30"
    )
    assert result.reason == "max_wall_time"
    tools = [e for e in events if e["event"] == "tool_call"]
    assert len(tools) == 30
    # Every call got its tool message, with its id, in order.
    asked = [c["id"] for c in result.messages[2]["tool_calls"]]
    assert [m["tool_call_id"] for m in result.messages[3:]] == asked
    started = [e for e in tools if e["timeout_s"] is not None]
    refused = [e for e in tools if e["timeout_s"] is None]
    # Calls run until the budget ends, so no thread takes a second one: at most the
    # pool's size ever started, each with no more time than the run had left.
    assert 1 <= len(started) <= POOL_SIZE
    for e in started:
        assert e["timeout_s"] <= e["wall_left_s"] <= wall
        assert e["error_kind"] == "timeout"
        assert "wall-clock budget (max_wall_s = 2 s) ran out while it ran" in e["error_message"]
    for e in refused:
        assert e["error_kind"] == "denied" and e["worker_pid"] is None
        assert "was spent before this call could start" in e["error_message"]
    sent = {m["tool_call_id"]: m["content"] for m in result.messages[3:]}
    assert all("max_wall_s" in text for text in sent.values())
    # The run overran by at most what killing the last calls takes (not 15 x 8 s).
    assert events[-1]["wall_s"] <= wall + KILL_WAIT_S + 5


def test_calls_past_max_calls_per_turn_are_refused_with_a_note(tmp_path: Path) -> None:
    five = [("calculate", {"expression": f"{i} + 1"}) for i in range(5)]
    script = [call(*five), call(("calculate", {"expression": "3 + 1"})), say("done")]
    result, events = run_agent(tmp_path, script, "max_calls_per_turn = 3")
    assert result.ok
    tools = [e for e in events if e["event"] == "tool_call"]
    assert [e["approval"] for e in tools[:5]] == ["not_required"] * 3 + ["call_limit"] * 2
    assert [e["output"] for e in tools[:3]] == ["1", "2", "3"]
    for e in tools[3:5]:
        assert e["error_kind"] == "denied" and e["worker_pid"] is None
        assert "at most 3 run per turn (max_calls_per_turn)" in e["error_message"]
    # Each refused call still has its tool message, with its id.
    turn = result.messages[2]
    answers = result.messages[3:8]
    assert [m["tool_call_id"] for m in answers] == [c["id"] for c in turn["tool_calls"]]
    assert "call 4" in answers[3]["content"] and "call 5" in answers[4]["content"]
    # Asked again in the next turn, a refused call runs: it was never run, so it is
    # not a repeat.
    assert tools[5]["approval"] == "not_required" and tools[5]["output"] == "4"


def test_max_calls_per_turn_defaults_to_16_and_is_validated(tmp_path: Path) -> None:
    assert parse_policy("", "p.toml", tmp_path).run.max_calls_per_turn == 16
    for bad in ("0", "-1", '"4"', "1.5"):
        with pytest.raises(PolicyError, match="max_calls_per_turn"):
            parse_policy(f"[run]\nmax_calls_per_turn = {bad}\n", "p.toml", tmp_path)


# A CLI whose K+1-th thread start (or process fork) fails as it does when the system
# is out of them: RuntimeError "can't start new thread", OSError EAGAIN from fork.
EXHAUSTED = """
import errno, os, sys, threading
allowed = int(sys.argv.pop(1))
what = sys.argv.pop(1)
count = [0]
if what == "thread":
    real_start = threading.Thread.start
    def start(self):
        count[0] += 1
        if count[0] > allowed:
            raise RuntimeError("can't start new thread")
        real_start(self)
    threading.Thread.start = start
else:
    real_fork = os.fork
    def fork():
        count[0] += 1
        if count[0] > allowed:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_fork()
    os.fork = fork
from agent.cli import main
sys.exit(main())
"""


def exhausted_cli(
    what: str, allowed: int, base_url: str, home: Path
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-c", EXHAUSTED, str(allowed), what, "run", "add", "--base-url", base_url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env | {"XDG_DATA_HOME": str(home)},
    )


@pytest.mark.parametrize(
    ("what", "allowed"), [("thread", 0), ("thread", 1), ("thread", 2), ("fork", 0)]
)
def test_running_out_of_threads_or_processes_is_one_line(
    tmp_path: Path, what: str, allowed: int
) -> None:
    """Thread starts in a run: the zygote's reader, then one per call running at once
    (2 here). Each failing start is one line and exit 1, or the run answers."""
    two = [("calculate", {"expression": "1 + 1"}), ("calculate", {"expression": "2 + 2"})]
    with ScriptedModelServer([call(*two), say("2 and 4")]) as server:
        proc = exhausted_cli(what, allowed, server.base_url, tmp_path)
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("sandboxed-agent: warning:")]
    if allowed == 2:  # one thread for the calls: both still run, on it
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "2 and 4"
        answers = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "tool"]
        assert answers == ["2", "4"]
        return
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert (
        f"the system would not start a {'thread' if what == 'thread' else 'process'}" in (lines[0])
    )
    assert "ulimit -u" in lines[0]
    assert proc.stdout == ""
