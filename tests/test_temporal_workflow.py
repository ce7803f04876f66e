"""The agent loop as a Temporal workflow, on a real dev server with real worker processes.

The model is the scripted loopback one (`agent.replay`), serving the worked example's
suite (and this module's own tasks) to every worker at once (`agent.evals.scripted`);
the runs start with the real command line (`sandboxed-agent run|approve|eval
--temporal`). Each test tries to break one promise: the same answer and trace as a
local run; tool calls only on the tool queue's host; a call lost with its worker not
run again without a person's yes, and approval by signal after the worker that asked
is gone, bound to the arguments by hash; a restart of the server loses nothing.

Worker processes take seconds to start: the module starts its own at once, and shares
them between the tests that kill none (each test with a queue of its own where it
needs one); the test that kills workers starts its own.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from conftest import shared_process
from temporal_server import (
    ROOT,
    DevServer,
    WorkerProcess,
    agent_env,
    agent_program,
    start_worker,
    start_workers,
    temporal_server,
    wait_until,
)

from agent.evals.scripted import suite_script
from agent.evals.suite import load_suite
from agent.replay import ScriptedModelServer, Step, call, fail, say

__all__ = ["temporal_server"]  # the fixture, used by name

SUITE = ROOT / "evals" / "worked_example.toml"
POLICY = ROOT / "evals" / "worked_example_policy.toml"
SETUP = ("--policy", str(POLICY), "--tools", "tools.demo")
REFUND = "Refund order 12345 in full, now."
SHIP = "Ship it."
CRASH = "Crash it."
TWICE = "Refund order 12345 in two parts."
SLOW = "Slow it."
EMBED = "Embed a fact."
EMBEDDINGS = "toy-embed"
"""The embeddings model the module's workers serve (`--allow-model`)."""
TEST_TOOLS = ("--tools", "tests/temporal_tools.py")
DEADLINE_S = 180.0
SHARED = "shared"
"""The module's two workers' queue (workflows, model calls and tool calls)."""


KEYS = "Can I still return order 12345, please?"
KEYS_POLICY = """
load_tools = ["tools.demo"]

[defaults.settings]
today = "2025-05-11"

[tools.check_return_eligibility]
decides = true

[tools.get_order_status]
then = ["get_current_date"]
then_when = ["return"]

[run]
max_iterations = 8
call_tools_first = true
parallel_tool_calls = true
required_as = "tool_choice"
max_output_tokens = 77
offer = ["get_order_status", "get_current_date", "check_return_eligibility"]
"""
"""A run's policy unlike its workers' (the worked example's: one call a turn, a
required call as a schema, 512 tokens): the run's decides."""


def keys_model(request: dict[str, Any]) -> Step:
    """A server that refuses every tool_choice (HTTP 400 naming it); three lookups, then
    an answer that turns the deciding tool's "No:" round, and again when told so."""
    if request.get("tool_choice"):
        return fail(400, f"Unsupported tool_choice: {request['tool_choice']!r}")
    messages = request["messages"]
    if not request.get("tools"):  # asked for the answer, tools off
        if "Your answer begins with" in str(messages[-1].get("content")):
            return say("Sure, it can still go back.")
        return say("Yes, you can still return it.")
    lookups = [
        call(("get_order_status", {"order_id": "12345"})),
        call(("get_current_date", {})),
        call(("check_return_eligibility", {"order_id": "12345"})),
    ]
    return lookups[sum(1 for m in messages if m.get("role") == "tool")]


def _play(suite: Any) -> Any:
    """The suite's scripts by task, and this module's own tasks."""
    own = {
        SHIP: [call(("step_once", {})), say("It shipped.")],
        CRASH: [call(("crash_binding", {"word": {"text": "a"}})), say("It never gets here.")],
        EMBED: [call(("embedded", {"text": "a fact"})), say("Embedded.")],
        SLOW: [call(("slow_binding", {"word": {"text": "a"}})), say("It never gets here.")],
        TWICE: [
            call(("issue_refund", {"order_id": "12345", "amount": 10.0})),
            call(("issue_refund", {"order_id": "12345", "amount": 20.0})),
            say("Both parts are refunded."),
        ],
    }

    def play(request: dict[str, Any]) -> Step:
        items = [m for m in request.get("messages") or [] if isinstance(m, dict)]
        user = next((m for m in items if m.get("role") == "user"), None)
        if user and user.get("content") == KEYS:
            return keys_model(request)
        steps = own.get(str(user.get("content"))) if user else None
        if steps is None:
            return suite(request)
        return steps[sum(1 for m in items if m.get("role") == "assistant")]

    return play


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(_play(suite_script(load_suite(SUITE)))) as server:
        yield server


