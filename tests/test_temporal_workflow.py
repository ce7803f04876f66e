"""The agent loop as a Temporal workflow, on a real dev server with real worker processes.

The model is the scripted loopback one (`agent.replay`), serving the worked example's
suite to every worker at once (`agent.evals.scripted`); the runs start with the real
command line (`sandboxed-agent run|approve|eval --temporal`). Each test tries to break
one promise: the same answer and trace as a local run; approval by signal after the
worker that asked is gone, bound to the arguments by hash; an eval spreads over both
workers and reports as a local one; a restart of the server loses nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from temporal_server import (
    ROOT,
    DevServer,
    WorkerProcess,
    start_worker,
    temporal_server,
)

from agent.evals.scripted import suite_script
from agent.evals.suite import load_suite
from agent.replay import ScriptedModelServer, call, say

__all__ = ["temporal_server"]  # the fixture, used by name

SUITE = ROOT / "evals" / "worked_example.toml"
POLICY = ROOT / "evals" / "worked_example_policy.toml"
ROOT = Path(__file__).resolve().parent.parent
SETUP = ("--policy", str(POLICY), "--tools", "tools.demo")
REFUND = "Refund order 12345 in full, now."
DEADLINE_S = 180.0


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(suite_script(load_suite(SUITE))) as server:
        yield server


def worker(server: DevServer, model: ScriptedModelServer, queue: str) -> WorkerProcess:
    return start_worker(server, "--task-queue", queue, "--base-url", model.base_url, *SETUP)


@pytest.fixture
def two_workers(temporal_server: DevServer, model: ScriptedModelServer) -> Iterator[list[Any]]:
    # Per test: the pools' processes a worker starts are each test's to reap.
    workers = [worker(temporal_server, model, "shared") for _ in range(2)]
    try:
        yield workers
    finally:
        for w in workers:
            w.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(env),
        timeout=DEADLINE_S,
    )


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return base | (extra or {})


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def path_of(trace: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a run did, without what differs between any two runs (times, pids, ids)."""
    keep = {
        "run_started": ("task", "model", "limits", "policy"),
        "model_call": ("step", "input_tokens", "output_tokens", "cost_usd", "finish_reason"),
        "tool_call": ("step", "tool", "arguments", "arguments_sha256", "ok", "output", "approval"),
        "run_ended": ("reason", "message", "answer", "steps", "cost_usd"),
    }
    return [(e["event"], *(e.get(k) for k in keep.get(e["event"], ()))) for e in trace]


class Follower:
    """`sandboxed-agent run --temporal` as a process, its stderr read as it comes."""

    def __init__(
        self, server: DevServer, queue: str, task: str, trace: Path, setup: tuple[str, ...] = SETUP
    ) -> None:
        command = [sys.executable, "-m", "agent", "run", "--temporal", server.address]
        command += ["--task-queue", queue, "--trace", str(trace), *setup, task]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        self.lines: list[str] = []
        self.done: tuple[int, str] | None = None
        self._asked = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.strip().startswith("sandboxed-agent approve "):
                self._asked.set()
        self._asked.set()

    def approve_command(self) -> list[str]:
        """The command the run printed for its waiting call, once it is waiting."""
        assert self._asked.wait(DEADLINE_S), "".join(self.lines)
        line = next((x for x in self.lines if x.strip().startswith("sandboxed-agent approve")), "")
        assert line, f"the run ended without asking:\n{''.join(self.lines)}"
        return line.split()[1:-1]  # less the program's name and "[--deny]"

    def finish(self) -> tuple[int, str]:
        if self.done is None:
            assert self.proc.stdout is not None
            out = self.proc.stdout.read()
            self.proc.wait(DEADLINE_S)
            self._reader.join(10)
            self.proc.stdout.close()
            self.proc.stderr.close()  # type: ignore[union-attr]
            self.done = (self.proc.returncode, out)
        return self.done


