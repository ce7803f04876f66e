"""Cancellation and async: a cancelled call's worker and tree die at once and it returns
nothing; `acall` leaves the event loop running and stays within the pool; `async def`
tools run in the worker under their deadline; `Agent.arun` cancels like `acall`."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import HOSTILE, shared, sleepers, unique_marker

from agent.audit import Trace, read_trace
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, call, say
from policies import parse_policy
from sandbox import CallCancelled, CancelToken, Limits, Pool
from tools import Registry

ASYNC_TOOLS = str(Path(__file__).with_name("async_tools.py"))
HUNG = Limits(timeout_s=60)
"""Far past the test: a call that ends must have been cancelled, not timed out."""
BACKENDS = ["asyncio"] + (["trio"] if importlib.util.find_spec("trio") else [])


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry.default()
    registry.load(HOSTILE)
    registry.load(ASYNC_TOOLS)
    return registry


@pytest.fixture(scope="module")
def pool(registry: Registry) -> Iterator[Pool]:
    """One pool for the tests that need nothing of their own: each leaves it as it was."""
    with Pool(registry=registry, size=2) as pool:
        yield shared(pool)


def wait_for_sleeper(marker: str, call_ended: Callable[[], bool]) -> None:
    """Until the tool's grandchild runs: the signal that the call is in flight."""
    while not sleepers(marker):
        assert not call_ended(), "the call ended before its grandchild was seen"
        time.sleep(0.02)


async def await_sleeper(marker: str, call_ended: Callable[[], bool]) -> None:
    """The same from the event loop: it only gets here if the loop keeps running."""
    while not sleepers(marker):
        assert not call_ended(), "the call ended before its grandchild was seen"
        await anyio.sleep(0.02)


def test_a_cancel_from_another_thread_kills_the_tree_and_the_call_returns_nothing(
    registry: Registry, process_tree: str
) -> None:
    marker = unique_marker()
    token = CancelToken()
    outcome: list[Any] = []

    def caller() -> None:
        try:
            outcome.append(
                pool.call(
                    "double_fork", {"marker": marker, "hang": True}, limits=HUNG, cancel=token
                )
            )
        except CallCancelled as exc:
            outcome.append(exc)

    with Pool(registry=registry, size=1, process_tree=process_tree) as pool:
        thread = threading.Thread(target=caller)
        thread.start()
        wait_for_sleeper(marker, lambda: bool(outcome))
        assert token.cancel() == 1
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], CallCancelled), outcome
        assert sleepers(marker) == []
        # The token stays cancelled: a later call with it does not start.
        with pytest.raises(CallCancelled):
            pool.call("calculate", {"expression": "1+1"}, cancel=token)
        assert pool.call("calculate", {"expression": "6*7"}).output == "42"