class Workers:
    """The module's workers: two that serve everything on `SHARED`, and a sandbox host
    (`--serve tools`) on a queue of its own, all started at once."""

    def __init__(self, server: DevServer, model: ScriptedModelServer) -> None:
        self.tool_queue = f"sandboxes-{uuid.uuid4().hex[:8]}"
        shared = ("--task-queue", SHARED, "--base-url", model.base_url)
        shared += ("--allow-model", EMBEDDINGS)
        *self.both, self.tools = start_workers(
            server,
            (*shared, *SETUP, *TEST_TOOLS),
            (*shared, *SETUP, *TEST_TOOLS),
            ("--serve", "tools", "--tool-queue", self.tool_queue, *SETUP),
        )
        for w in self.all:
            shared_process(w.pid)

    @property
    def all(self) -> list[WorkerProcess]:
        return [*self.both, self.tools]


@pytest.fixture(scope="module")
def workers(temporal_server: DevServer, model: ScriptedModelServer) -> Iterator[Workers]:
    made = Workers(temporal_server, model)
    try:
        yield made
    finally:
        for w in made.all:
            w.stop()


def finished(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`sandboxed-agent ARGS` as `cli` does, in this process (no interpreter to start:
    seconds on a loaded machine), for the commands that only talk to the server."""
    from agent.cli import main

    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, out, err)


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


def ask_server(server: DevServer, question: Any) -> Any:
    """`await question(client)` with a client of the server."""

    async def main() -> Any:
        return await question(await server.client())

    return asyncio.run(main())


def running_on(server: DevServer, run_id: str) -> str:
    """The identity of the worker running the run's pending activity."""

    async def question(client: Any) -> str:
        found = await client.get_workflow_handle(run_id).describe()
        return found.raw_description.pending_activities[0].last_worker_identity

    return ask_server(server, question)


def last_task_worker(server: DevServer, run_id: str) -> str:
    """The identity of the worker that completed the run's last workflow task."""

    async def question(client: Any) -> str:
        history = await client.get_workflow_handle(run_id).fetch_history()
        done = [e for e in history.events if e.HasField("workflow_task_completed_event_attributes")]
        return done[-1].workflow_task_completed_event_attributes.identity

    return ask_server(server, question)


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
            env=agent_env(),
        )
        self.lines: list[str] = []
        self.done: tuple[int, str] | None = None
        self._asked = threading.Event()
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("sandboxed-agent: run ") and " on " in line:
                self._started.set()
            if line.strip().startswith("sandboxed-agent approve "):
                self._asked.set()
        self._started.set()
        self._asked.set()

    def run_id(self) -> str:
        """The workflow's id, once the run has started it."""
        assert self._started.wait(DEADLINE_S), "".join(self.lines)
        line = next((x for x in self.lines if x.startswith("sandboxed-agent: run ")), "")
        assert line, f"the run never started:\n{''.join(self.lines)}"
        return line.split()[2]

    def approve_command(self) -> list[str]:
        """The command the run printed for its waiting call, once it is waiting."""
        assert self._asked.wait(DEADLINE_S), "".join(self.lines)
        line = next((x for x in self.lines if x.strip().startswith("sandboxed-agent approve")), "")
        assert line, f"the run ended without asking:\n{''.join(self.lines)}"
        return line.split()[1:]  # less the program's name

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

    def close(self) -> None:
        self.proc.kill()
        self.finish()


