"""The Temporal worker on a real dev server (loopback), with real worker processes.

The calls are driven by a tiny workflow of this module's own (`OneToolCall`, one tool
activity), run by a Temporal worker inside the test process; the activities run in `sandboxed-agent
worker` subprocesses. Kill points come from the tools themselves (a file in their
data_dir, a grandchild), never from a sleep. A worker takes seconds to start: one is
shared by the tests that do not kill it (`Shared`); those that do start their own.
"""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from conftest import shared_process, sleepers, unique_marker
from pydantic import BaseModel
from temporal_server import (
    DevServer,
    WorkerProcess,
    agent_program,
    free_port,
    start_worker,
    temporal_server,
    until,
)
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from agent.binding import bind
from agent.cli import main
from agent.integrations.temporal_contracts import (
    MODEL_ACTIVITY,
    NON_RETRYABLE,
    RUN_ERROR,
    TOOL_ACTIVITY,
    WORKER_SHUTDOWN,
    ModelCallInput,
    ModelCallOutput,
    ModelRequest,
    ToolCallInput,
    ToolCallOutput,
    lost_worker,
    model_activity_options,
    tool_activity_options,
)
from agent.replay import ScriptedModelServer, Step, say
from policies import Policy, load_policy
from tools import Registry

__all__ = ["temporal_server"]  # the fixture, used by name

TOOLS = str(Path(__file__).with_name("temporal_tools.py"))
ALSO_SERVED = "also-served"
"""A model the module's worker serves besides its policy's (`--allow-model`)."""
HEARTBEAT_S = 2.0
"""Short, so that a killed worker is noticed (and its call retried) within seconds."""
WAIT_S = 120.0
T = TypeVar("T")

POLICY = """
[tools.hang]
timeout_s = 1.5
[tools.hang_long]
timeout_s = 60
[tools.step_again]
timeout_s = 60
idempotent = true
data_dir = "again"
[tools.step_once]
timeout_s = 60
idempotent = false
data_dir = "once"
[tools.finish_soon]
timeout_s = 60
data_dir = "soon"
[tools.calculate]
requires_approval = true
"""


MODEL_SCRIPT = [say("Hello"), say("Also"), Step(status=401, error="invalid key")]
"""What the module's model answers, in order (only the model-call test asks it)."""


class OneCall(BaseModel):
    call: ToolCallInput
    queue: str
    start_to_close_s: float
    heartbeat_s: float
    attempts: int


class Outcome(BaseModel):
    output: ToolCallOutput | None = None
    lost: bool = False
    failure: str = ""


@workflow.defn(sandboxed=False)
class OneToolCall:
    """One tool activity with the options `tool_activity_options` gave, and how it ended."""

    @workflow.run
    async def run(self, one: OneCall) -> Outcome:
        try:
            output = await workflow.execute_activity(
                TOOL_ACTIVITY,
                one.call,
                result_type=ToolCallOutput,
                task_queue=one.queue,
                start_to_close_timeout=timedelta(seconds=one.start_to_close_s),
                heartbeat_timeout=timedelta(seconds=one.heartbeat_s),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=200),
                    maximum_attempts=one.attempts,
                    non_retryable_error_types=list(NON_RETRYABLE),
                ),
            )
        except ActivityError as exc:
            cause = exc.cause
            kind = getattr(cause, "type", None) or type(cause).__name__
            return Outcome(lost=lost_worker(exc), failure=f"{kind}: {cause}")
        return Outcome(output=output)


class ModelCalls(BaseModel):
    calls: list[ModelCallInput]
    queue: str
    start_to_close_s: float
    attempts: int


@workflow.defn(sandboxed=False)
class TwoModelCalls:
    """Model activities one after the other; each one's answer, or how it failed."""

    @workflow.run
    async def run(self, asked: ModelCalls) -> list[str]:
        seen = []
        for one in asked.calls:
            try:
                turn = await workflow.execute_activity(
                    MODEL_ACTIVITY,
                    one,
                    result_type=ModelCallOutput,
                    task_queue=asked.queue,
                    start_to_close_timeout=timedelta(seconds=asked.start_to_close_s),
                    heartbeat_timeout=timedelta(seconds=HEARTBEAT_S),
                    retry_policy=RetryPolicy(
                        maximum_attempts=asked.attempts,
                        non_retryable_error_types=list(NON_RETRYABLE),
                    ),
                )
            except ActivityError as exc:
                seen.append(f"{getattr(exc.cause, 'type', '')}: {exc.cause}")
                continue
            seen.append(f"{turn.message['content']} ({turn.usage['output_tokens']} tokens)")
        return seen


