"""The approval wait on Temporal, where the person's decision and the wait's timeout
come in the same workflow task: a worker that polls only after both (none was up
while the timer fired and the signal came), or a person who answers as the time runs
out. The signal handler has then accepted the decision, and `wait_condition` may
still raise TimeoutError. The decision must be the outcome, taken once: left behind,
it answered the next wait on the same call id (the re-run of a call whose worker went
away) without the person being asked.

The same-task order is made here by standing in for `workflow.wait_condition` (the
real signal handler runs, then the timeout is raised): on a dev server it needs the
run's workers stopped and started again around the timer, which costs seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from agent.approval import Decision
from agent.binding import BoundCall
from agent.integrations import temporal_workflows as flows
from agent.integrations.temporal_plan import ApprovalSignal

CALL = BoundCall(tool="issue_refund", args={"order": 1}, canonical='{"order":1}', sha256="ab" * 32)


def _agent(flow: flows.AgentWorkflow) -> flows._WorkflowAgent:
    """The workflow's agent with what `_decide` reads (its constructor needs a run)."""
    agent = object.__new__(flows._WorkflowAgent)
    agent.flow = flow
    agent.plan = SimpleNamespace(yes=False, approve=[], ask=True, approval_wait_s=60.0)  # type: ignore[assignment]
    agent._always = set()
    agent._waited = 0.0
    return agent


def _waits(monkeypatch: pytest.MonkeyPatch, wait: Callable[..., object]) -> None:
    monkeypatch.setattr(flows.workflow, "wait_condition", wait)
    monkeypatch.setattr(flows.workflow, "time", lambda: 0.0)


@pytest.mark.parametrize("approve", [True, False])
def test_a_decision_in_the_same_task_as_the_timeout_is_the_outcome_once(
    monkeypatch: pytest.MonkeyPatch, approve: bool
) -> None:
    flow = flows.AgentWorkflow()
    agent = _agent(flow)

    async def decided_then_timed_out(condition: Callable[[], bool], timeout: object) -> None:
        flow.approval(ApprovalSignal(call_id="c1", approve=approve, sha256=CALL.sha256))
        raise TimeoutError

    _waits(monkeypatch, decided_then_timed_out)
    how = "approved_signal" if approve else "denied_signal"
    assert asyncio.run(agent._decide("c1", CALL)) == Decision(approve, how, CALL.sha256)
    assert (flow.decisions, flow.pending, flow.refusals) == ({}, {}, [])

    async def nobody_answers(condition: Callable[[], bool], timeout: object) -> None:
        assert not condition(), "an earlier decision answers this wait"
        raise TimeoutError

    # The call's worker went away mid-call: its re-run waits for a person again.
    _waits(monkeypatch, nobody_answers)
    assert asyncio.run(agent._decide("c1", CALL)) == Decision(False, "denied_timeout", CALL.sha256)
    assert flow.decisions == {} and agent._always == set()


def test_settle_always_takes_the_decision_out() -> None:
    always = ApprovalSignal(call_id="c1", approve=True, sha256=CALL.sha256, always=True)
    decisions = {"c1": always, "c2": always.model_copy(update={"call_id": "c2"})}
    assert flows.settle(decisions, "c1", CALL.sha256) == (
        Decision(True, "approved_always", CALL.sha256),
        True,
    )
    assert list(decisions) == ["c2"]  # another call's decision stays for its own wait
    assert flows.settle(decisions, "c1", CALL.sha256) == (
        Decision(False, "denied_timeout", CALL.sha256),
        False,
    )