def check_worked_example(
    temporal_server: DevServer, model: ScriptedModelServer, two_workers: list[Any], tmp_path: Path
) -> None:
    task = "Can I still return order 12345?"
    local = cli("run", *SETUP, "--trace", str(tmp_path / "local.jsonl"), task,
                env={"OPENAI_BASE_URL": model.base_url, "HOME": str(tmp_path)})  # fmt: skip
    remote = cli("run", "--temporal", temporal_server.address, "--task-queue", "shared",
                 "--trace", str(tmp_path / "remote.jsonl"), *SETUP, task)  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert "2025-05-10" in remote.stdout
    here, there = events(tmp_path / "local.jsonl"), events(tmp_path / "remote.jsonl")
    failed = [e.get("error_message") for e in here + there if e.get("ok") is False]
    assert path_of(there) == path_of(here), failed  # a failure here: the machine's load?
    assert [e["tool"] for e in there if e["event"] == "tool_call"] == [
        "get_order_status",
        "read_file",
        "get_current_date",
    ]
    # Each call ran on one of the two workers, in its sandbox.
    identities = {f"{w.pid}@" for w in two_workers}
    for ran in (e for e in there if e["event"] == "tool_call"):
        assert any(ran["worker"].startswith(i) for i in identities), ran
        assert ran["worker_pid"] not in (None, two_workers[0].pid, two_workers[1].pid)
    # A run may name only tools its workers were started with: starting a workflow
    # must not make a worker import a module or file it was not told to.
    other = cli("run", "--temporal", temporal_server.address, "--task-queue", "shared",
                *SETUP, "--tools", "tests/temporal_tools.py", task)  # fmt: skip
    assert other.returncode == 1, other.stderr
    assert "loads no tools from" in other.stderr and other.stderr.count("\n") == 2, other.stderr


def test_worked_example_and_its_eval_on_two_workers(
    temporal_server: DevServer, model: ScriptedModelServer, two_workers: list[Any], tmp_path: Path
) -> None:
    """One test, two promises, to start the two workers once: the worked example
    answers and traces as a local run, and an eval of 21 runs reports as a local eval
    with its calls run on both workers."""
    check_worked_example(temporal_server, model, two_workers, tmp_path)
    check_eval(temporal_server, two_workers, tmp_path)


def check_eval(temporal_server: DevServer, two_workers: list[Any], tmp_path: Path) -> None:
    local = cli("eval", str(SUITE), "--scripted", "--runs", "1", "--json",
                "--out", str(tmp_path / "local"), env={"HOME": str(tmp_path)})  # fmt: skip
    remote = cli("eval", str(SUITE), "--temporal", temporal_server.address, "--task-queue",
                 "shared", "--runs", "3", "--json", "--out", str(tmp_path / "remote"))  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    here, there = json.loads(local.stdout), json.loads(remote.stdout)
    assert there["overall"]["runs"] == 21
    assert there["passed"] and here["passed"]
    for mine, theirs in zip(there["cases"], here["cases"], strict=True):
        assert mine["name"] == theirs["name"]
        for r in mine["results"]:
            assert (r["reason"], r["answer"], r["steps"], r["tokens"], r["failures"]) == (
                theirs["results"][0]["reason"],
                theirs["results"][0]["answer"],
                theirs["results"][0]["steps"],
                theirs["results"][0]["tokens"],
                [],
            )
    seen: set[str] = set()
    for trace in (tmp_path / "remote" / "traces").glob("*.jsonl"):
        seen |= {e["worker"] for e in events(trace) if e["event"] == "tool_call" and e["ok"]}
    owners = {w.pid: w for w in two_workers}
    assert {int(s.split("@")[0]) for s in seen} == set(owners), seen


def test_tool_calls_go_to_the_tool_queue_only(
    temporal_server: DevServer, model: ScriptedModelServer, tmp_path: Path
) -> None:
    """An orchestrator (`--serve agent`: runs and model calls, no sandbox) and a sandbox
    host (`--serve tools`: tool calls only, no model endpoint); every call runs on the
    host named by `--tool-queue`."""
    agent = start_worker(temporal_server, "--serve", "agent", "--task-queue", "orchestrate",
                         "--base-url", model.base_url, *SETUP)  # fmt: skip
    tools = start_worker(temporal_server, "--serve", "tools", "--tool-queue", "sandboxes", *SETUP)
    try:
        done = cli("run", "--temporal", temporal_server.address, "--task-queue", "orchestrate",
                   "--tool-queue", "sandboxes", "--trace", str(tmp_path / "t.jsonl"), *SETUP,
                   "Can I still return order 12345?")  # fmt: skip
    finally:
        agent.stop()
        tools.stop()
    assert done.returncode == 0 and "2025-05-10" in done.stdout, done.stderr
    calls = [e for e in events(tmp_path / "t.jsonl") if e["event"] == "tool_call"]
    assert len(calls) == 3 and all(e["ok"] for e in calls), calls
    assert {e["worker"].split("@")[0] for e in calls} == {str(tools.pid)}


