"""What a client gives an agent run on Temporal, and what it gets back.

    plan = RunPlan.of(policy, registry, sources, task="Can I ...?", approve=["refund"])
    handle = await client.start_workflow(RUN_WORKFLOW, plan, id=run_id, task_queue=q)

The client's policy decides the run: its `[run]` budgets, which tools need approval,
which are idempotent, each one's timeout. They travel in the plan (and so in the
workflow's history), so a replay on any worker decides as the first run did. The
tools themselves are named by their sources (`--tools`, `load_tools`); every worker
loads the same ones to bind and validate arguments. Each worker's own policy sets the
limits a tool runs under, and its environment holds the model's key.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from policies import Policy, RunPolicy
from sandbox import Limits
from tools import Registry

RUN_WORKFLOW = "sandboxed_agent.run"
APPROVAL_SIGNAL = "approval"
PENDING_QUERY = "pending"
EVENTS_QUERY = "events"
REFUSED_QUERY = "refused"
APPROVAL_WAIT_S = 7 * 24 * 3600.0
"""How long a run waits for a person's decision before the call counts as denied."""


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolFacts(_Payload):
    """What the run needs to know of one tool from the policy."""

    requires_approval: bool = False
    idempotent: bool = False
    timeout_s: float = Field(10.0, gt=0)
    after: list[str] = Field(default_factory=list)
    """The tools that must have answered in the run first (`[tools.NAME] after`)."""
    offer_when: list[str] = Field(default_factory=list)
    """What the user's message must mention for it to be offered (`[tools.NAME]`)."""
    decides: bool = False
    """Its answer decides the question (`[tools.NAME] decides`)."""
    then: list[str] = Field(default_factory=list)
    """The tools the model is asked to call next once it answered (`[tools.NAME] then`)."""
    then_when: list[str] = Field(default_factory=list)
    first_when: list[str] = Field(default_factory=list)
    max_calls: int | None = None
    """Times it may run in one run (`[tools.NAME] max_calls`)."""
    ask_when_ready: bool = False
    """Asked for once what it runs after has answered (`[tools.NAME] ask_when_ready`)."""
    """What the user's message must mention for it to be asked for first."""


class RunPlan(_Payload):
    task: str
    run: RunPolicy
    policy: str = "<built-in>"
    """Where the policy came from (the trace's `run_started.policy`)."""
    tools: dict[str, ToolFacts] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list)
    """Tool modules and files beyond the built-ins, as `Registry.load` takes them."""
    history: list[dict[str, Any]] | None = None
    approve: list[str] = Field(default_factory=list)
    """Tools approved in advance (`--approve TOOL`)."""
    yes: bool = False
    call_settings: dict[str, Any] = Field(default_factory=dict)
    tool_queue: str | None = None
    """Tool calls go to this task queue (sandbox hosts); None: the workflow's own."""
    approval_wait_s: float = Field(APPROVAL_WAIT_S, gt=0)
    ask: bool = True
    """Wait for a person's decision by signal; False (an eval): no one is there to
    ask, and a call not approved in advance is denied (`denied_no_tty`), as locally."""

    @classmethod
    def of(
        cls,
        policy: Policy,
        tool_names: list[str],
        sources: list[str],
        task: str,
        **options: Any,
    ) -> RunPlan:
        facts = {
            name: ToolFacts(
                requires_approval=policy.requires_approval(name),
                idempotent=policy.idempotent(name),
                timeout_s=policy.limits_for(name).timeout_s,
                after=policy.after(name),
                offer_when=policy.offer_when(name),
                decides=policy.decides(name),
                then=policy.then(name),
                then_when=policy.then_when(name),
                first_when=policy.first_when(name),
                max_calls=policy.max_calls(name),
                ask_when_ready=policy.ask_when_ready(name),
            )
            for name in tool_names
        }
        # A .py file named relative to here means the same file on the workers.
        where = [_where(s) for s in sources]
        return cls(
            task=task,
            run=policy.run,
            policy=policy.source,
            tools=facts,
            sources=where,
            **options,
        )


class PlanPolicy:
    """The policy as the workflow sees it, from the plan: what `agent.loop` and the
    activity options ask of a `Policy`."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.run = plan.run
        self.source = plan.policy

    def _facts(self, tool: str) -> ToolFacts:
        return self.plan.tools.get(tool) or ToolFacts()

    def requires_approval(self, tool: str) -> bool:
        return self._facts(tool).requires_approval

    def idempotent(self, tool: str) -> bool:
        return self._facts(tool).idempotent

    def limits_for(self, tool: str) -> Limits:
        return Limits(timeout_s=self._facts(tool).timeout_s)

    def after(self, tool: str) -> list[str]:
        return list(self._facts(tool).after)

    def offer_when(self, tool: str) -> list[str]:
        return list(self._facts(tool).offer_when)

    def decides(self, tool: str) -> bool:
        return self._facts(tool).decides

    def then(self, tool: str) -> list[str]:
        return list(self._facts(tool).then)

    def then_when(self, tool: str) -> list[str]:
        return list(self._facts(tool).then_when)

    def first_when(self, tool: str) -> list[str]:
        return list(self._facts(tool).first_when)

    def ask_when_ready(self, tool: str) -> bool:
        return self._facts(tool).ask_when_ready

    def max_calls(self, tool: str) -> int | None:
        return self._facts(tool).max_calls


class RunOutcome(_Payload):
    """`agent.loop.RunResult`, with the run's trace events."""

    answer: str | None
    reason: str
    message: str
    steps: int
    cost_usd: float
    messages: list[dict[str, Any]]
    run_id: str
    events: list[dict[str, Any]]
    """The trace, as a local run writes it (`--trace`), one dict per event."""


class ApprovalSignal(_Payload):
    """A person's decision on one pending call, bound to its arguments by hash."""

    call_id: str
    approve: bool
    sha256: str
    """Of the call's canonical arguments (`agent.binding`), as shown by `pending`."""
    by: str = ""
    """Who decided (for the trace's approval field: `approved_signal`)."""
    always: bool = False
    """Yes to this call and, without asking, to every later call of its tool in the
    run (`approved_always`), as `[a]lways` at a terminal."""


class PendingCall(_Payload):
    call_id: str
    tool: str
    arguments: str
    """Canonical JSON: exactly what would run."""
    sha256: str
    prompt: str
    """What a person reads before deciding (`agent.approval.approval_prompt`)."""


class Refusal(_Payload):
    call_id: str
    sha256: str
    why: str


class SourceRefused(Exception):
    """A run asked for tools this worker was not started with."""


_allowed: set[str] = set()


def allow_sources(sources: list[str]) -> None:
    """The tool sources this worker process loads (its `--tools` and policy's
    `load_tools`): a run may name these and no others, so that starting a workflow
    cannot make a worker import a module or file it was not told to."""
    _allowed.update(_where(s) for s in sources)


def _where(source: str) -> str:
    return os.path.abspath(source) if source.endswith(".py") else source


@functools.cache
def registry_for(sources: tuple[str, ...]) -> Registry:
    """The built-in tools and `sources`, loaded once per worker process: a workflow
    binds and validates arguments against them, as a local run does."""
    refused = [s for s in sources if _where(s) not in _allowed]
    if refused:
        raise SourceRefused(
            f"this worker loads no tools from {', '.join(refused)}: start it with "
            + " ".join(f"--tools {s}" for s in refused)
            + " (and the same policy as the run's)"
        )
    registry = Registry.default()
    for source in sources:
        registry.load(source)
    return registry