def test_worked_example_and_its_eval_on_two_workers(
    temporal_server: DevServer, model: ScriptedModelServer, workers: Workers, tmp_path: Path
) -> None:
    """The worked example answers and traces as a local run; an eval of 21 runs reports
    as a local eval, its calls run on both workers; a run naming tools its workers were
    not started with fails. The local baselines and the runs on Temporal run at once."""
    task = "Can I still return order 12345?"
    address = temporal_server.address
    home = {"HOME": str(tmp_path)}
    other_tools = tmp_path / "other_tools.py"
    other_tools.write_text("from tools import tool\n\n@tool\ndef other() -> str:\n    return 'x'\n")
    launch = agent_program
    started = {
        "local": launch("run", *SETUP, "--trace", str(tmp_path / "local.jsonl"), task,
                        env={"OPENAI_BASE_URL": model.base_url} | home),
        "remote": launch("run", "--temporal", address, "--task-queue", SHARED,
                         "--trace", str(tmp_path / "remote.jsonl"), *SETUP, task),
        "other": launch("run", "--temporal", address, "--task-queue", SHARED,
                        *SETUP, "--tools", str(other_tools), task),
        "local_eval": launch("eval", str(SUITE), "--scripted", "--runs", "1", "--json",
                             "--out", str(tmp_path / "local"), env=home),
        "remote_eval": launch("eval", str(SUITE), "--temporal", address, "--task-queue", SHARED,
                              "--runs", "3", "--json", "--out", str(tmp_path / "remote")),
    }  # fmt: skip
    done = {name: finished(proc) for name, proc in started.items()}

    local, remote = done["local"], done["remote"]
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
    identities = {f"{w.pid}@" for w in workers.both}
    for ran in (e for e in there if e["event"] == "tool_call"):
        assert any(ran["worker"].startswith(i) for i in identities), ran
        assert ran["worker_pid"] not in (None, *(w.pid for w in workers.both))
    # A run may name only tools its workers were started with: starting a workflow
    # must not make a worker import a module or file it was not told to.
    other = done["other"]
    assert other.returncode == 1, other.stderr
    assert "loads no tools from" in other.stderr and other.stderr.count("\n") == 2, other.stderr

    local_eval, remote_eval = done["local_eval"], done["remote_eval"]
    assert local_eval.returncode == 0, local_eval.stderr
    assert remote_eval.returncode == 0, remote_eval.stderr
    mine, theirs = json.loads(remote_eval.stdout), json.loads(local_eval.stdout)
    assert mine["overall"]["runs"] == 21
    assert mine["passed"] and theirs["passed"]
    for case, baseline in zip(mine["cases"], theirs["cases"], strict=True):
        assert case["name"] == baseline["name"]
        first = baseline["results"][0]
        for r in case["results"]:
            assert (r["reason"], r["answer"], r["steps"], r["tokens"], r["failures"]) == (
                first["reason"],
                first["answer"],
                first["steps"],
                first["tokens"],
                [],
            )
    seen: set[str] = set()
    for trace in (tmp_path / "remote" / "traces").glob("*.jsonl"):
        seen |= {e["worker"] for e in events(trace) if e["event"] == "tool_call" and e["ok"]}
    assert {int(s.split("@")[0]) for s in seen} == {w.pid for w in workers.both}, seen