@pytest.mark.parametrize("how", ["task.cancel", "cancel scope"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelling_an_acall_kills_the_tree_while_the_loop_runs(
    pool: Pool, how: str, backend: str
) -> None:
    if how == "task.cancel" and backend != "asyncio":
        pytest.skip("task.cancel is asyncio's own")
    marker = unique_marker()
    outcome: list[Any] = []

    async def acall() -> None:
        outcome.append(
            await pool.acall("double_fork", {"marker": marker, "hang": True}, limits=HUNG)
        )

    async def main() -> None:
        if how == "task.cancel":
            task = asyncio.create_task(acall())
            await await_sleeper(marker, task.done)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            async with anyio.create_task_group() as group:
                group.start_soon(acall)
                await await_sleeper(marker, lambda: bool(outcome))
                group.cancel_scope.cancel()
        # Reaped before the cancellation reached us, not merely dying.
        assert sleepers(marker) == []

    anyio.run(main, backend=backend)
    assert outcome == []  # no result, late or otherwise
    assert pool.call("calculate", {"expression": "6*7"}).output == "42"


def test_many_acalls_run_at_most_the_pool_size_at_once(pool: Pool) -> None:
    async def main() -> list[Any]:
        return await asyncio.gather(*(pool.acall("span", {"seconds": 0.3}) for _ in range(6)))

    results = asyncio.run(main())
    spans = [tuple(json.loads(r.output)) for r in results]
    assert len(spans) == 6
    # At each start, count the calls running then (the workers' own clock readings).
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= pool.size == 2


def test_an_async_tool_runs_in_the_worker_and_its_deadline_kills_it(pool: Pool) -> None:
    marker = unique_marker()
    assert pool.call("async_add", {"a": 2, "b": 40}).output == "42"
    result = asyncio.run(
        pool.acall("async_spawn_and_hang", {"marker": marker}, limits=Limits(timeout_s=1))
    )
    assert result.error is not None and result.error.kind == "timeout", result
    assert sleepers(marker) == []


POLICY = """
[run]
model = "scripted"
max_retries = 0
"""


def test_arun_answers_and_its_cancellation_kills_the_calls_in_flight(
    registry: Registry, tmp_path: Path
) -> None:
    marker = unique_marker()
    policy = parse_policy(POLICY + "[tools.double_fork]\ntimeout_s = 60\n", "t.toml", tmp_path)
    script = [
        call(("calculate", {"expression": "6*7"})),
        say("42"),
        call(("double_fork", {"marker": marker, "hang": True})),
        say("never asked for"),
    ]
    trace_path = tmp_path / "trace.jsonl"
    with ScriptedModelServer(script) as server, Pool(policy, registry=registry, size=2) as pool:
        model = ModelClient(model="scripted", base_url=server.base_url, api_key="none")
        trace = Trace(trace_path)
        agent = Agent(pool, policy, model, trace=trace)

        async def cancelled_run(run: Callable[[], Awaitable[Any]]) -> None:
            task = asyncio.create_task(run())
            await await_sleeper(marker, task.done)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert sleepers(marker) == []

        async def main() -> None:
            answered = await agent.arun("What is 6*7?")
            assert answered.ok and answered.answer == "42"
            await cancelled_run(lambda: agent.arun("Hang, please"))

        try:
            asyncio.run(main())
        finally:
            trace.close()
        assert len(server.requests) == 3  # nothing asked the model after the cancel
    ends = [e for e in read_trace(trace_path) if e["event"] == "run_ended"]
    assert [(e["reason"], e["message"]) for e in ends] == [
        ("answer", "answered"),
        ("interrupted", "cancelled"),
    ]


def test_cancels_at_every_point_of_a_call_leave_nothing_and_no_late_result(pool: Pool) -> None:
    """Twelve calls on two workers, each leaving a setsid grandchild: some cancelled at
    once (waiting for a thread or a slot), some once their grandchild runs (mid-call,
    or racing a call that is about to answer), some never. Whatever point each cancel
    hit, the awaiting task sees its result or the cancellation, never both, and
    nothing of any call survives."""
    markers = [unique_marker() for _ in range(12)]
    outcomes: dict[int, Any] = {}

    async def one(i: int) -> None:
        hang = i % 4 in (0, 1)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                if i % 4 == 0:
                    scope.cancel()
                elif i % 4 in (1, 3):
                    group.start_soon(cancel_when_running, scope, markers[i])
                outcomes[i] = await pool.acall("double_fork", {"marker": markers[i], "hang": hang})
                group.cancel_scope.cancel()
            return
        assert i not in outcomes, (i, outcomes[i])
        outcomes[i] = "cancelled"

    async def cancel_when_running(scope: anyio.CancelScope, marker: str) -> None:
        while not sleepers(marker):
            await anyio.sleep(0.01)
        scope.cancel()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for i in range(len(markers)):
                group.start_soon(one, i)

    anyio.run(main)
    assert [m for m in markers if sleepers(m)] == []
    assert pool.call("calculate", {"expression": "6*7"}).output == "42"
    for i, outcome in outcomes.items():
        if i % 4 in (0, 1):  # hung: only a cancel ends them
            assert outcome == "cancelled", (i, outcome)
        elif i % 4 == 2:  # never cancelled
            assert outcome != "cancelled" and outcome.ok, (i, outcome)
        else:  # raced its own answer
            assert outcome == "cancelled" or outcome.ok, (i, outcome)
