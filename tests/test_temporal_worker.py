"""The Temporal worker on a real dev server (loopback), with real worker processes.

The calls are driven by a tiny workflow of this module's own (`OneToolCall`, one tool
activity), run by a Temporal worker inside the test process; the tool activities run
in `sandboxed-agent worker --serve tools` subprocesses, as on a sandbox host. Kill
points come from the tools themselves (a file in their data_dir), never from a sleep.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from conftest import agent_cli, sleepers, unique_marker
from pydantic import BaseModel
from temporal_server import DevServer, WorkerProcess, free_port, start_worker, temporal_server
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
    """Model activities one after the other; the answers, then how the first failure ended."""

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
                break
            seen.append(f"{turn.message['content']} ({turn.usage['output_tokens']} tokens)")
        return seen


class Setup:
    """A policy file, its tool queue, and the worker processes of one test."""

    def __init__(self, server: DevServer, tmp_path: Path) -> None:
        self.server = server
        self.policy_file = tmp_path / "policy.toml"
        self.policy_file.write_text(POLICY)
        self.policy: Policy = load_policy(str(self.policy_file))
        self.queue = f"tools-{uuid.uuid4().hex[:8]}"
        self.workers: list[WorkerProcess] = []

    def worker(self, *extra: str, ready: bool = True) -> WorkerProcess:
        worker = start_worker(
            self.server,
            *("--serve", "tools", "--tool-queue", self.queue, "--workers", "2"),
            *("--policy", str(self.policy_file), "--tools", TOOLS, *extra),
            ready=ready,
        )
        self.workers.append(worker)
        return worker

    def call(self, tool: str, arguments: str = "{}", **fields: Any) -> OneCall:
        options = tool_activity_options(
            self.policy, tool, task_queue=self.queue, heartbeat_timeout_s=HEARTBEAT_S
        )
        return OneCall(
            call=ToolCallInput(
                run_id="r1", call_id=uuid.uuid4().hex, tool=tool, arguments=arguments, **fields
            ),
            queue=self.queue,
            start_to_close_s=options["start_to_close_timeout"].total_seconds(),
            heartbeat_s=options["heartbeat_timeout"].total_seconds(),
            attempts=options["retry_policy"].maximum_attempts,
        )

    def data(self, name: str) -> Path:
        return self.policy_file.parent / name

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()


@pytest.fixture
def setup(temporal_server: DevServer, tmp_path: Path) -> Any:
    made = Setup(temporal_server, tmp_path)
    yield made
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


def run_one(server: DevServer, one: OneCall) -> Outcome:
    async def body(client: Any, queue: str) -> Outcome:
        return await client.execute_workflow(
            OneToolCall.run,
            one,
            id=f"one-{uuid.uuid4().hex}",
            task_queue=queue,
            result_type=Outcome,
            execution_timeout=timedelta(seconds=WAIT_S),
        )

    return drive(server, body)


async def wait_for_file(path: Path) -> None:
    """The tool's own signal that it runs (a file it creates); polled, with a deadline."""
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.05)


def test_the_dev_server_accepts_a_client(temporal_server: DevServer) -> None:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    async def ask() -> str:
        client = await temporal_server.client()
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        return info.server_version

    assert asyncio.run(ask())
    assert temporal_server.address.startswith("127.0.0.1:")