def test_approval_by_signal_after_the_asking_worker_is_killed(
    temporal_server: DevServer, model: ScriptedModelServer, tmp_path: Path
) -> None:
    first = worker(temporal_server, model, "approval")
    second: WorkerProcess | None = None
    run = Follower(temporal_server, "approval", REFUND, tmp_path / "trace.jsonl")
    try:
        command = run.approve_command()  # approve RUN_ID CALL_ID --temporal ADDRESS
        first.kill()  # SIGKILL: it keeps nothing, tells nobody
        second = worker(temporal_server, model, "approval")
        # A decision for other arguments than the pending call's is refused...
        wrong = cli(*command, "--sha256", "0" * 64)
        assert wrong.returncode == 1, wrong.stderr
        assert wrong.stderr.splitlines()[-1].startswith("sandboxed-agent: refused"), wrong.stderr
        # ...and the run goes on waiting for the right one, which the new worker takes.
        right = cli(*command)
        assert right.returncode == 0, right.stderr
        status, _out = run.finish()
        assert status == 0, "".join(run.lines)
    finally:
        run.proc.kill()
        run.finish()
        first.kill()
        if second is not None:
            second.stop()
    trace = events(tmp_path / "trace.jsonl")
    calls = [e for e in trace if e["event"] == "tool_call"]
    # The suite's script looks the order up first; only the refund waits for a person.
    assert [(e["tool"], e["approval"], e["ok"]) for e in calls] == [
        ("get_order_status", "not_required", True),
        ("issue_refund", "approved_signal", True),
    ]
    refund = calls[-1]
    assert refund["approved_sha256"] == refund["arguments_sha256"]
    assert refund["worker"].startswith(f"{second.pid}@")
    assert trace[-1]["event"] == "run_ended" and trace[-1]["reason"] == "answer"


LOST_POLICY = """
[tools.step_once]
timeout_s = 60
idempotent = false
data_dir = "once"
"""


