"""The agent loop as a Temporal workflow: `AgentWorkflow`, one run per workflow.

    handle = await client.start_workflow(RUN_WORKFLOW, plan, id=run_id, task_queue=q)
    outcome = await handle.result()          # RunOutcome: the answer and the trace

Each model call, each tool call and each embedding is an activity
(`temporal_contracts`); everything between them is `agent.loop`'s own code, run here
on the workflow's deterministic clock: `Agent._steps` yields each model call and each
turn's calls (`ModelAsk`, `CallsAsk`), and `adrive` awaits them as activities, so the
budgets, the repeat guard, every steer, the tools offered per turn, binding and
repair, truncation, the approval wording and the trace events are the local loop's.
The model is asked as the run's policy says (`ModelRequest`). Only two things differ
from a local run:

- A call that needs approval waits for the `approval` signal (`ApprovalSignal`:
  call id, yes or no, and the sha256 of the canonical arguments shown by the
  `pending` query). A decision whose hash is not that of the pending call's
  arguments is refused (`refused` query) and the run goes on waiting, durably, up to
  `approval_wait_s` (days); a decision accepted in the workflow task where that time
  ran out is still the outcome (`settle`). The wall budget does not run while a
  person decides.
- A non-idempotent call whose worker went away (`lost_worker`) may have taken
  effect: it runs again only if a person approves, as on `run --resume`.

No Pool is built here and nothing does I/O: the trace is kept in the workflow's
state and returned with the result (the client writes it where `--trace` says).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import pydantic  # noqa: F401  (the payloads' models, imported once per worker)

    from agent.approval import Decision, approval_prompt
    from agent.audit import ToolCalled, TraceEvent
    from agent.binding import BoundCall
    from agent.guardrails import Budget, RepeatGuard, RunStopped
    from agent.loop import (
        Agent,
        Effect,
        ModelAsk,
        Ready,
        RunResult,
        Steps,
        ToolOutcome,
        ToRun,
        _failure,
    )
    from agent.model import ModelTurn
    from agent.parallel import OutOfResources
    from sandbox import CancelToken, ToolResult
    from sandbox.errors import Denied, RunError
    from sandbox.protocol import ToolError
    from tools.context import EMBEDDING

    from .temporal_contracts import (
        EMBED_ACTIVITY,
        MODEL_ACTIVITY,
        POLICY_ERROR,
        RUN_ERROR,
        TOOL_ACTIVITY,
        EmbedInput,
        EmbedOutput,
        ModelCallInput,
        ModelCallOutput,
        ModelRequest,
        ToolCallInput,
        ToolCallOutput,
        embed_activity_options,
        lost_worker,
        model_activity_options,
        tool_activity_options,
    )
    from .temporal_plan import (
        APPROVAL_SIGNAL,
        EVENTS_QUERY,
        PENDING_QUERY,
        REFUSED_QUERY,
        RUN_WORKFLOW,
        ApprovalSignal,
        PendingCall,
        PlanPolicy,
        Refusal,
        RunOutcome,
        RunPlan,
        SourceRefused,
        registry_for,
    )


@workflow.defn(name=RUN_WORKFLOW, failure_exception_types=[Exception])
class AgentWorkflow:
    """Any exception raised in the workflow's code (a bug of ours or of a tool module's,
    a non-determinism error after a change of code) fails the run, saying what it was;
    by default Temporal would fail only the workflow task and retry it for ever, with
    `run --temporal` waiting. A worker that dies still only fails the task, which
    moves to another; code that blocks past 2 s fails it as a deadlock every time, and
    the client that follows the run ends it (`temporal_command.end_if_stuck`)."""

    def __init__(self) -> None:
        self.pending: dict[str, PendingCall] = {}
        self.decisions: dict[str, ApprovalSignal] = {}
        self.refusals: list[Refusal] = []
        self.events: list[dict[str, Any]] = []

    @workflow.run
    async def run(self, plan: RunPlan) -> RunOutcome:
        try:
            with workflow.unsafe.sandbox_unrestricted():
                # Imports the tool modules (file I/O) once per worker process, outside
                # the sandbox; the same sources give the same registry on every worker.
                registry = registry_for(tuple(plan.sources))
        except SourceRefused as exc:
            raise ApplicationError(str(exc), type="SourceRefused", non_retryable=True) from None
        return await _WorkflowAgent(self, plan, registry).drive()

    @workflow.signal(name=APPROVAL_SIGNAL)
    def approval(self, decision: ApprovalSignal) -> None:
        pending = self.pending.get(decision.call_id)
        if pending is None:
            why = f"no call {decision.call_id} is waiting for approval"
        elif decision.sha256 != pending.sha256:
            why = (
                f"the decision names arguments with sha256 {decision.sha256[:16]}, and call "
                f"{decision.call_id} ({pending.tool}) waits with {pending.sha256[:16]}"
            )
        else:
            self.decisions[decision.call_id] = decision
            return
        self.refusals.append(Refusal(call_id=decision.call_id, sha256=decision.sha256, why=why))

    @workflow.query(name=PENDING_QUERY)
    def pending_calls(self) -> list[PendingCall]:
        return list(self.pending.values())

    @workflow.query(name=REFUSED_QUERY)
    def refused(self) -> list[Refusal]:
        return list(self.refusals)

    @workflow.query(name=EVENTS_QUERY)
    def trace_events(self) -> list[dict[str, Any]]:
        return list(self.events)


def settle(
    decisions: dict[str, ApprovalSignal], call_id: str, sha256: str
) -> tuple[Decision, bool]:
    """How a wait for a person's decision on `call_id` (arguments `sha256`) ended, that
    decision taken out of `decisions` either way: (the decision, whether it says yes to
    the tool for the rest of the run). A signal applied in the same workflow task as
    the wait's timer (both came while no worker polled, or the person answered as the
    time ran out) was accepted, though `wait_condition` may raise TimeoutError: it is
    the decision. Left in `decisions`, it would answer the next wait on that id (the
    re-run of a call whose worker went away) without the person being asked."""
    signal = decisions.pop(call_id, None)
    if signal is None:
        return Decision(False, "denied_timeout", sha256), False
    if signal.approve and signal.always:
        return Decision(True, "approved_always", signal.sha256), True
    how = "approved_signal" if signal.approve else "denied_signal"
    return Decision(signal.approve, how, signal.sha256), False


EMBED_TIMEOUT_S = 30.0
"""At most this long for an embedding, as a local run's `Embedder` (less if the wall
budget has less left)."""

IN_FLIGHT = (
    "This call of {tool} was in flight when its worker went away: it may already have "
    "taken effect, and running it again may repeat that."
)


class _Model:
    """What the trace says of the model: its name; the endpoint is each worker's."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.base_url: str | None = None