class Shared:
    """The module's policy file, and its worker: `--serve all` on a queue of its own
    (tool calls and model calls, the model a scripted loopback one, its key a secret
    of the module's), shared by the tests that do not kill it; the last one stops it
    with SIGTERM. Tests that kill workers start their own, on queues of their own."""

    def __init__(self, server: DevServer, home: Path) -> None:
        self.server = server
        self.policy_file = home / "policy.toml"
        self.policy_file.write_text(POLICY)
        self.policy: Policy = load_policy(str(self.policy_file))
        self.queue = f"tools-{uuid.uuid4().hex[:8]}"
        self.key = f"sk-worker-{uuid.uuid4().hex}"
        self.model = ScriptedModelServer(MODEL_SCRIPT)
        self._worker: WorkerProcess | None = None

    def worker(self) -> WorkerProcess:
        """The module's worker, started on first use."""
        if self._worker is None:
            self._worker = self.start(
                "--task-queue", self.queue, "--grace", "0.5", "--allow-model", ALSO_SERVED,
                env={"OPENAI_BASE_URL": self.model.base_url, "OPENAI_API_KEY": self.key},
            )  # fmt: skip
            shared_process(self._worker.pid)
        return self._worker

    def take_worker(self) -> WorkerProcess:
        """The module's worker, now the caller's to stop (the next user starts another)."""
        worker, self._worker = self.worker(), None
        return worker

    def start(
        self, *extra: str, ready: bool = True, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        return start_worker(
            self.server,
            *("--workers", "2", "--policy", str(self.policy_file), "--tools", TOOLS, *extra),
            ready=ready,
            env=env,
        )

    def call(self, tool: str, arguments: str = "{}", queue: str = "", **fields: Any) -> OneCall:
        queue = queue or self.queue
        options = tool_activity_options(
            self.policy, tool, task_queue=queue, heartbeat_timeout_s=HEARTBEAT_S
        )
        return OneCall(
            call=ToolCallInput(
                run_id="r1", call_id=uuid.uuid4().hex, tool=tool, arguments=arguments, **fields
            ),
            queue=queue,
            start_to_close_s=options["start_to_close_timeout"].total_seconds(),
            heartbeat_s=options["heartbeat_timeout"].total_seconds(),
            attempts=options["retry_policy"].maximum_attempts,
        )

    def data(self, name: str) -> Path:
        return self.policy_file.parent / name

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        self.model.stop()


@pytest.fixture(scope="module")
def shared(temporal_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    made = Shared(temporal_server, tmp_path_factory.mktemp("worker"))
    made.model.start()
    try:
        made.worker()  # before the first test's look at what exists: its pool's files too
        yield made
    finally:
        made.close()


def drive(server: DevServer, body: Callable[[Any, str], Awaitable[T]]) -> T:
    """`body(client, workflow_queue)` with this module's workflow served in-process."""

    async def main() -> T:
        client = await server.client()
        queue = f"wf-{uuid.uuid4().hex[:8]}"
        async with Worker(
            client,
            task_queue=queue,
            workflows=[OneToolCall, TwoModelCalls],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            return await body(client, queue)

    return asyncio.run(main())


async def start_one(client: Any, queue: str, one: OneCall, name: str = "one") -> Any:
    """The module's workflow started for `one` (its handle), bounded by WAIT_S."""
    return await client.start_workflow(
        OneToolCall.run,
        one,
        id=f"{name}-{uuid.uuid4().hex}",
        task_queue=queue,
        result_type=Outcome,
        execution_timeout=timedelta(seconds=WAIT_S),
    )


async def one_call(client: Any, queue: str, one: OneCall) -> Outcome:
    return await (await start_one(client, queue, one)).result()


def run_one(server: DevServer, one: OneCall) -> Outcome:
    return drive(server, lambda client, queue: one_call(client, queue, one))


def test_the_dev_server_accepts_a_client(temporal_server: DevServer) -> None:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    async def ask() -> str:
        client = await temporal_server.client()
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        return info.server_version

    assert asyncio.run(ask())
    assert temporal_server.address.startswith("127.0.0.1:")


def test_bad_flags_and_servers_get_one_line(
    temporal_server: DevServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bad address, or bad TLS or key flags: one line, exit 2, before anything
    connects. An unreachable server, an unknown namespace, or TLS to the dev server
    (which speaks none; the TLS flags are used): one line, exit 1, as programs (their
    three processes at once)."""
    for address in ("nope", "[::1", "127.0.0.1:99999"):
        assert main(["worker", "--temporal", address, "--serve", "tools"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sandboxed-agent: "), lines
    assert main(["worker", "--temporal", "h:1", "--serve", "agent", "--tool-queue", "q"]) == 2
    capsys.readouterr()
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    address = temporal_server.address
    for flags, said in [
        (["--api-key-env", "SANDBOXED_AGENT_NO_SUCH_VAR"], "that variable is not set"),
        (["--tls-cert", str(not_pem)], "--tls-cert and --tls-key go together"),
        (["--tls-ca", str(tmp_path / "missing.pem")], "cannot read it"),
        (["--tls-ca", str(not_pem)], "not a PEM file"),
    ]:
        for argv in (
            ["worker", "--temporal", address, "--serve", "tools", *flags],
            ["approve", "run-x", "call-y", "--temporal", address, *flags],
        ):
            assert main(argv) == 2, argv
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and said in lines[0], lines
    # As programs: the Temporal client's threads must not turn exit 1 into an abort at
    # the interpreter's teardown (temporalio/sdk-python#300).
    unreachable = f"127.0.0.1:{free_port()}"
    cases = [
        (("--temporal", unreachable), f"cannot reach the Temporal server at {unreachable}"),
        (
            ("--temporal", address, "--namespace", "no-such-namespace"),
            "--namespace no-such-namespace: the server at",
        ),
        (("--temporal", address, "--tls"), "with TLS: a dev server speaks none"),
    ]
    home = {"XDG_DATA_HOME": str(tmp_path), "OPENAI_API_KEY": "sk-test"}
    running = [agent_program("worker", *flags, "--serve", "tools", env=home) for flags, _ in cases]
    for (_, said), proc in zip(cases, running, strict=True):
        _out, err = proc.communicate(timeout=WAIT_S)
        lines = err.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and said in lines[0], err


def test_a_hung_tool_is_killed_at_its_deadline_on_its_worker(shared: Shared) -> None:
    shared.worker()
    marker = unique_marker()
    outcome = run_one(shared.server, shared.call("hang", f'{{"marker": "{marker}"}}'))
    assert outcome.output is not None, outcome.failure
    assert not outcome.output.ok
    assert outcome.output.error is not None and outcome.output.error.kind == "timeout"
    assert outcome.output.error_origin == "sandbox"
    assert sleepers(marker) == []  # its daemon grandchild died with it


def test_the_worker_runs_a_tool_that_needs_approval_only_for_the_approved_arguments(
    shared: Shared,
) -> None:
    shared.worker()
    asked = '{"expression": "6*7"}'
    spec = Registry.default().get("calculate")
    approved = bind(spec, asked).sha256
    other = bind(spec, '{"expression": "6*700"}').sha256
    tries = [(None, "denied"), (other, "denied"), (approved, None)]

    async def body(client: Any, queue: str) -> list[Outcome]:
        calls = [shared.call("calculate", asked, approved_sha256=sha) for sha, _ in tries]
        return [await one_call(client, queue, one) for one in calls]

    outcomes = drive(shared.server, body)
    for (_, expected), outcome in zip(tries, outcomes, strict=True):
        assert outcome.output is not None, outcome.failure
        assert (outcome.output.error.kind if outcome.output.error else None) == expected
    assert outcomes[-1].output is not None and outcomes[-1].output.output == "42"


def test_model_calls_use_the_workers_own_key_and_models_only(shared: Shared) -> None:
    """The worker's key, which stays out of the history; its policy's model, one it
    was told to serve too (`--allow-model`), and no other: a run naming one is refused
    for good, and nothing is asked of the endpoint for it. A RunError is not retried."""
    worker = shared.worker()
    policy = load_policy(None)
    options = model_activity_options(policy, timeout_s=30)
    hello = [{"role": "user", "content": "Hi"}]
    asked = ModelCalls(
        calls=[
            ModelCallInput(messages=hello, tools=[], timeout_s=30, model=name)
            for name in (None, ALSO_SERVED, "gpt-not-served", policy.run.model)
        ],
        queue=shared.queue,
        start_to_close_s=options["start_to_close_timeout"].total_seconds(),
        attempts=options["retry_policy"].maximum_attempts,
    )

    async def body(client: Any, wf_queue: str) -> tuple[list[str], str]:
        handle = await client.start_workflow(
            TwoModelCalls.run, asked, id=f"model-{uuid.uuid4().hex}", task_queue=wf_queue
        )
        seen = await handle.result()
        return seen, (await handle.fetch_history()).to_json()

    seen, history = drive(shared.server, body)
    model = shared.model
    assert seen[:2] == ["Hello (5 tokens)", "Also (5 tokens)"], seen
    assert seen[2].startswith(f"{RUN_ERROR}: ") and "this worker serves the models " in seen[2]
    assert "not gpt-not-served: " in seen[2] and "--allow-model gpt-not-served" in seen[2]
    assert seen[3].startswith(f"{RUN_ERROR}: ") and "401" in seen[3], seen
    # Neither failure is retried by Temporal; the refused model was never asked.
    assert [r["model"] for r in model.requests] == [policy.run.model, ALSO_SERVED, policy.run.model]
    assert model.headers[0]["authorization"] == f"Bearer {shared.key}"
    assert shared.key not in history and shared.key not in worker.output


def test_model_calls_ask_as_the_runs_policy_says_and_on_the_workers_endpoint_only(
    shared: Shared,
) -> None:
    """A model call asks as the run's policy says (`ModelRequest`: here the Responses
    API, an output limit, parallel calls), not as the worker's; a tool_choice the run
    learned was refused (maybe on another worker) is not sent; a run whose policy names
    another endpoint ([run] base_url) is refused for good, the worker's never asked."""
    shared.worker()
    tools = [Registry.default().get("calculate").openai_schema]
    hello = [{"role": "user", "content": "Hi"}]
    own_way = ModelRequest(api="responses", max_output_tokens=7, parallel_tool_calls=True)
    elsewhere = "http://127.0.0.1:9/v1"
    options = model_activity_options(load_policy(None), timeout_s=30)
    asked = ModelCalls(
        calls=[
            ModelCallInput(
                messages=hello, tools=tools, timeout_s=30, tool_choice="none", request=own_way
            ),
            ModelCallInput(
                messages=hello, tools=tools, timeout_s=30, tool_choice="none", refused=["none"]
            ),
            ModelCallInput(messages=hello, tools=[], timeout_s=30, base_url=elsewhere),
        ],
        queue=shared.queue,
        start_to_close_s=options["start_to_close_timeout"].total_seconds(),
        attempts=options["retry_policy"].maximum_attempts,
    )
    shared.model.play([say("One"), say("Two")])

    async def body(client: Any, wf_queue: str) -> list[str]:
        handle = await client.start_workflow(
            TwoModelCalls.run, asked, id=f"model-{uuid.uuid4().hex}", task_queue=wf_queue
        )
        return await handle.result()

    seen = drive(shared.server, body)
    assert seen[:2] == ["One (5 tokens)", "Two (5 tokens)"], seen
    assert seen[2].startswith(f"{RUN_ERROR}: "), seen
    assert f"names the model endpoint {elsewhere} ([run] base_url)" in seen[2]
    model = shared.model
    assert [r.rsplit("/", 1)[-1] for r in model.routes] == ["responses", "completions"]
    first, second = model.requests
    assert (first["max_output_tokens"], first["parallel_tool_calls"]) == (7, True)
    assert first["tool_choice"] == "none" and first["tools"]
    assert "tools" not in second and "tool_choice" not in second  # "none": no tools instead
    assert "max_tokens" not in second  # the worker's own way: its policy sets none


def test_a_worker_killed_mid_call_retries_only_the_idempotent_call_elsewhere(
    shared: Shared,
) -> None:
    """Both calls run on a first worker (their files say so); a second starts; the first
    is SIGKILLed. The idempotent call is run again there and finishes; the other is
    lost, run once only, so that the workflow can ask before running it again. Then
    SIGTERM lets a call the second worker runs finish within its grace."""
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    first = shared.start("--task-queue", queue)
    second: WorkerProcess | None = None
    calls = {tool: shared.call(tool, queue=queue) for tool in ("step_again", "step_once")}
    soon = shared.call("finish_soon", '{"seconds": 2}', queue=queue)

    async def body(client: Any, wf_queue: str) -> tuple[dict[str, Outcome], Outcome]:
        nonlocal second
        handles = {
            tool: await start_one(client, wf_queue, one, "kill") for tool, one in calls.items()
        }
        for name in ("again", "once"):  # only the first worker polls: they run there
            started = shared.data(name) / "started"  # the tool's own signal that it runs
            await until(started.exists, f"{name}'s start")
        # From this thread: it dies with its starter. A long grace for the end.
        second = shared.start("--task-queue", queue, "--grace", "60", ready=False)
        await asyncio.to_thread(second.wait_ready)
        assert first.kill() == -signal.SIGKILL
        outcomes = {tool: await h.result() for tool, h in handles.items()}
        graced = await start_one(client, wf_queue, soon, "grace")
        await until((shared.data("soon") / "started").exists, "finish_soon's start")
        assert await asyncio.to_thread(second.stop) == 0, second.output
        return outcomes, await graced.result()

    try:
        outcomes, graced = drive(shared.server, body)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert second is not None
    again, once = outcomes["step_again"], outcomes["step_once"]
    assert again.output is not None, again.failure
    assert again.output.ok and again.output.output == "finished on run 2", again.output
    assert again.output.worker.startswith(f"{second.pid}@")
    assert once.output is None and once.lost, once
    assert shared.data("once").joinpath("runs").read_text() == "run\n"  # once, on the first
    assert graced.output is not None and graced.output.output == "finished", graced
    # The idempotent one and the graced one; not the lost one.
    assert "stopped (SIGTERM) after 2 calls; no worker left" in second.output


DRIFTING = """
from pydantic import BaseModel, field_validator
from tools import tool

class Word(BaseModel):
    text: str

    @field_validator("text")
    @classmethod
    def louder(cls, value: str) -> str:
        return value + "!"

@tool
def drift(word: Word) -> str:
    return word.text
"""


def test_a_run_cannot_set_what_the_workers_policy_sets_nor_run_what_does_not_bind(
    tmp_path: Path,
) -> None:
    """Whoever can start a workflow chooses a call's settings: only those a local agent
    adds itself pass; the tool host's policy keeps the rest (here `max_read_bytes`).
    Arguments that bind refuses (a repeated key, a validator that changes what it
    validates) cannot carry an approval, and a tool that needs one must not run on
    them: they were handed to the pool, which validated them once and ran the tool."""
    from temporalio.testing import ActivityEnvironment

    from agent.integrations.temporal_activities import SandboxActivities
    from policies import parse_policy
    from sandbox import Pool

    source = tmp_path / "drifting.py"
    source.write_text(DRIFTING)
    registry = Registry.default()
    registry.load(str(source))
    policy = parse_policy("[tools.drift]\nrequires_approval = true\n", "p.toml", tmp_path)
    drift = ToolCallInput(
        run_id="r", call_id="c", tool="drift", arguments='{"word": {"text": "a"}}'
    )
    calc = ToolCallInput(
        run_id="r", call_id="c", tool="calculate", arguments='{"expression": "6*7"}'
    )
    foreign: list[dict[str, Any]] = [
        {"max_read_bytes": 10**9},
        {"memory_namespace": "a", "root": "/"},
        {"memory_namespace": 7},
    ]
    with Pool(policy, registry=registry, size=1, spares=1) as pool:
        activities = SandboxActivities(policy, pool=pool)

        def run(call: ToolCallInput) -> ToolCallOutput:
            return asyncio.run(ActivityEnvironment().run(activities.tool_call, call))

        unbound = run(drift)
        refused = [run(calc.model_copy(update={"settings": s})) for s in foreign]
        ran = run(calc.model_copy(update={"settings": {"memory_namespace": "alice"}}))
    assert not unbound.ok and unbound.error is not None, unbound
    assert unbound.error.kind == "bad_arguments"
    assert "differ from what is approved" in unbound.error.message
    for out in refused:
        assert not out.ok and out.error is not None and out.error.kind == "denied", out
    assert ran.ok and ran.output == "42", ran


def test_sigterm_kills_a_call_past_its_grace_and_leaves_nothing(shared: Shared) -> None:
    """Last: it stops the module's worker (`--grace 0.5`) while a call hangs."""
    worker = shared.take_worker()
    marker = unique_marker()
    one = shared.call("hang_long", f'{{"marker": "{marker}"}}')
    tree = {worker.pid} | {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}

    async def body(client: Any, queue: str) -> Outcome:
        handle = await start_one(client, queue, one, "term")
        await until(lambda: sleepers(marker), "the tool's grandchild")  # it is running
        tree.update(p.pid for p in psutil.Process(worker.pid).children(recursive=True))
        assert await asyncio.to_thread(worker.stop) == 0, worker.output
        assert sleepers(marker) == []
        return await handle.result()

    outcome = drive(shared.server, body)
    assert re.search(r"stopped \(SIGTERM\) after \d+ calls?; no worker left", worker.output)
    assert "Traceback" not in worker.output  # an expected failure is one line, not a bug
    assert outcome.lost and outcome.failure.startswith(WORKER_SHUTDOWN), outcome.failure
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == [], alive  # the worker, its pool, its calls: all gone