def test_a_call_lost_with_its_worker_runs_again_only_when_approved(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    """`step_once` (not idempotent) says it started, then hangs; its worker is killed.
    The run asks before running it again, and runs it on the other worker after a yes."""
    policy = tmp_path / "policy.toml"
    policy.write_text(LOST_POLICY)
    setup = ("--policy", str(policy), "--tools", "tests/temporal_tools.py")
    script = [call(("step_once", {})), say("It shipped.")]
    with ScriptedModelServer(script) as model:
        base = ("--task-queue", "lost", "--base-url", model.base_url, *setup)
        first = start_worker(temporal_server, *base)
        second: WorkerProcess | None = None
        run = Follower(temporal_server, "lost", "Ship it.", tmp_path / "trace.jsonl", setup)
        try:
            started = tmp_path / "once" / "started"
            while not started.exists():  # the tool's own signal that it is running
                assert run.proc.poll() is None, "".join(run.lines)
                time.sleep(0.05)
            first.kill()
            second = start_worker(temporal_server, *base)
            command = run.approve_command()
            assert "in flight when its worker went away" in "".join(run.lines)
            assert (tmp_path / "once" / "runs").read_text().count("run") == 1  # not re-run
            assert cli(*command).returncode == 0
            status, out = run.finish()
        finally:
            run.proc.kill()
            run.finish()
            first.kill()
            if second is not None:
                second.stop()
    assert status == 0 and out.strip() == "It shipped.", "".join(run.lines)
    calls = [e for e in events(tmp_path / "trace.jsonl") if e["event"] == "tool_call"]
    assert [(e["approval"], e["ok"], e["output"]) for e in calls] == [
        ("approved_signal", True, "finished on run 2")
    ]
    assert calls[0]["worker"].startswith(f"{second.pid}@")


def test_a_server_restart_mid_run_loses_nothing(model: ScriptedModelServer, tmp_path: Path) -> None:
    """Its own server, restarted (same port, same SQLite file) while a run waits."""
    pytest.importorskip("temporalio")
    server = DevServer(tmp_path / "own.sqlite")
    server.start()
    w: WorkerProcess | None = None
    run: Follower | None = None
    try:
        w = worker(server, model, "restart")
        run = Follower(server, "restart", REFUND, tmp_path / "trace.jsonl")
        command = run.approve_command()
        server.restart()
        denied = cli(*command, "--deny")  # the pending call is still there to decide
        assert denied.returncode == 0, denied.stderr
        status, _out = run.finish()
    finally:
        if run is not None:
            run.proc.kill()
            run.finish()
        if w is not None:
            w.stop()
        server.stop()
    assert status == 0, "".join(run.lines)
    trace = events(tmp_path / "trace.jsonl")
    assert [e["event"] for e in trace] == ["run_started", "model_call", "tool_call",
                                           "model_call", "tool_call", "model_call",
                                           "run_ended"]  # fmt: skip
    assert trace[2]["tool"] == "get_order_status" and trace[2]["ok"]
    call = trace[4]
    assert (call["tool"], call["approval"], call["ok"], call["error_kind"]) == (
        "issue_refund",
        "denied_signal",
        False,
        "denied",
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "--temporal", "nowhere", "x"], "--temporal nowhere: give HOST:PORT"),
        (["approve", "run-1", "call_1"], "--temporal HOST:PORT is required"),
        (["approve", "r", "c", "--temporal", "h:1", "--sha256", "xyz"], "--sha256 xyz"),
        (["run", "--temporal", "h:1", "--resume", "r"], "--resume: a run on Temporal"),
        (["eval", str(SUITE), "--temporal", "h:1", "--scripted"], "the model is the workers'"),
        (["run", "--temporal", "h:1", "--embeddings-model", "m", "x"], "embeddings_model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    assert main(args) == 2  # in-process: no server is reached for any of these
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_the_plans_policy_answers_everything_the_loop_asks_of_a_policy() -> None:
    """The workflow drives `agent.loop` with a `PlanPolicy`: a policy question the
    loop learns (a new `[tools] after` key) must reach the plan too, or every run on
    Temporal fails its workflow task, and Temporal retries that task for ever."""
    import re

    from agent.integrations.temporal_plan import PlanPolicy, RunPlan
    from policies import parse_policy

    asked = set(re.findall(r"self\.policy\.(\w+)", (ROOT / "agent" / "loop.py").read_text()))
    missing = sorted(name for name in asked if not hasattr(PlanPolicy, name) and name != "source")
    assert not missing, f"PlanPolicy lacks {missing}"
    text = '[tools.issue_refund]\nafter = ["get_order_status"]\nidempotent = true\n'
    policy = parse_policy(text, "p.toml", ROOT)
    plan = PlanPolicy(RunPlan.of(policy, ["issue_refund", "calculate"], [], "task"))
    for tool in ("issue_refund", "calculate"):
        assert plan.after(tool) == policy.after(tool)
        assert plan.idempotent(tool) == policy.idempotent(tool)
        assert plan.requires_approval(tool) == policy.requires_approval(tool)


def test_the_workflow_agent_sets_up_everything_the_agent_does() -> None:
    """`_WorkflowAgent` builds itself instead of calling `Agent.__init__`: each
    attribute the agent's constructor sets must be set there too (`_answered` was not,
    and every run on Temporal failed its workflow task)."""
    import re

    source = (ROOT / "agent" / "loop.py").read_text()
    init = source[source.index("    def __init__(\n        self,\n        pool: Pool") :]
    init = init[: init.index("\n    def ")]
    wanted = set(re.findall(r"self\.(\w+)(?:: [^=]+)? = ", init))
    workflow_source = (ROOT / "agent" / "integrations" / "temporal_workflows.py").read_text()
    have = set(re.findall(r"self\.(\w+)(?:: [^=]+)? = ", workflow_source))
    assert wanted - have - {"pool", "model", "approver"} == set()