class _Tools:
    """The part of a Pool the loop's pure steps read: its registry."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.size = 1


class _Sink:
    """The run's trace, kept in the workflow's state, each event stamped with the
    workflow's time (the same on a replay)."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.worker_of: dict[str, str] = {}

    def emit(self, event: TraceEvent) -> None:
        update: dict[str, Any] = {"ts": workflow.time()}
        if isinstance(event, ToolCalled) and event.call_id in self.worker_of:
            update["worker"] = self.worker_of[event.call_id]
        self.events.append(event.model_copy(update=update).model_dump(mode="json"))


class _WorkflowAgent(Agent):
    """`Agent`'s loop with its two effects as activities. Everything else is the
    loop's own methods (`_screen`, `_decided`, `_ready`, `_executed`, `_close`,
    `_took`, `_answer`, `_stopped`), not copies of them."""

    def __init__(self, flow: AgentWorkflow, plan: RunPlan, registry: Any) -> None:
        # Not Agent.__init__: that takes a Pool and a model client, which live on workers.
        self.flow = flow
        self.plan = plan
        self.pool = _Tools(registry)  # type: ignore[assignment]
        self.policy = PlanPolicy(plan)  # type: ignore[assignment]
        self.limits = plan.run
        self.model = _Model(plan.run.model)  # type: ignore[assignment]
        self.sink = _Sink(flow.events)
        self.trace = self.sink  # type: ignore[assignment]
        self.progress = lambda kind, details: None
        self.store = None
        self.embedder = None
        self.call_settings = dict(plan.call_settings)
        self.run_id = workflow.info().workflow_id
        self._interrupted = False
        self._answered_from: str | None = None
        self._cancel = CancelToken()
        self._answered: set[str] = set()  # the tools that answered (`[tools] after`)
        self._called: set[str] = set()  # the tools that ran (`[tools] then`)
        self._runs: Counter[str] = Counter()  # how often each ran (`[tools] max_calls`)
        self._asked_next: list[str] = []
        self._for_this: set[str] = set()  # the tools the question may have (`_for_question`)
        self._failures: list[tuple[str, str, str]] = []  # calls that failed (`_second_look`)
        self._model_ids: dict[str, str] = {}  # renamed call ids (`agent.loop.fresh_ids`)
        self._waited = 0.0
        self._refused: set[str] = set()  # what the model's server refused in this run
        self._always: set[str] = set()  # tools a person approved for the rest of the run
        self._vectors: dict[tuple[str, str], list[float]] = {}  # embedded call arguments
        offer = self.limits.offer
        self.tools = [s.openai_schema for s in registry if offer is None or s.name in offer]
        self._offered = sorted(t["function"]["name"] for t in self.tools)

    def _clock(self) -> float:
        """The workflow's time less the time spent waiting for people."""
        return workflow.time() - self._waited

    async def drive(self) -> RunOutcome:
        plan = self.plan
        messages = list(plan.history or [{"role": "system", "content": self.limits.system_prompt}])
        messages.append({"role": "user", "content": plan.task})
        budget = Budget(self.limits, started=self._clock(), clock=self._clock)
        repeats = RepeatGuard(self.limits.max_repeats)
        self.trace.emit(self._unrestricted(self._run_started, plan.task, False))
        try:
            answer = await self._aloop(messages, budget, repeats)
            result = RunResult(answer, "answer", "answered", budget.steps, budget.cost_usd)
            result.answered_from = self._answered_from
        except (RunStopped, OutOfResources, RunError) as exc:
            result = self._stopped(exc, budget, messages)
        except asyncio.CancelledError:
            result = RunResult(None, "interrupted", "cancelled", budget.steps, budget.cost_usd)
        result.messages = messages
        self.trace.emit(self._unrestricted(self._run_ended, result, budget))
        return RunOutcome(
            answer=result.answer,
            reason=result.reason,
            message=result.message,
            steps=result.steps,
            cost_usd=result.cost_usd,
            messages=messages,
            run_id=self.run_id,
            events=list(self.flow.events),
        )

    async def _aloop(
        self, messages: list[dict[str, Any]], budget: Budget, repeats: RepeatGuard
    ) -> str:
        """`Agent._steps`, the local loop's own decisions, with its effects as activities."""

        async def do(effect: Effect) -> Any:
            if isinstance(effect, ModelAsk):
                return await self._amodel(effect)
            return await self._arun_calls(effect.calls, budget, repeats, effect.offered)

        return await adrive(self._steps(messages, budget, repeats), do)

    async def _amodel(self, ask: ModelAsk) -> ModelTurn:
        """One model call as an activity; a failure is the `RunError` a local call raises."""
        try:
            out = await workflow.execute_activity(
                MODEL_ACTIVITY,
                ModelCallInput(
                    messages=ask.messages,
                    tools=ask.tools,
                    timeout_s=ask.timeout_s,
                    tool_choice=ask.tool_choice,
                    offered=ask.offered,
                    model=self.limits.model,
                    request=ModelRequest.of(self.limits),
                    base_url=self.limits.base_url,
                    refused=sorted(self._refused),
                ),
                result_type=ModelCallOutput,
                **model_activity_options(self.policy, timeout_s=ask.timeout_s),  # type: ignore[arg-type]
            )
        except ActivityError as exc:
            raise _run_error(exc) from None
        turn: ModelTurn = out.to_turn()
        if turn.tool_choice_refused:
            self._refused.add(turn.tool_choice_refused)
        return turn

    async def _arun_calls(
        self,
        calls: list[dict[str, Any]],
        budget: Budget,
        repeats: RepeatGuard,
        offered: set[str] | None = None,
    ) -> list[ToolOutcome]:
        """`Agent._run_calls`: approvals by signal, the calls as activities at once."""
        turn = self._screen(calls, budget.steps, repeats, {}, offered)
        for ask in list(turn.asking):
            decision = await self._decide(ask.call_id, ask.bound)
            self._decided(turn, ask, decision)
        if turn.to_run:
            ran = await asyncio.gather(*(self._aexecute(item, budget) for item in turn.to_run))
            self._ran(turn, list(ran), repeats)
        return self._unrestricted(self._close, turn)

    async def _decide(self, call_id: str, call: BoundCall, why: str = "") -> Decision:
        """As `Approver.decide`, with the signal for the terminal: approved in advance
        by the plan, else wait for a person's decision on exactly these arguments."""
        if self.plan.yes:
            return Decision(True, "approved_yes", call.sha256)
        if call.tool in self.plan.approve:
            return Decision(True, "approved_flag", call.sha256)
        if call.tool in self._always:
            return Decision(True, "approved_always", call.sha256)
        if not self.plan.ask:
            return Decision(False, "denied_no_tty", call.sha256)
        flow = self.flow
        flow.pending[call_id] = PendingCall(
            call_id=call_id,
            tool=call.tool,
            arguments=call.canonical,
            sha256=call.sha256,
            prompt=approval_prompt(call, why),
        )
        since = workflow.time()
        try:
            await workflow.wait_condition(
                lambda: call_id in flow.decisions,
                timeout=timedelta(seconds=self.plan.approval_wait_s),
            )
        except TimeoutError:
            pass  # a decision may have come in the same workflow task: `settle` sees it
        finally:
            del flow.pending[call_id]
            self._waited += workflow.time() - since
        decision, always = settle(flow.decisions, call_id, call.sha256)
        if always:
            self._always.add(call.tool)
        return decision

    async def _aexecute(self, item: ToRun, budget: Budget) -> ToolOutcome:
        """`Agent._execute`: the same limits and refusals, the call as an activity."""
        await self._embed(item[3], budget)
        ready = self._ready(item, budget)
        if isinstance(ready, ToolOutcome):
            return ready
        while True:
            try:
                out = await self._tool_activity(ready)
            except ActivityError as exc:
                rerun = ready.bound is not None and not self.policy.idempotent(ready.tool)
                if not (rerun and lost_worker(exc)):
                    return self._executed(ready, _activity_failed(ready.tool, exc))
                why = IN_FLIGHT.format(tool=ready.tool)
                assert ready.bound is not None
                decision = await self._decide(ready.call_id, ready.bound, why)
                if not decision.allowed:
                    return self._not_rerun(ready, decision)
                ready = dataclasses.replace(ready, approval=decision.how, approved=decision.sha256)
                ready = self._ready_again(ready, budget)
                if isinstance(ready, ToolOutcome):
                    return ready
                continue
            self.sink.worker_of[ready.call_id] = out.worker
            return self._executed(ready, out.to_result())

    async def _embed(self, call: BoundCall | str, budget: Budget) -> None:
        """The embedding `Agent._settings_for` adds to a call's settings (a tool's
        `embed` argument, by `[run] embeddings_model`), made here as an activity before
        `_ready` asks for it. Not had (the endpoint failed): the tool falls back, as
        locally; a model or an endpoint the workers do not serve ends the run."""
        model = self.limits.embeddings_model
        if model is None or not isinstance(call, BoundCall):
            return
        spec = self.pool.registry.get(call.tool)
        text = call.args.get(spec.embed) if spec.embed else None
        left = budget.time_left()
        if not isinstance(text, str) or not text.strip() or left <= 0:
            return
        timeout_s = min(EMBED_TIMEOUT_S, left)
        try:
            out = await workflow.execute_activity(
                EMBED_ACTIVITY,
                EmbedInput(
                    text=text,
                    model=model,
                    timeout_s=timeout_s,
                    base_url=self.limits.embeddings_base_url,
                ),
                result_type=EmbedOutput,
                **embed_activity_options(timeout_s),
            )
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == RUN_ERROR:
                raise RunError(cause.message) from None
            return
        if out.vector:
            self._vectors[(call.tool, call.canonical)] = out.vector

    def _settings_for(self, call: BoundCall, within_s: float | None = None) -> dict[str, Any]:
        settings = dict(self.call_settings)
        vector = self._vectors.get((call.tool, call.canonical))
        if vector is not None:
            settings[EMBEDDING] = vector
        return settings

    async def _tool_activity(self, ready: Ready) -> ToolCallOutput:
        bound = ready.bound
        cut = None
        if ready.limits is not None and ready.limits.timeout_s < (ready.own_timeout or 0):
            cut = ready.limits.timeout_s
        return await workflow.execute_activity(
            TOOL_ACTIVITY,
            ToolCallInput(
                run_id=self.run_id or "",
                call_id=ready.call_id,
                tool=ready.tool,
                arguments=bound.canonical if bound else ready.arguments,
                settings=ready.settings,
                timeout_s=cut,
                approved_sha256=ready.approved,
            ),
            result_type=ToolCallOutput,
            **tool_activity_options(self.policy, ready.tool, task_queue=self.plan.tool_queue),  # type: ignore[arg-type]
        )

    def _ready_again(self, ready: Ready, budget: Budget) -> Ready | ToolOutcome:
        """After a person's yes: the wall budget left now, not when it first started."""
        item = (0, ready.call_id, ready.tool, ready.bound, ready.approval, ready.approved)
        return self._ready(item, budget)  # type: ignore[arg-type]

    def _not_rerun(self, ready: Ready, decision: Decision) -> ToolOutcome:
        tool = ready.tool
        denied = Denied(
            tool,
            f"not run again: {tool} was in flight when its worker went away and may have "
            f"taken effect; it is not idempotent, so it runs again only with a person's "
            f"approval ({decision.how})",
        )
        return ToolOutcome(
            ready.call_id,
            tool,
            ready.arguments,
            _failure(tool, denied),
            decision.how,
            sha256=ready.bound.sha256 if ready.bound else None,
            approved_sha256=decision.sha256,
        )

    def _record_model_call(self, *args: Any, **kwargs: Any) -> None:
        self._unrestricted(super()._record_model_call, *args, **kwargs)

    def _tools_now(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = self._unrestricted(super()._tools_now, messages)
        return tools

    def _took(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self._unrestricted(super()._took, *args, **kwargs)
        return calls

    def _record_tool_call(self, *args: Any, **kwargs: Any) -> None:
        self._unrestricted(super()._record_tool_call, *args, **kwargs)

    @staticmethod
    def _unrestricted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Trace events take `time.time()` as they are made, which the sandbox forbids;
        the sink stamps them again with the workflow's time."""
        with workflow.unsafe.sandbox_unrestricted():
            return fn(*args, **kwargs)


async def adrive(steps: Steps, do: Callable[[Effect], Awaitable[Any]]) -> str:
    """`agent.loop.drive`, awaiting each effect."""
    reply: Any = None
    failed: BaseException | None = None
    while True:
        try:
            effect = steps.throw(failed) if failed is not None else steps.send(reply)
        except StopIteration as done:
            return str(done.value)
        reply, failed = None, None
        try:
            reply = await do(effect)
        except BaseException as exc:  # a cancellation too: the steps let it through
            failed = exc


def _run_error(exc: ActivityError) -> RunError:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == RUN_ERROR:
        return RunError(cause.message)
    return RunError(f"the model call failed on the workers: {cause or exc}")


def _activity_failed(tool: str, exc: ActivityError) -> ToolResult:
    """A tool call that ended without a result: its worker went away (an idempotent
    one after every try), or the worker refused it for its policy."""
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == POLICY_ERROR:
        # As in a local run, a policy that cannot run the tool ends the run.
        raise ApplicationError(cause.message, type=POLICY_ERROR, non_retryable=True)
    if lost_worker(exc):
        message = f"{tool} did not finish: its worker went away ({cause or exc})"
    else:
        message = f"{tool} did not finish on the workers: {cause or exc}"
    return ToolResult(
        tool=tool,
        ok=False,
        output=None,
        error=ToolError(kind="crashed", message=message),
        duration_ms=0.0,
        error_origin="sandbox",
    )


PASSED_THROUGH = ("agent", "policies", "sandbox", "tools")
"""Our own packages, imported once per worker, not again for each run: `agent`'s
`__init__` imports the pool's module, whose import reads the locale (the sandbox
forbids it), and nothing in them runs at import but definitions."""


def workflow_runner() -> Any:
    """The `Worker(workflow_runner=...)` for `AgentWorkflow`."""
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
    return SandboxedWorkflowRunner(restrictions=restrictions)


WORKFLOWS = [AgentWorkflow]
"""What a worker registers (`temporal_worker`), with `workflow_runner()`."""