def test_bad_and_unreachable_addresses_get_one_line(
    temporal_server: DevServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for address in ("nope", "[::1", "127.0.0.1:99999"):
        assert main(["worker", "--temporal", address, "--serve", "tools"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sandboxed-agent: "), lines
    assert main(["worker", "--temporal", "h:1", "--serve", "agent", "--tool-queue", "q"]) == 2
    # As programs: the Temporal client's threads must not turn exit 1 into an abort at
    # the interpreter's teardown (temporalio/sdk-python#300).
    unreachable = f"127.0.0.1:{free_port()}"
    for flags, said in [
        (("--temporal", unreachable), f"cannot reach the Temporal server at {unreachable}"),
        (
            ("--temporal", temporal_server.address, "--namespace", "no-such-namespace"),
            "--namespace no-such-namespace: the server at",
        ),
    ]:
        done = agent_cli("worker", *flags, "--serve", "tools", home=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and said in lines[0], done.stderr


def test_tls_and_api_key_flags_are_checked_and_used(
    temporal_server: DevServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Bad TLS or key flags are one line, exit 2, before anything connects; good ones
    are used: TLS to the dev server (which speaks none) fails as TLS, naming it."""
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    for flags, said in [
        (["--api-key-env", "SANDBOXED_AGENT_NO_SUCH_VAR"], "that variable is not set"),
        (["--tls-cert", str(not_pem)], "--tls-cert and --tls-key go together"),
        (["--tls-ca", str(tmp_path / "missing.pem")], "cannot read it"),
        (["--tls-ca", str(not_pem)], "not a PEM file"),
    ]:
        address = temporal_server.address
        for argv in (
            ["worker", "--temporal", address, "--serve", "tools", *flags],
            ["approve", "run-x", "call-y", "--temporal", address, *flags],
        ):
            assert main(argv) == 2, argv
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and said in lines[0], lines
    done = agent_cli(
        "worker", "--temporal", temporal_server.address, "--serve", "tools", "--tls", home=tmp_path
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "with TLS: a dev server speaks none" in lines[0], lines


def test_a_hung_tool_is_killed_at_its_deadline_on_its_worker(setup: Setup) -> None:
    setup.worker()
    marker = unique_marker()
    outcome = run_one(setup.server, setup.call("hang", f'{{"marker": "{marker}"}}'))
    assert outcome.output is not None, outcome.failure
    assert not outcome.output.ok
    assert outcome.output.error is not None and outcome.output.error.kind == "timeout"
    assert outcome.output.error_origin == "sandbox"
    assert sleepers(marker) == []  # its daemon grandchild died with it


def test_the_worker_runs_a_tool_that_needs_approval_only_for_the_approved_arguments(
    setup: Setup,
) -> None:
    setup.worker()
    asked = '{"expression": "6*7"}'
    spec = Registry.default().get("calculate")
    approved = bind(spec, asked).sha256
    other = bind(spec, '{"expression": "6*700"}').sha256
    for sha, expected in [(None, "denied"), (other, "denied"), (approved, None)]:
        outcome = run_one(setup.server, setup.call("calculate", asked, approved_sha256=sha))
        assert outcome.output is not None, outcome.failure
        assert (outcome.output.error.kind if outcome.output.error else None) == expected
    assert outcome.output.output == "42"


def test_a_worker_killed_mid_call_retries_only_the_idempotent_call_elsewhere(
    setup: Setup,
) -> None:
    """Both calls run on a first worker (their files say so); a second starts; the first
    is SIGKILLed. The idempotent call is run again there and finishes; the other is
    lost, run once only, so that the workflow can ask before running it again."""
    first = setup.worker()
    calls = {tool: setup.call(tool) for tool in ("step_again", "step_once")}

    async def body(client: Any, queue: str) -> tuple[dict[str, Outcome], WorkerProcess]:
        handles = {
            tool: await client.start_workflow(
                OneToolCall.run,
                one,
                id=f"kill-{uuid.uuid4().hex}",
                task_queue=queue,
                result_type=Outcome,
                execution_timeout=timedelta(seconds=WAIT_S),
            )
            for tool, one in calls.items()
        }
        for name in ("again", "once"):  # only the first worker polls: they run there
            await wait_for_file(setup.data(name) / "started")
        second = setup.worker(ready=False)  # from this thread: it dies with its starter
        await asyncio.to_thread(second.wait_ready)
        assert first.kill() == -signal.SIGKILL
        return {tool: await h.result() for tool, h in handles.items()}, second

    outcomes, second = drive(setup.server, body)
    again, once = outcomes["step_again"], outcomes["step_once"]
    assert again.output is not None, again.failure
    assert again.output.ok and again.output.output == "finished on run 2", again.output
    assert again.output.worker.startswith(f"{second.pid}@")
    assert once.output is None and once.lost, once
    assert setup.data("once").joinpath("runs").read_text() == "run\n"  # once, on the first
    assert second.stop() == 0
    assert "after 1 call;" in second.output  # the idempotent one, not the other


def test_sigterm_lets_a_running_call_finish_within_its_grace(setup: Setup) -> None:
    worker = setup.worker("--grace", "60")
    one = setup.call("finish_soon", '{"seconds": 2}')

    async def body(client: Any, queue: str) -> Outcome:
        handle = await client.start_workflow(
            OneToolCall.run,
            one,
            id=f"grace-{uuid.uuid4().hex}",
            task_queue=queue,
            result_type=Outcome,
            execution_timeout=timedelta(seconds=WAIT_S),
        )
        await wait_for_file(setup.data("soon") / "started")
        assert await asyncio.to_thread(worker.stop) == 0, worker.output
        return await handle.result()

    outcome = drive(setup.server, body)
    assert outcome.output is not None and outcome.output.output == "finished", outcome
    assert "stopped (SIGTERM) after 1 call; no worker left" in worker.output


def test_sigterm_kills_a_call_past_its_grace_and_leaves_nothing(setup: Setup) -> None:
    worker = setup.worker("--grace", "0.5")
    marker = unique_marker()
    one = setup.call("hang_long", f'{{"marker": "{marker}"}}')

    async def body(client: Any, queue: str) -> Outcome:
        handle = await client.start_workflow(
            OneToolCall.run,
            one,
            id=f"term-{uuid.uuid4().hex}",
            task_queue=queue,
            result_type=Outcome,
            execution_timeout=timedelta(seconds=WAIT_S),
        )
        deadline = time.monotonic() + WAIT_S
        while not sleepers(marker):  # the tool's grandchild: it is running
            assert time.monotonic() < deadline, "the tool never started"
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(worker.stop) == 0, worker.output
        assert sleepers(marker) == []
        return await handle.result()

    outcome = drive(setup.server, body)
    assert "stopped (SIGTERM) after 1 call; no worker left" in worker.output
    assert "Traceback" not in worker.output  # an expected failure is one line, not a bug
    assert outcome.lost and outcome.failure.startswith(WORKER_SHUTDOWN), outcome.failure


def test_model_calls_use_the_workers_own_key_which_stays_out_of_the_history(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    key = f"sk-worker-{uuid.uuid4().hex}"
    queue = f"agent-{uuid.uuid4().hex[:8]}"
    script = [say("Hello"), Step(status=401, error="invalid key")]
    with ScriptedModelServer(script) as model:
        worker = start_worker(
            temporal_server,
            *("--serve", "agent", "--task-queue", queue),
            env={"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": key},
        )
        policy = load_policy(None)
        options = model_activity_options(policy, timeout_s=30)
        hello = [{"role": "user", "content": "Hi"}]
        asked = ModelCalls(
            calls=[ModelCallInput(messages=hello, tools=[], timeout_s=30)] * 2,
            queue=queue,
            start_to_close_s=options["start_to_close_timeout"].total_seconds(),
            attempts=options["retry_policy"].maximum_attempts,
        )

        async def body(client: Any, wf_queue: str) -> tuple[list[str], str]:
            handle = await client.start_workflow(
                TwoModelCalls.run, asked, id=f"model-{uuid.uuid4().hex}", task_queue=wf_queue
            )
            seen = await handle.result()
            return seen, (await handle.fetch_history()).to_json()

        seen, history = drive(temporal_server, body)
        worker.stop()
    assert seen[0] == "Hello (5 tokens)"
    assert seen[1].startswith(f"{RUN_ERROR}: ") and "401" in seen[1], seen
    assert len(model.requests) == 2  # a RunError is not retried by Temporal
    assert model.headers[0]["authorization"] == f"Bearer {key}"
    assert key not in history and key not in worker.output


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


def test_a_call_needing_approval_whose_arguments_do_not_bind_never_runs(tmp_path: Path) -> None:
    """Arguments that bind refuses (a repeated key, a validator that changes what it
    validates) cannot carry an approval, and a tool that needs one must not run on
    them: they were handed to the pool, which validated them once and ran the tool."""
    from temporalio.testing import ActivityEnvironment

    from agent.integrations.temporal_activities import SandboxActivities
    from policies import parse_policy
    from sandbox import Pool

    source = tmp_path / "drifting.py"
    source.write_text(DRIFTING)
    registry = Registry()
    registry.load(str(source))
    policy = parse_policy("[tools.drift]\nrequires_approval = true\n", "p.toml", tmp_path)
    call = ToolCallInput(run_id="r", call_id="c", tool="drift", arguments='{"word": {"text": "a"}}')
    with Pool(policy, registry=registry, size=1, spares=1) as pool:
        activities = SandboxActivities(policy, pool=pool)
        out = asyncio.run(ActivityEnvironment().run(activities.tool_call, call))
    assert not out.ok and out.error is not None, out
    assert out.error.kind == "bad_arguments" and "differ from what is approved" in out.error.message


@pytest.mark.parametrize(
    "settings",
    [{"max_read_bytes": 10**9}, {"memory_namespace": "a", "root": "/"}, {"memory_namespace": 7}],
)
def test_a_run_cannot_set_what_the_workers_policy_sets(settings: dict[str, object]) -> None:
    """Whoever can start a workflow chooses a call's settings: only those a local agent
    adds itself pass; the tool host's policy keeps the rest (here `max_read_bytes`)."""
    from temporalio.testing import ActivityEnvironment

    from agent.integrations.temporal_activities import SandboxActivities
    from policies import load_policy
    from sandbox import Pool

    policy = load_policy(None)
    call = ToolCallInput(
        run_id="r",
        call_id="c",
        tool="calculate",
        arguments='{"expression": "6*7"}',
        settings=settings,
    )
    allowed = call.model_copy(update={"settings": {"memory_namespace": "alice"}})
    with Pool(policy, registry=Registry.default(), size=1, spares=1) as pool:
        activities = SandboxActivities(policy, pool=pool)
        refused = asyncio.run(ActivityEnvironment().run(activities.tool_call, call))
        ran = asyncio.run(ActivityEnvironment().run(activities.tool_call, allowed))
    assert not refused.ok and refused.error is not None, refused
    assert refused.error.kind == "denied", refused
    assert ran.ok and ran.output == "42", ran