def test_tool_calls_go_to_the_tool_queue_only(
    temporal_server: DevServer,
    workers: Workers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Runs orchestrated on the module's two workers, which serve tool calls too, but
    on their own queue; with `--tool-queue` every call runs on the sandbox host
    (`--serve tools`: tool calls only, no model endpoint) that polls it."""
    queues = ("--task-queue", SHARED, "--tool-queue", workers.tool_queue)
    trace = ("--trace", str(tmp_path / "t.jsonl"))
    task = "Can I still return order 12345?"
    done = in_process(
        capsys, "run", "--temporal", temporal_server.address, *queues, *trace, *SETUP, task
    )
    assert done.returncode == 0 and "2025-05-10" in done.stdout, done.stderr
    calls = [e for e in events(tmp_path / "t.jsonl") if e["event"] == "tool_call"]
    assert len(calls) == 3 and all(e["ok"] for e in calls), calls
    assert {e["worker"].split("@")[0] for e in calls} == {str(workers.tools.pid)}


def asked(requests: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What each request asked of the model, less the ids that differ between runs."""
    return [
        (
            r.get("tool_choice"),
            sorted(t["function"]["name"] for t in r.get("tools") or []),
            r.get("parallel_tool_calls", "absent"),
            r.get("max_tokens"),
            "response_format" in r,
            [(m["role"], m.get("content")) for m in r["messages"]],
        )
        for r in requests
    ]


def test_the_runs_policy_keys_behave_as_in_a_local_run(
    temporal_server: DevServer,
    model: ScriptedModelServer,
    workers: Workers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same run locally and on Temporal, under a policy unlike the workers': the
    model is asked exactly the same things in the same order (`then`/`then_when`,
    `call_tools_first`, `parallel_tool_calls`, `required_as`, `max_output_tokens`, the
    `decides` steer naming the verdict, the answer that contradicts it sent back and,
    turned round again, replaced by the tool's own result, a refused tool_choice asked
    again without it and not sent again, whichever worker makes the next call)."""
    policy = tmp_path / "keys.toml"
    policy.write_text(KEYS_POLICY)
    setup = ("--policy", str(policy))
    with ScriptedModelServer(keys_model) as here:
        local = agent_program(
            "run", *setup, "--trace", str(tmp_path / "local.jsonl"), KEYS,
            env={"OPENAI_BASE_URL": here.base_url, "HOME": str(tmp_path)},
        )  # fmt: skip
        remote = in_process(
            capsys, "run", "--temporal", temporal_server.address, "--task-queue", SHARED,
            "--trace", str(tmp_path / "remote.jsonl"), *setup, KEYS,
        )  # fmt: skip
        done = finished(local)
        local_requests = list(here.requests)
    assert done.returncode == 0, done.stderr
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == done.stdout
    # Turned round twice: the answer is the deciding tool's own result, marked so.
    assert remote.stdout.startswith("No: order 12345 can no longer be returned")
    assert "check_return_eligibility's own result" in remote.stdout
    theirs = [r for r in model.requests if r["messages"][1]["content"] == KEYS]
    assert asked(theirs) == asked(local_requests)
    everything = ["check_return_eligibility", "get_current_date", "get_order_status"]
    assert [a[:5] for a in asked(theirs)] == [
        ("required", everything, True, 77, False),  # call_tools_first: refused,
        (None, everything, True, 77, False),  # so asked again without it
        (None, ["get_current_date"], True, 77, False),  # then: alone, not "required" again
        (None, everything, True, 77, False),
        ("none", everything, True, 77, False),  # decided: refused,
        (None, [], "absent", 77, False),  # so asked without tools
        (None, [], "absent", 77, False),  # the contradiction, tools off
    ]
    assert 'begin your answer with "No", as it does' in theirs[5]["messages"][-1]["content"]
    assert 'Your answer begins with "Yes"' in theirs[6]["messages"][-1]["content"]
    calls = [e for e in events(tmp_path / "remote.jsonl") if e["event"] == "model_call"]
    mine = [e for e in events(tmp_path / "local.jsonl") if e["event"] == "model_call"]
    seen = [(c["steered"], c["tool_choice_refused"], c["follow_ups"]) for c in calls]
    assert seen == [(c["steered"], c["tool_choice_refused"], c["follow_ups"]) for c in mine]
    ends = [e for e in events(tmp_path / "remote.jsonl") if e["event"] == "run_ended"]
    assert ends[0]["answered_from"] == "check_return_eligibility"
    assert seen == [
        (None, "required", []),
        (None, "required", ["get_current_date"]),
        (None, None, []),
        ("decided", "none", []),
        ("contradiction", "none", []),
    ]


LOST_POLICY = """
[tools.step_once]
timeout_s = 60
idempotent = false
data_dir = "once"
"""


def test_a_lost_call_and_the_worker_that_asked_gone_approval_by_signal(
    temporal_server: DevServer,
    model: ScriptedModelServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`step_once` (not idempotent) says it started, then hangs; the worker running it
    is SIGKILLed. The run does not run it again but asks a person; the worker that
    asked is SIGKILLed too. A decision for other arguments is refused; the right one is
    taken by the last worker standing, which runs the call again."""
    policy = tmp_path / "policy.toml"
    policy.write_text(LOST_POLICY)
    setup = ("--policy", str(policy), "--tools", "tests/temporal_tools.py")
    queue = f"lost-{uuid.uuid4().hex[:8]}"
    base = ("--task-queue", queue, "--base-url", model.base_url, *setup)
    # The run first: it waits on the server for the workers, which take longer to start.
    run = Follower(temporal_server, queue, SHIP, tmp_path / "trace.jsonl", setup)
    started: list[WorkerProcess] = []
    try:
        started += start_workers(temporal_server, base, base)
        run_id = run.run_id()
        begun = tmp_path / "once" / "started"  # the tool's own signal that it is running
        wait_until(lambda: begun.exists() or run.proc.poll() is not None, "the tool's start")
        assert run.proc.poll() is None, "".join(run.lines)
        by = {f"{w.pid}@": w for w in started}
        runner = next(
            w for prefix, w in by.items() if running_on(temporal_server, run_id).startswith(prefix)
        )
        assert runner.kill() == -signal.SIGKILL  # mid-call: it keeps nothing, tells nobody
        started.append(start_worker(temporal_server, *base, ready=False))
        command = run.approve_command()
        assert "in flight when its worker went away" in "".join(run.lines)
        assert (tmp_path / "once" / "runs").read_text().count("run") == 1  # not re-run
        started[-1].wait_ready()
        asker_id = last_task_worker(temporal_server, run_id)
        alive = [w for w in started if w.proc.poll() is None]
        asker = next(w for w in alive if asker_id.startswith(f"{w.pid}@"))
        assert asker.kill() == -signal.SIGKILL
        (survivor,) = [w for w in alive if w is not asker]
        # A decision for other arguments than the pending call's is refused...
        wrong = in_process(capsys, *command, "--sha256", "0" * 64)
        assert wrong.returncode == 1, wrong.stderr
        assert wrong.stderr.splitlines()[-1].startswith("sandboxed-agent: refused"), wrong.stderr
        # ...and the run goes on waiting for the right one, which the survivor takes.
        right = in_process(capsys, *command)
        assert right.returncode == 0, right.stderr
        status, out = run.finish()
    finally:
        run.close()
        for w in started:
            w.stop()
    assert status == 0 and out.strip() == "It shipped.", "".join(run.lines)
    calls = [e for e in events(tmp_path / "trace.jsonl") if e["event"] == "tool_call"]
    assert [(e["approval"], e["ok"], e["output"]) for e in calls] == [
        ("approved_signal", True, "finished on run 2")
    ]
    assert calls[0]["approved_sha256"] == calls[0]["arguments_sha256"]
    assert calls[0]["worker"].startswith(f"{survivor.pid}@")


def test_approval_always_by_signal_and_the_run_followed_again(
    temporal_server: DevServer,
    workers: Workers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`approve --always` is the terminal's `[a]lways`: yes to the call it names (by its
    hash) and to every later call of that tool in the run, which no longer waits. The
    `run` command is stopped while the run waits; the run goes on, and `run --resume
    RUN_ID` follows it again to its end: its answer, exit status and trace."""
    run = Follower(temporal_server, SHARED, TWICE, tmp_path / "first.jsonl", setup=())
    try:
        command = run.approve_command()
        run_id = run.run_id()
    finally:
        run.close()  # the `run` command stopped, the run waiting
    both = in_process(capsys, *command, "--always", "--deny")
    assert both.returncode == 2 and "not with --deny" in both.stderr, both.stderr
    done = in_process(capsys, *command, "--always")
    assert done.returncode == 0, done.stderr
    trace = tmp_path / "trace.jsonl"
    where = ("run", "--temporal", temporal_server.address)
    again = in_process(capsys, *where, "--resume", run_id, "--trace", str(trace))
    assert again.returncode == 0 and again.stdout == "Both parts are refunded.\n", again.stderr
    assert "waits for a person's decision" not in again.stderr
    calls = [e for e in events(trace) if e["event"] == "tool_call"]
    assert [(e["approval"], e["output"]) for e in calls] == [
        ("approved_always", "Refunded 10.00 USD for order 12345"),
        ("approved_always", "Refunded 20.00 USD for order 12345"),
    ]
    assert all(e["approved_sha256"] == e["arguments_sha256"] for e in calls)
    unknown = in_process(capsys, *where, "--resume", "run-none")
    assert unknown.returncode == 1 and "--resume run-none: no such run" in unknown.stderr
    assert unknown.stderr.count("\n") == 1, unknown.stderr


def test_an_exception_in_the_workflow_fails_the_run_in_one_line(
    temporal_server: DevServer, workers: Workers, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tool whose arguments' validator raises makes the workflow's own code raise (it
    binds the model's arguments): the run fails, saying so in one line, exit 1 (as a
    local run's internal failure), rather than Temporal retrying the workflow task for
    ever and `run --temporal` waiting on it. In-process: the command's own code."""
    from agent.cli import main

    # The built-in policy (the worked example's offers its own tools only).
    status = main(["run", "--temporal", temporal_server.address, "--task-queue", SHARED,
                   "--tools", str(ROOT / "tests" / "temporal_tools.py"), CRASH])  # fmt: skip
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 1 and out == "", err
    assert len(lines) == 2 and lines[0].startswith("sandboxed-agent: run "), lines
    assert "failed: RuntimeError in the workflow on a worker" in lines[1], lines
    assert "the validator of crash_binding crashed" in lines[1], lines
    run_id = lines[0].split()[2]

    async def stack_trace(client: Any) -> str:
        history = await client.get_workflow_handle(run_id).fetch_history()
        (failed,) = [
            e for e in history.events if e.HasField("workflow_execution_failed_event_attributes")
        ]
        return failed.workflow_execution_failed_event_attributes.failure.stack_trace

    assert "crash_binding crashed" in ask_server(temporal_server, stack_trace)  # as it says


def test_a_workflow_task_that_blocks_every_time_ends_the_run_in_one_line(
    temporal_server: DevServer, workers: Workers, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tool whose argument validator sleeps 3 s blocks the workflow's code past
    Temporal's 2 s: the workflow task fails as a deadlock and is retried, and blocks
    again, for ever. The followed run is ended (terminated) once its retry blocked too,
    in one line, exit 1, rather than `run --temporal` waiting on it."""
    from agent.cli import main

    status = main(["run", "--temporal", temporal_server.address, "--task-queue", SHARED,
                   "--tools", str(ROOT / "tests" / "temporal_tools.py"), SLOW])  # fmt: skip
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 1 and out == "", err
    assert len(lines) == 2 and lines[0].startswith("sandboxed-agent: run "), lines
    assert "failed and was ended: its workflow task blocked a worker for more than 2 s" in lines[1]
    assert "TMPRL1101" in lines[1], lines
    run_id = lines[0].split()[2]

    async def status_of(client: Any) -> str:
        return (await client.get_workflow_handle(run_id).describe()).status.name

    assert ask_server(temporal_server, status_of) == "TERMINATED"


def test_an_argument_is_embedded_on_the_workers_as_locally(
    temporal_server: DevServer,
    workers: Workers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`[run] embeddings_model`: a tool's `embed` argument is embedded by a worker (its
    endpoint and key) and reaches the tool in its call's settings, as in a local run;
    an embeddings model the workers do not serve ends the run in one line."""
    base = ("run", "--temporal", temporal_server.address, "--task-queue", SHARED, *TEST_TOOLS)
    trace = tmp_path / "t.jsonl"
    done = in_process(capsys, *base, "--embeddings-model", EMBEDDINGS, "--trace", str(trace), EMBED)
    assert done.returncode == 0 and done.stdout == "Embedded.\n", done.stderr
    (ran,) = [e for e in events(trace) if e["event"] == "tool_call"]
    assert (ran["tool"], ran["output"]) == ("embedded", "64 values")  # the toy's dimensions
    refused = in_process(capsys, *base, "--embeddings-model", "other-embed", EMBED)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 2, refused.stderr
    assert "embeds with toy-embed" in lines[1] and "not other-embed" in lines[1], lines


def test_a_model_the_workers_do_not_serve_is_refused_in_one_line(
    temporal_server: DevServer, workers: Workers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever starts a run names its model; the workers spend their key only on their
    policy's model (and `--allow-model`'s): any other ends the run at once, one line."""
    from agent.cli import main

    task = "Can I still return order 12345?"
    status = main(["run", "--temporal", temporal_server.address, "--task-queue", SHARED,
                   *SETUP, "--model", "gpt-not-served", task])  # fmt: skip
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 1 and out == "", err
    assert len(lines) == 2 and lines[0].startswith("sandboxed-agent: run "), lines
    assert (
        "this worker serves the models gpt-4o-mini, toy-embed " in lines[1]
        and "not gpt-not-served" in lines[1]
    )
    assert "--allow-model gpt-not-served" in lines[1], lines


def test_a_server_restart_mid_run_loses_nothing(
    temporal_server: DevServer,
    workers: Workers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The server restarted (same port, same SQLite file) while a run waits for a
    person: the decision still reaches the run, through the same workers."""
    run = Follower(temporal_server, SHARED, REFUND, tmp_path / "trace.jsonl")
    try:
        command = run.approve_command()
        temporal_server.restart()
        shared_process(temporal_server.proc.pid)  # the module's server, as before
        denied = in_process(capsys, *command, "--deny")  # the pending call is still there to decide
        assert denied.returncode == 0, denied.stderr
        status, _out = run.finish()
    finally:
        run.close()
    assert status == 0, "".join(run.lines)
    trace = events(tmp_path / "trace.jsonl")
    # The order, then the policy and the date it calls for (`then`), then the refund.
    assert [e["event"] for e in trace] == ["run_started", "model_call", "tool_call",
                                           "model_call", "tool_call", "tool_call",
                                           "model_call", "tool_call", "model_call",
                                           "run_ended"]  # fmt: skip
    assert trace[2]["tool"] == "get_order_status" and trace[2]["ok"]
    assert trace[3]["follow_ups"] == ["get_current_date", "read_file"]
    call = trace[7]
    assert (call["tool"], call["approval"], call["ok"], call["error_kind"]) == (
        "issue_refund",
        "denied_signal",
        False,
        "denied",
    )
    assert all(w.proc.poll() is None for w in workers.all)  # they rode the restart out


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "--temporal", "nowhere", "x"], "--temporal nowhere: give HOST:PORT"),
        (["approve", "run-1", "call_1"], "--temporal HOST:PORT is required"),
        (["approve", "r", "c", "--temporal", "h:1", "--sha256", "xyz"], "--sha256 xyz"),
        (["run", "--temporal", "h:1", "--resume", "r", "x"], "or --resume RUN_ID, not both"),
        (["eval", str(SUITE), "--temporal", "h:1", "--scripted"], "the model is the workers'"),
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


@pytest.mark.parametrize("command", ["run", "eval", "worker"])
def test_a_policy_with_mcp_servers_is_refused_on_temporal_in_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its servers run beside a local run: a run, an eval or a worker on Temporal with
    such a policy is refused, naming the key, rather than running without them."""
    from agent.cli import main

    policy = tmp_path / "mcp.toml"
    policy.write_text('[mcp_servers.files]\ncommand = ["python", "-c", "pass"]\n')
    where = ("--temporal", "127.0.0.1:9", "--policy", str(policy))
    argv = {
        "run": ["run", *where, "x"],
        "eval": ["eval", str(SUITE), *where],
        "worker": ["worker", *where],
    }[command]
    assert main(argv) == 2  # in-process: refused before anything connects
    err = capsys.readouterr().err
    assert "the policy's [mcp_servers] (files) run beside a local run only" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


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


def test_every_run_key_the_model_client_reads_travels_with_the_model_call() -> None:
    """A `[run]` key that changes how the model is asked (what `runner.model_client`
    reads) must travel in `ModelRequest`: else a run on Temporal asks as its workers'
    policy says, and the run's own key is silently ignored."""
    import inspect
    import re

    from agent.integrations.temporal_contracts import ModelRequest
    from agent.runner import model_client
    from policies import RunPolicy

    read = set(re.findall(r"policy\.run\.(\w+)", inspect.getsource(model_client)))
    missing = sorted(read - {"model", "base_url"} - set(ModelRequest.model_fields))
    assert not missing, f"ModelRequest lacks {missing}"
    run = RunPolicy(parallel_tool_calls=False, required_as="json_schema", max_output_tokens=9)
    wanted = {name: getattr(run, name) for name in ModelRequest.model_fields}
    assert ModelRequest.of(run).model_dump() == wanted


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
