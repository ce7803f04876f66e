"""The model loop: ask the model → for each tool call: guard → approve → sandbox →
audit → append; repeat until the model answers or a guardrail ends the run."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from policies import Policy
from sandbox import CancelToken, Limits, Pool, ToolResult
from sandbox.errors import (
    BadArguments,
    CallCancelled,
    Denied,
    RunError,
    ToolCallError,
    UnknownTool,
)
from sandbox.protocol import ToolError
from tools import ArgumentError
from tools.context import EMBEDDING

from . import steering
from .approval import Approver, Decision, denial
from .audit import ModelCalled, RunEnded, RunStarted, ToolCalled, Trace, egress_events
from .binding import BoundCall
from .checkpoints import CallRecord, CheckpointError, Outcome, RunRecord, RunStore
from .embeddings import Embedder
from .guardrails import Budget, RepeatGuard, RunStopped, StopReason, truncate
from .model import ModelClient, ModelTurn
from .parallel import OutOfResources, out_of_resources, run_bounded
from .repair import bind_leniently


@dataclass
class RunResult:
    answer: str | None
    reason: StopReason
    message: str
    steps: int
    cost_usd: float
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The whole conversation, for `chat` to continue from."""
    run_id: str | None = None
    """Its checkpoint in the run store (`run --resume RUN_ID`), when there is one."""
    answered_from: str | None = None
    """The answer is this tool's own result, not the model's: the model's answer said
    the opposite of the verdict of a tool that `decides`, or was that verdict's word
    alone and has its reason added (`steering.overruled`)."""

    @property
    def ok(self) -> bool:
        return self.reason == "answer"


@dataclass
class ToolOutcome:
    call_id: str
    tool: str
    arguments: str
    """The validated arguments as canonical JSON (what ran); the model's own text when
    they did not validate or the tool is unknown."""
    result: ToolResult
    approval: str
    sent: str = ""
    executed: bool = False
    """Run in the sandbox now (not a note, a denial, or restored from a checkpoint)."""
    restored: bool = False
    """Completed before a resume: taken from the checkpoint, not run again."""
    sha256: str | None = None
    """Of `arguments`, when they validated (`BoundCall.sha256`)."""
    approved_sha256: str | None = None
    """The hash the approval decision was made for, when one was asked."""
    timeout_s: float | None = None
    """The timeout it ran under: its policy's, or less when the wall budget had less left."""
    wall_left_s: float | None = None
    """Seconds of the run's wall budget left when it started."""


ToRun = tuple[int, str, str, BoundCall | str, str, str | None]
"""(index in the turn, call id, tool, what goes to the pool, approval, hash approved):
the bound call, or the model's text for a tool that does not exist (the pool says so
with the list of tools)."""


@dataclass(frozen=True)
class Asking:
    """A call of the turn that waits for a person's decision."""

    index: int
    call_id: str
    bound: BoundCall


@dataclass
class Turn:
    """One model turn's calls on their way from guarded to recorded (`Agent._screen`,
    `_decided`, `_ran`, `_close`): a local run and a Temporal workflow share these, and
    differ only in how they ask a person and run a call."""

    step: int
    outcomes: list[ToolOutcome | None]
    to_run: list[ToRun] = field(default_factory=list)
    asking: list[Asking] = field(default_factory=list)
    stop: RunStopped | None = None
    repaired: dict[str, BoundCall] = field(default_factory=dict)
    checkpointed: set[str] = field(default_factory=set)
    """Calls whose refusal or note was checkpointed as soon as it was decided."""


@dataclass(frozen=True)
class Ready:
    """A call about to run: with what settings, under which limits."""

    call_id: str
    tool: str
    bound: BoundCall | None
    arguments: str
    approval: str
    approved: str | None
    settings: dict[str, Any]
    limits: Limits | None
    own_timeout: float | None
    left: float


Progress = Callable[[str, dict[str, Any]], None]
"""Called with ("thinking" | "model" | "tool", details) as the run goes, and with
("ended", {"reason": ...}) once it is over, whatever ended it."""


@dataclass(frozen=True)
class ModelAsk:
    """A model call the loop's steps ask for (`Agent._steps`): a `ModelTurn` back."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    timeout_s: float
    tool_choice: str | None
    offered: list[str] | None = None
    """The names of `tools` this call may call (None: all); how the narrowing is sent
    is the client's (`[run] tools_sent`)."""


@dataclass(frozen=True)
class CallsAsk:
    """A turn's tool calls the steps ask to have guarded, approved and run (as
    `Agent._run_calls`): their `ToolOutcome`s back, in order."""

    calls: list[dict[str, Any]]
    offered: set[str]


Effect = ModelAsk | CallsAsk
Steps = Generator[Effect, Any, str]
"""The loop's steps: they yield effects and end with the run's answer."""


def drive(steps: Steps, do: Callable[[Effect], Any]) -> str:
    """Run `steps` to its answer, doing each effect with `do`: its result is sent
    back, or its exception raised where the step yielded it (so the steps handle a
    failed model call as if they had made it)."""
    reply: Any = None
    failed: BaseException | None = None
    while True:
        try:
            effect = steps.throw(failed) if failed is not None else steps.send(reply)
        except StopIteration as done:
            return str(done.value)
        reply, failed = None, None
        try:
            reply = do(effect)
        except BaseException as exc:  # Ctrl-C too: the steps let it through
            failed = exc


class Agent:
    """The worked example's agent: `Agent(pool, policy, model).run("Can I ...?")`."""

    def __init__(
        self,
        pool: Pool,
        policy: Policy,
        model: ModelClient,
        *,
        approver: Approver | None = None,
        trace: Trace | None = None,
        progress: Progress | None = None,
        store: RunStore | None = None,
        embedder: Embedder | None = None,
        call_settings: dict[str, Any] | None = None,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.limits = policy.run
        self.model = model
        self.approver = approver or Approver()
        self.trace = trace or Trace(None)
        self.progress = progress or (lambda kind, details: None)
        self.store = store
        self.embedder = embedder
        self.call_settings = dict(call_settings or {})
        """Added to every call's settings (`--memory-namespace` sets one)."""
        self.run_id: str | None = None
        self._answered_from: str | None = None
        self._interrupted = False
        self._cancel = CancelToken()
        offer = self.limits.offer
        self.tools = [s.openai_schema for s in pool.registry if offer is None or s.name in offer]
        """Every tool the run may offer; each model call gets those `_tools_now` says."""
        self._offered = sorted(t["function"]["name"] for t in self.tools)
        self._answered: set[str] = set()
        """Tools that answered without an error in this run (the policy's `after`)."""
        self._called: set[str] = set()
        """Tools that ran, or were refused by a person, in this run (`[tools] then`)."""
        self._runs: Counter[str] = Counter()
        """How often each tool ran in this run (`[tools] max_calls`)."""
        self._asked_next: list[str] = []
        """The tools the latest model call was asked to call, alone (`[tools] then`)."""
        self._failures: list[tuple[str, str, str]] = []
        """(tool, what the model was told, what the user is told) of each call in this
        run that failed as it ran, or that a person did not approve."""
        self._for_this: set[str] = set()
        """The tools the latest model call's question may have (`_for_question`)."""
        self._model_ids: dict[str, str] = {}
        """A call's id in the run → the id the model gave it, where that one was taken."""

    def run(
        self,
        task: str,
        history: list[dict[str, Any]] | None = None,
        *,
        cancel: CancelToken | None = None,
    ) -> RunResult:
        """Run `task` to an answer or a guardrail. `cancel.cancel()`, from any thread,
        kills the run's tool calls in flight and ends the run (reason `interrupted`)
        before its next model call or tool call."""
        self._cancel = cancel or CancelToken()
        self._answered, self._called, self._runs = set(), set(), Counter()
        self._failures = []
        messages = list(history or [{"role": "system", "content": self.limits.system_prompt}])
        messages.append({"role": "user", "content": task})
        self.run_id = self.store.start(task, self.model.model, messages) if self.store else None
        return self._drive(
            task, messages, Budget(self.limits), RepeatGuard(self.limits.max_repeats)
        )

    async def arun(self, task: str, history: list[dict[str, Any]] | None = None) -> RunResult:
        """`run` on a thread, for asyncio or trio code (the same loop, not a copy):

            result = await agent.arun("Can I still return order 12345?")

        Cancelling the awaiting task kills the run's tool calls in flight and waits until
        they are reaped; the run then ends as `interrupted` (trace and checkpoint say
        so; those calls stay `running` for a resume to decide). A model request in
        flight is not waited for: its answer is dropped and nothing more starts."""
        from sandbox.aio import run_cancellable

        token = CancelToken()
        return await run_cancellable(lambda: self.run(task, history, cancel=token), token)

    def resume(self, record: RunRecord) -> RunResult:
        """Go on with a checkpointed run from its last completed step. Calls that had
        completed are not run again; calls that were in flight are re-run only for
        idempotent tools, or with a person's approval."""
        if self.store is None:
            raise CheckpointError("resuming needs the run store")
        if not record.resumable:
            raise CheckpointError(f"run {record.id} already answered; there is nothing to resume")
        self.store.claim(record)
        self.run_id = record.id
        self._cancel = CancelToken()
        budget = Budget(self.limits, steps=record.steps, cost_usd=record.cost_usd)
        repeats = RepeatGuard(self.limits.max_repeats)
        self._answered, self._called, self._runs = set(), set(), Counter()
        self._failures = []
        for done in record.calls:
            if done.outcome is not None:
                repeats.remember(done.tool, done.arguments, done.outcome.sent)
                if done.step < record.steps:  # the last step's: once it is screened again
                    self._took_part(done)
        return self._drive(record.task, list(record.messages), budget, repeats, record)

    def _took_part(self, done: CallRecord) -> None:
        """A checkpointed call's part in `[tools] after` and `then`."""
        assert done.outcome is not None
        self._called.add(done.tool)
        if done.outcome.ran:
            self._runs[done.tool] += 1
        if done.outcome.ok and done.outcome.ran:  # a note is ok, and ran nothing
            self._answered.add(done.tool)

    def _drive(
        self,
        task: str,
        messages: list[dict[str, Any]],
        budget: Budget,
        repeats: RepeatGuard,
        resumed: RunRecord | None = None,
    ) -> RunResult:
        self._interrupted = False
        self.trace.emit(self._run_started(task, resumed is not None))
        try:
            if resumed is not None:
                self._finish_step(messages, budget, repeats, resumed)
            self._answered_from = None
            answer = self._loop(messages, budget, repeats)
            result = RunResult(
                answer, "answer", "answered", budget.steps, budget.cost_usd, messages
            )
            result.answered_from = self._answered_from
        except (RunStopped, OutOfResources, RunError) as exc:
            result = self._stopped(exc, budget, messages)
        except KeyboardInterrupt:
            result = RunResult(
                None, "interrupted", "interrupted", budget.steps, budget.cost_usd, messages
            )
        except CallCancelled:
            self._interrupted = True  # the calls it killed stay `running` in the checkpoint
            result = RunResult(
                None, "interrupted", "cancelled", budget.steps, budget.cost_usd, messages
            )
        result.run_id = self.run_id
        if self.store and self.run_id:
            self.store.finish(
                self.run_id,
                result.reason,
                result.message,
                result.answer,
                messages,
                result.steps,
                result.cost_usd,
            )
        self.trace.emit(self._run_ended(result, budget))
        self.progress("ended", {"reason": result.reason})  # a spinner stops before the line
        return result

    def _run_started(self, task: str, resumed: bool) -> RunStarted:
        return RunStarted(
            task=task,
            model=self.model.model,
            base_url=self.model.base_url,
            policy=self.policy.source,
            limits=self.limits.model_dump(exclude={"prices", "system_prompt"}),
            run_id=self.run_id,
            resumed=resumed,
        )

    @staticmethod
    def _stopped(
        exc: RunStopped | OutOfResources | RunError,
        budget: Budget,
        messages: list[dict[str, Any]],
    ) -> RunResult:
        """The run's result when a guardrail, the machine or the model ended it."""
        if isinstance(exc, RunStopped):
            reason, message = exc.reason, exc.message
        elif isinstance(exc, OutOfResources):
            reason, message = "out_of_resources", str(exc)
        else:
            reason, message = "model_error", str(exc)
        return RunResult(None, reason, message, budget.steps, budget.cost_usd, messages)

    @staticmethod
    def _run_ended(result: RunResult, budget: Budget) -> RunEnded:
        return RunEnded(
            reason=result.reason,
            message=result.message,
            answer=result.answer,
            steps=result.steps,
            cost_usd=round(result.cost_usd, 8),
            wall_s=round(budget.clock() - budget.started, 3),
            answered_from=result.answered_from,
        )

    def _finish_step(
        self,
        messages: list[dict[str, Any]],
        budget: Budget,
        repeats: RepeatGuard,
        record: RunRecord,
    ) -> None:
        """On resume: answer the calls of the model's last turn. A turn's answers are
        checkpointed together, so a conversation that ends with calls has none yet."""
        last = messages[-1] if messages else {}
        calls = last.get("tool_calls") if last.get("role") == "assistant" else None
        known = {c.call_id: c for c in record.calls if c.step == record.steps}
        # What that step offered, from what had answered before it: a call the
        # checkpoint holds unscreened (a kill right after the turn was kept) of a
        # tool not offered then is refused now too, never run.
        offered = self._offered_in(calls, self._tools_now(messages), messages) if calls else None
        outcomes = self._run_calls(calls, budget, repeats, known, offered) if calls else []
        for done in known.values():  # as a live run counts a turn: once it is over
            if done.outcome is not None:
                self._took_part(done)
        if outcomes:
            self._append(messages, outcomes, budget)

    def _append(
        self, messages: list[dict[str, Any]], outcomes: list[ToolOutcome], budget: Budget
    ) -> None:
        for outcome in outcomes:
            messages.append(
                {"role": "tool", "tool_call_id": outcome.call_id, "content": outcome.sent}
            )
        if self.store and self.run_id:
            self.store.progress(self.run_id, messages, budget.steps, budget.cost_usd)

    def _loop(self, messages: list[dict[str, Any]], budget: Budget, repeats: RepeatGuard) -> str:
        """`_steps`, with its two effects done here: the model call and the turn's calls."""

        def do(effect: Effect) -> Any:
            if isinstance(effect, ModelAsk):
                return self.model.complete(
                    effect.messages,
                    effect.tools,
                    timeout_s=effect.timeout_s,
                    tool_choice=effect.tool_choice,
                    offered=effect.offered,
                )
            return self._run_calls(effect.calls, budget, repeats, offered=effect.offered)

        return drive(self._steps(messages, budget, repeats), do)

    def _steps(self, messages: list[dict[str, Any]], budget: Budget, repeats: RepeatGuard) -> Steps:
        """The loop's decisions, without its I/O: each model call and each turn's tool
        calls is yielded (`ModelAsk`, `CallsAsk`) and its result (or its exception) sent
        back. A local run does them here (`_loop`); a Temporal workflow as activities,
        so both runs decide alike. Nothing here may call the model or a tool itself."""
        steer: steering.Steer | None = None
        draft: dict[str, Any] | None = None
        """An answer sent back (for review, or because it contradicts a tool's verdict);
        the reply takes its place in the conversation, and if none can be had it stands."""
        again: list[dict[str, Any]] | None = None
        """What is sent with the draft."""
        reviewed = checked = False
        while True:
            if self._cancel.cancelled:
                raise CallCancelled("the model")
            try:
                left = budget.before_model_call()
                steer = steer or (None if draft else steering.last_step(budget, messages))
                self.progress("thinking", {"step": budget.steps + 1})
                tools = self._tools_now(messages)
                turn = yield ModelAsk(
                    again
                    if again is not None
                    else steering.request(messages, steer, self._decides(messages)),
                    self._for_question(messages),
                    min(self.limits.request_timeout_s, left),
                    self._tool_choice(messages, steer, tools, draft),
                    [t["function"]["name"] for t in tools],
                )
                calls = self._took(turn, budget, messages, steer, draft)
            except (RunStopped, RunError) as exc:
                if draft is not None:  # no second look could be had: the draft stands
                    messages.append(draft)
                    return self._settled(str(draft.get("content") or ""), messages)
                if isinstance(exc, RunError):
                    self._model_failed(budget)
                raise
            draft = again = None
            if calls:
                offered = self._offered_in(calls, tools, messages)
                outcomes = yield CallsAsk(calls, offered)
                self._append(messages, outcomes, budget)
                steer = steering.after_calls(outcomes, self._decides(messages))
                steer = steer or self._lookup_failed(outcomes, messages)
                if steer is None and any(
                    o.tool in self._actions_asked(messages)
                    and (o.executed or o.approval.startswith("denied"))
                    for o in outcomes
                ):
                    # The action asked for ran, or a person refused it: the answer says
                    # so. The small model looked the policy and the date up again.
                    steer = "acted"
                continue
            try:
                answer = self._answer(turn)
            except RunStopped as exc:
                cut = self._cut_verdict(exc, steer, messages)
                if cut is None:
                    raise
                return cut
            conflict = (
                None
                if checked
                else steering.contradiction(answer, messages, self._decides(messages))
            )
            if conflict is not None and budget.steps < self.limits.max_iterations:
                # Its answer says "yes" where a tool's verdict said "No:": once more,
                # tools off, with that result in front of it.
                checked = True
                draft = messages.pop()
                again = steering.recheck(messages, draft, conflict)
                steer = "contradiction"
                continue
            second = None if checked else self._second_look(answer, messages)
            if second is not None and budget.steps < self.limits.max_iterations:
                # A refusal where a tool's failure is the answer; amounts no result holds.
                checked = True
                draft = messages.pop()
                steer, again = second[0], second[1](draft)
                continue
            if not reviewed and self._review_wanted(steer, budget, tools):
                reviewed = True
                draft = messages.pop()
                again = steering.review(messages, draft)
                continue
            return self._settled(answer, messages)

    def _cut_verdict(
        self, exc: RunStopped, steer: steering.Steer | None, messages: list[dict[str, Any]]
    ) -> str | None:
        """The answer asked for after a tool decided the question was cut off at the
        output limit: that tool's own result is the answer, marked so (the small model
        wrote 512 tokens after "No: order 12345 can no longer be returned; ..."). None:
        any other stop, which ends the run as before."""
        if exc.reason != "length" or steer != "decided":
            return None
        found = steering.verdict_result(messages, self._decides(messages))
        if found is None or not found[0]:
            return None
        self._answered_from, answer = found[0], steering.answer_cut(*found)
        messages[-1] = {"role": "assistant", "content": answer}
        return answer

    def _second_look(
        self, answer: str, messages: list[dict[str, Any]]
    ) -> tuple[steering.Steer | None, Callable[[dict[str, Any]], list[dict[str, Any]]]] | None:
        """What a first answer is sent back with, if anything: a canned refusal, when a
        tool failed in the run (its failure is what the user needs to hear: "no order
        with id '99999'"), tools off; amounts that no tool result holds, tools on (the
        small model gave an order's total of 18.4 as "$1.31"). None: it stands."""
        failure = self._failures[-1] if self._failures else None
        if failure is not None and steering.refuses(answer):
            sent = failure[1]
            return "refusal", lambda draft: steering.explain(messages, draft, sent)
        said = steering.unfounded(answer, messages)
        if said:
            return None, lambda draft: steering.amounts(messages, draft, said)
        return None

    def _settled(self, answer: str, messages: list[dict[str, Any]]) -> str:
        """The run's final answer: the model's, unless it turns round the verdict of a
        tool that decides the question (after the recheck, or with no step left for
        one); then that tool's own result, marked so in the answer, the conversation
        and the trace (`answered_from`). A canned refusal after a tool failed is that
        failure, marked so too."""
        overruled = steering.overruled(answer, messages, self._decides(messages))
        if overruled is None and self._failures and steering.refuses(answer):
            tool, _, said = self._failures[-1]
            overruled = (tool, steering.answer_from_failure(tool, said)) if said else None
        if overruled is None:
            return answer
        self._answered_from, answer = overruled
        messages[-1] = {"role": "assistant", "content": answer}
        return answer

    def _decides(self, messages: list[dict[str, Any]]) -> Callable[[str], bool]:
        """The tools whose verdict decides this question: the policy's `decides`, unless
        the user asked for an action (`_actions_asked`). "Refund order 12345" is not
        answered by whether it can be returned: the small model, steered to answer by
        that verdict, said "eligible" and never asked for the refund."""
        if self._actions_asked(messages):
            return lambda tool: False
        return self.policy.decides

    def _actions_asked(self, messages: list[dict[str, Any]]) -> list[str]:
        """The tools the user's latest message asks to have done: offered only when
        asked for (`offer_when`, which it mentions in a request, not in a question of
        whether it could be done: `steering.requests_action`), and that act (they need
        a person's approval, or running them twice is not running them once)."""
        asked = steering.latest_question(messages) or ""
        return [
            name
            for t in self._for_question(messages)
            if (words := self.policy.offer_when(name := t["function"]["name"]))
            and (self.policy.requires_approval(name) or not self.policy.idempotent(name))
            and steering.requests_action(asked, words)
        ]

    def _review_wanted(
        self, steer: steering.Steer | None, budget: Budget, tools: list[dict[str, Any]]
    ) -> bool:
        """A first answer is reviewed when the policy asks, it was not itself asked for
        with tools off, and the step budget has room for the review and one more turn."""
        return (
            self.limits.review_answer
            and steer is None
            and bool(tools)
            and budget.steps + 2 < self.limits.max_iterations
        )

    def _offered_in(
        self,
        calls: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        messages: list[dict[str, Any]],
    ) -> set[str]:
        """The tools a turn's calls may be of: those the model call offered; when it was
        asked for some alone (`first_when`, `then`) and the turn calls one of them,
        every tool available now beside it (a model that looks the order, the policy and
        the date up at once is not refused two of the three)."""
        offered = {t["function"]["name"] for t in tools}
        named = {str((c.get("function") or {}).get("name")) for c in calls}
        if self._asked_next and named & set(self._asked_next):
            offered |= {t["function"]["name"] for t in self._available(messages)}
        return offered

    def _tools_now(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The tools this model call is offered: of the run's, those whose `[tools]
        after` have answered in the run, and whose `offer_when` the user's latest
        message mentions. A small model picks from what it sees: a tool it may not call
        yet, or an action nobody asked for, is one it would call anyway."""
        follow_ups = self._follow_ups(messages)
        self._asked_next = [t["function"]["name"] for t in follow_ups]
        self._for_this = {t["function"]["name"] for t in self._for_question(messages)}
        return follow_ups or self._available(messages)

    def _available(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            t
            for t in self._for_question(messages)
            if all(first in self._answered for first in self.policy.after(t["function"]["name"]))
            and not self._spent(t["function"]["name"])
        ]

    def _spent(self, tool: str, queued: int = 0) -> bool:
        """The tool has run its `[tools] max_calls` times in this run (`queued`: and
        this many more of this turn's calls are on their way to run)."""
        most = self.policy.max_calls(tool)
        return most is not None and self._runs[tool] + queued >= most

    def _for_question(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The run's tools whose `offer_when` the user's latest message mentions: the
        same on every model call about one question, and what each call sends when
        `[run] tools_sent = "all"` (a prompt cache then keeps the prompt's start)."""
        asked = steering.latest_question(messages) or ""
        return [
            t for t in self.tools if _mentions(asked, self.policy.offer_when(t["function"]["name"]))
        ]

    def _follow_ups(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The tools the model is asked to call next: those whose `[tools] first_when`
        the user's message mentions (and their `then_when`, when they have one: the
        lookup that the rules and the date follow), until one of them has been called;
        then the `[tools] then` of the tools that answered (when the question mentions their
        `then_when`), offered now and not yet called; then an action the user asked
        for (`_actions_asked`), or else one with `ask_when_ready`, not yet called,
        once it is available. Offered alone, one
        of them required: a small model that has the order otherwise answers from it,
        or from the tool that decides, alone, and one asked to look something up first
        read the policy rather than the order."""
        asked = steering.latest_question(messages) or ""
        firsts = [
            t for t in self._available(messages) if self._first_for(t["function"]["name"], asked)
        ]
        if firsts and not any(t["function"]["name"] in self._called for t in firsts):
            return firsts
        wanted = {
            name
            for done in self._answered
            if _mentions(asked, self.policy.then_when(done))
            for name in self.policy.then(done)
            if name not in self._called
        }
        available = self._available(messages)
        follow_ups = [t for t in available if t["function"]["name"] in wanted]
        if follow_ups:
            return follow_ups
        # The lookups done, an action the user asked for is next: the run goes on to it
        # (or to its denial), not to an answer about whether it could be done. Asked
        # none, a tool the policy has asked for when ready (`ask_when_ready`) is.
        pending = self._actions_asked(messages) or [
            name for t in available if self.policy.ask_when_ready(name := t["function"]["name"])
        ]
        return [
            t
            for t in available
            if t["function"]["name"] in pending and t["function"]["name"] not in self._called
        ]

    def _first_for(self, tool: str, asked: str) -> bool:
        """`tool` is what the question `asked` is asked for first (`first_when`, and its
        `then_when` when it has one)."""
        words = self.policy.first_when(tool)
        return (
            bool(words)
            and _mentions(asked, words)
            and _mentions(asked, self.policy.then_when(tool))
        )

    def _lookup_failed(
        self, outcomes: list[ToolOutcome], messages: list[dict[str, Any]]
    ) -> steering.Steer | None:
        """The lookup the question is asked for first failed as it ran (no order with
        that id): nothing the run could look up after it can answer the question, and
        the next call asks for the answer, tools off. The small model, after "no order
        with id '99999'", read the policy, calculated, took the date, and answered
        "Yes, you can return order 99999 within 30 days"."""
        asked = steering.latest_question(messages) or ""
        failed = any(
            o.executed and o.result.error is not None and self._first_for(o.tool, asked)
            for o in outcomes
        )
        return "lookup_failed" if failed else None

    def _tool_choice(
        self,
        messages: list[dict[str, Any]],
        steer: steering.Steer | None,
        tools: list[dict[str, Any]],
        draft: dict[str, Any] | None = None,
    ) -> str | None:
        """`none` when steered to an answer; `required` for the first call after the
        user's message when `[run] call_tools_first` (look before answering) and while
        the model is asked to call the tools a result calls for (`[tools] then`); the
        server's own choice for a draft sent back for review."""
        if steer:
            return "none"
        if draft is not None:
            return None
        if self._follow_ups(messages):
            return "required"
        if self.limits.call_tools_first and tools and not steering.since_question(messages):
            return "required"
        return None

    def _model_failed(self, budget: Budget) -> None:
        """A model call failed: past the wall budget that is the budget's stop."""
        if budget.time_left() <= 0:
            raise RunStopped(
                "max_wall_time",
                f"stopped: the model was still thinking when the run's "
                f"{self.limits.max_wall_s:g} s ran out (max_wall_s)",
            ) from None

    def _took(
        self,
        turn: ModelTurn,
        budget: Budget,
        messages: list[dict[str, Any]],
        steer: steering.Steer | None,
        draft: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Count and record a model turn, keep it in the conversation; its tool calls.
        `draft`: the answer this turn reviewed."""
        cost = budget.charge(turn.model, turn.usage, self.model.model)
        calls = turn.message.get("tool_calls") or []
        reviewed = str(draft.get("content") or "") if draft is not None else None
        asked = (
            [] if steer or draft else [t["function"]["name"] for t in self._follow_ups(messages)]
        )
        self._record_model_call(turn, budget, cost, len(calls), steer, reviewed, asked)
        if calls and steer:
            # Not kept: the conversation stays one whose every call has its answer.
            raise steering.kept_going(steer, calls, budget)
        if len(calls) > _ceiling(self.limits.max_calls_per_turn):
            raise _flood(len(calls), self.limits.max_calls_per_turn)  # nor this one
        self._model_ids.update(fresh_ids(calls, messages))
        messages.append(turn.message)
        if self.store and self.run_id:
            self.store.step(
                self.run_id,
                messages,
                budget.steps,
                budget.cost_usd,
                [_unpack(c, i) for i, c in enumerate(calls)],
            )
        return calls

    @staticmethod
    def _answer(turn: ModelTurn) -> str:
        """The final answer of a turn without tool calls, unless it was cut or withheld."""
        if turn.finish_reason == "length":
            raise RunStopped(
                "length",
                "the model's answer was cut off (finish_reason = length): "
                "its output limit is too small for this task",
            )
        if turn.finish_reason == "content_filter":
            raise RunStopped(
                "content_filter",
                "the endpoint's content filter withheld the answer "
                "(finish_reason = content_filter)",
            )
        return turn.message.get("content") or ""

    def _record_model_call(
        self,
        turn: ModelTurn,
        budget: Budget,
        cost: float,
        calls: int,
        steer: steering.Steer | None = None,
        reviewed: str | None = None,
        follow_ups: list[str] | None = None,
    ) -> None:
        self.trace.emit(
            ModelCalled(
                step=budget.steps,
                model=turn.model,
                input_tokens=turn.usage.input_tokens,
                cached_tokens=turn.usage.cached_tokens,
                output_tokens=turn.usage.output_tokens,
                cost_usd=round(cost, 8),
                total_cost_usd=round(budget.cost_usd, 8),
                latency_ms=round(turn.latency_s * 1000, 1),
                finish_reason=turn.finish_reason,
                tool_calls=calls,
                priced=turn.model not in budget.unpriced,
                text_calls=turn.text_calls,
                text_call_repairs=list(turn.text_call_repairs),
                tool_choice_refused=turn.tool_choice_refused,
                follow_ups=follow_ups or [],
                steered=steer,
                reviewed=reviewed,
            )
        )
        self.progress("model", {"cost_usd": budget.cost_usd, "step": budget.steps})

    def _run_calls(
        self,
        calls: list[dict[str, Any]],
        budget: Budget,
        repeats: RepeatGuard,
        known: dict[str, CallRecord] | None = None,
        offered: set[str] | None = None,
    ) -> list[ToolOutcome]:
        """Guard and approve each call in order, run the approved ones at once (at most
        the pool's size at a time, within the wall budget), and return the outcomes in
        the order of the calls. `known` holds, on resume, what the checkpoint says of
        each call; `offered`, the tools the model was offered in this turn."""
        turn = self._screen(calls, budget.steps, repeats, known or {}, offered)
        for ask in list(turn.asking):
            self._decided(turn, ask, self.approver.decide(ask.bound))
        if turn.to_run:
            try:
                ran = run_bounded(
                    turn.to_run, lambda item: self._execute(item, budget), self.pool.size
                )
            except KeyboardInterrupt:
                # Stop now, not when the calls end: they stay `running` in the
                # checkpoint (a resume decides), and die when the pool closes.
                self._interrupted = True
                raise
            except (RuntimeError, OSError) as exc:
                raise out_of_resources(exc) or exc from None
            self._ran(turn, ran, repeats)
        return self._close(turn)

    def _screen(
        self,
        calls: list[dict[str, Any]],
        step: int,
        repeats: RepeatGuard,
        known: dict[str, CallRecord],
        offered: set[str] | None = None,
    ) -> Turn:
        """A turn's calls guarded in order: each one answered already (a refusal, a
        note, a denial), or to run, or waiting for a person's decision (`asking`).
        `offered`: the tools of this turn (None: all the run's)."""
        cap = self.limits.max_calls_per_turn
        turn = Turn(step, [None] * len(calls))
        this_turn: set[tuple[str, str]] = set()
        queued: Counter[str] = Counter()  # this turn's calls on their way to run (max_calls)
        for i, call in enumerate(calls):
            call_id, tool, raw = _unpack(call, i)
            record = known.get(call_id)
            if record is not None and record.outcome is not None:
                turn.outcomes[i] = self._restored(call_id, tool, record.arguments, record.outcome)
                queued[tool] += record.outcome.ran  # ran before a resume: it counts too
                continue
            if i >= cap:
                # Before the repeat guard counts it: asked again later, it is a new call.
                why = (
                    f"not run: the model asked for {len(calls)} tool calls in one turn and "
                    f"at most {cap} run per turn (max_calls_per_turn); this was call "
                    f"{i + 1}. Ask for it again in a later turn if it is still needed."
                )
                refused = _failure(tool, Denied(tool, why))
                turn.outcomes[i] = ToolOutcome(call_id, tool, raw, refused, "call_limit")
                continue
            bound = self._bind(tool, raw)
            if isinstance(bound, BoundCall) and bound.repairs:
                turn.repaired[call_id] = bound
            if isinstance(bound, ToolCallError):
                failed = ToolOutcome(call_id, tool, raw, _failure(tool, bound), "not_required")
                turn.outcomes[i] = failed
                continue
            arguments = bound.canonical if bound else raw
            approval, approved = "not_required", None
            if bound is not None and record is not None and record.state == "running":
                verdict = self._in_flight(call_id, bound, record.arguments)
                if isinstance(verdict, ToolOutcome):
                    turn.outcomes[i] = verdict
                    continue
                approval, approved = verdict
            first = [t for t in self.policy.after(tool) if t not in self._answered]
            if bound is not None and first:
                # Before the repeat guard counts it: asked again after them, it runs.
                turn.outcomes[i] = _refused(call_id, tool, bound, _not_yet(tool, first), "not_yet")
                continue
            if bound is not None and self._spent(tool, queued[tool]):
                why = (
                    f"not run: {tool} has run {self._runs[tool]} times in this run, its most "
                    f"(max_calls). Answer the question from the results you have."
                )
                turn.outcomes[i] = _refused(call_id, tool, bound, why, "max_calls")
                continue
            if bound is not None and offered is not None and tool not in offered:
                # Asked for the tools a result calls for first (`then`), or offered only
                # when the user's message asks for it (`offer_when`).
                why = (
                    _not_now(tool, self._asked_next)
                    if self._asked_next and tool in self._for_this
                    else _not_asked(tool, self.policy.offer_when(tool))
                )
                turn.outcomes[i] = _refused(call_id, tool, bound, why, "not_offered")
                continue
            key = repeats.key(tool, arguments)
            if key in this_turn:
                # A copy of a call earlier in this turn (a small model's flood, or one
                # lookup twice among others): not run twice, nor counted as a repeat.
                turn.outcomes[i] = self._noted(call_id, tool, arguments, _copy(tool), "copy_note")
                continue
            this_turn.add(key)
            verdict = repeats.check(tool, arguments)
            if verdict == "stop":
                turn.stop = RunStopped(
                    "repeated_call",
                    f"stopped: the model called {tool} with the same arguments again after "
                    "being told it already had the result",
                )
                turn.outcomes[i] = self._noted(
                    call_id, tool, arguments, "not run: the run stopped", "repeat_stop"
                )
                continue
            if verdict == "note":
                turn.outcomes[i] = self._noted(
                    call_id, tool, arguments, repeats.note(tool, arguments), "repeat_note"
                )
                continue
            needs_approval = bound is not None and self.policy.requires_approval(tool)
            if bound is not None and needs_approval and approval == "not_required":
                turn.asking.append(Asking(i, call_id, bound))
                queued[tool] += 1
                continue
            turn.to_run.append((i, call_id, tool, bound or raw, approval, approved))
            queued[tool] += 1
        self._checkpoint_screened(turn)
        return turn

    def _checkpoint_screened(self, turn: Turn) -> None:
        """The turn's refusals and notes checkpointed at once, before any person is
        asked or call runs: a run stopped there (Ctrl-C at the prompt, a kill during a
        slow call) would otherwise resume with them unanswered, and screen them again
        without this step's `after`, `offer_when` and `then`."""
        for outcome in turn.outcomes:
            if outcome is None or outcome.restored:
                continue
            if not outcome.sent:
                outcome.sent = truncate(outcome.result.text, self.limits.max_result_chars)
            self._checkpoint_done(outcome.call_id, outcome.sent, outcome.result)
            turn.checkpointed.add(outcome.call_id)

    def _decided(self, turn: Turn, ask: Asking, decision: Decision) -> None:
        """A person's (or a flag's) decision on a call `_screen` left asking."""
        turn.asking.remove(ask)
        tool, bound = ask.bound.tool, ask.bound
        if not decision.allowed:
            denied = Denied(tool, denial(tool, decision.how))
            turn.outcomes[ask.index] = ToolOutcome(
                ask.call_id,
                tool,
                bound.canonical,
                _failure(tool, denied),
                decision.how,
                sha256=bound.sha256,
                approved_sha256=decision.sha256,
            )
            return
        item = (ask.index, ask.call_id, tool, bound, decision.how, decision.sha256)
        turn.to_run.append(item)
        turn.to_run.sort(key=lambda run: run[0])

    def _ran(self, turn: Turn, ran: list[ToolOutcome], repeats: RepeatGuard) -> None:
        for (i, *_), outcome in zip(turn.to_run, ran, strict=True):
            turn.outcomes[i] = outcome
            if outcome.executed:
                repeats.remember(outcome.tool, outcome.arguments, outcome.result.text)

    def _close(self, turn: Turn) -> list[ToolOutcome]:
        """Record the turn's outcomes in the trace (and the checkpoint, those that did
        not run), in the order of the calls; then end the run if a guard said so."""
        done = [o for o in turn.outcomes if o is not None]
        self._answered.update(o.tool for o in done if o.executed and o.result.ok)
        self._called.update(o.tool for o in done if o.executed or o.approval.startswith("denied"))
        self._runs.update(o.tool for o in done if o.executed)
        self._failures += [failed for o in done if (failed := _failed(o))]
        for outcome in done:
            if outcome.restored:
                continue
            if not outcome.executed and outcome.call_id not in turn.checkpointed:
                if not outcome.sent:
                    outcome.sent = truncate(outcome.result.text, self.limits.max_result_chars)
                self._checkpoint_done(outcome.call_id, outcome.sent, outcome.result)
            self._record_tool_call(outcome, turn.step, turn.repaired.get(outcome.call_id))
        if turn.stop is not None:
            raise turn.stop
        return done

    def _execute(self, item: ToRun, budget: Budget) -> ToolOutcome:
        """One call in the sandbox, checkpointed before and after: a kill between the
        two leaves it `running`, with the canonical arguments that started, so a
        resume knows it was in flight and with what. It gets at most the wall budget
        that is left, and does not start once none is."""
        ready = self._ready(item, budget)
        if isinstance(ready, ToolOutcome):
            return ready
        if self._cancel.cancelled:  # not marked started: it never will be
            raise CallCancelled(ready.tool)
        if self.store and self.run_id:
            self.store.call_started(self.run_id, ready.call_id, ready.arguments)
        # The pool gets the very dict that was shown and hashed, not the text again.
        result = self.pool.call(
            ready.tool,
            ready.bound.args if ready.bound else ready.arguments,
            limits=ready.limits,
            settings=ready.settings,
            cancel=self._cancel,
        )
        return self._executed(ready, result)

    def _ready(self, item: ToRun, budget: Budget) -> Ready | ToolOutcome:
        """What one call runs with (its settings, its limits cut to the wall budget
        left), or its refusal when no budget is left."""
        _, call_id, tool, what, approval, approved = item
        bound = what if isinstance(what, BoundCall) else None
        arguments = bound.canonical if bound else str(what)
        sha256 = bound.sha256 if bound else None
        settings = dict(self.call_settings)
        if bound is not None and budget.time_left() > 0:
            settings = self._settings_for(bound, budget.time_left())
        left = budget.time_left()  # after the embedding, which took some of it
        if left <= 0:
            why = (
                f"not run: the run's wall-clock budget (max_wall_s = "
                f"{self.limits.max_wall_s:g} s) was spent before this call could start"
            )
            refused = _failure(tool, Denied(tool, why))
            return ToolOutcome(
                call_id, tool, arguments, refused, approval, sha256=sha256, approved_sha256=approved
            )
        limits = self.policy.limits_for(tool) if bound is not None else None
        own_timeout = limits.timeout_s if limits else None
        if limits is not None and left < limits.timeout_s:
            limits = limits.model_copy(update={"timeout_s": left})
        return Ready(
            call_id, tool, bound, arguments, approval, approved, settings, limits, own_timeout, left
        )

    def _executed(self, ready: Ready, result: ToolResult) -> ToolOutcome:
        """The outcome of a call that ran, checkpointed as done."""
        limits, tool = ready.limits, ready.tool
        cut = limits is not None and limits.timeout_s < (ready.own_timeout or 0)
        if cut and result.error is not None and result.error.kind == "timeout":
            result = result.model_copy(update={"error": self._cut_short(tool, ready.left)})
        sent = truncate(result.text, self.limits.max_result_chars)
        self._checkpoint_done(ready.call_id, sent, result, ran=True)
        return ToolOutcome(
            ready.call_id,
            tool,
            ready.arguments,
            result,
            ready.approval,
            sent,
            executed=True,
            sha256=ready.bound.sha256 if ready.bound else None,
            approved_sha256=ready.approved,
            timeout_s=limits.timeout_s if limits else None,
            wall_left_s=ready.left,
        )

    def _cut_short(self, tool: str, left: float) -> ToolError:
        return ToolError(
            kind="timeout",
            message=(
                f"{tool} was stopped after {left:.3g} s and killed with its "
                f"processes: the run's wall-clock budget (max_wall_s = "
                f"{self.limits.max_wall_s:g} s) ran out while it ran"
            ),
        )

    def _bind(self, tool: str, raw: str) -> BoundCall | ToolCallError | None:
        """The model's text read once into the object that will run; None for a tool
        that does not exist."""
        if self.limits.offer is not None and tool not in self._offered:
            return UnknownTool(tool, self._offered)  # loaded, maybe, but not offered
        if tool not in self.pool.registry:
            return None
        try:
            return bind_leniently(self.pool.registry.get(tool), raw)
        except ArgumentError as exc:
            return BadArguments(tool, str(exc))

    def _settings_for(self, call: BoundCall, within_s: float | None = None) -> dict[str, Any]:
        """The agent's own settings, and the embedding of the argument a tool asks for
        (within `within_s`, what is left of the wall budget)."""
        settings = dict(self.call_settings)
        spec = self.pool.registry.get(call.tool)
        if spec.embed is None or self.embedder is None:
            return settings
        text = call.args.get(spec.embed)
        if isinstance(text, str) and text.strip():
            vector = self.embedder.embed(text, within_s)
            if vector is not None:
                settings[EMBEDDING] = vector
        return settings

    def _checkpoint_done(
        self, call_id: str, sent: str, result: ToolResult, ran: bool = False
    ) -> None:
        """`ran`: it ran in the sandbox (a refusal or a note did not, whatever its `ok`)."""
        if self.store and self.run_id and not self._interrupted:
            kind = result.error.kind if result.error else None
            outcome = Outcome(sent=sent, ok=result.ok, error_kind=kind, ran=ran)
            self.store.call_done(self.run_id, call_id, outcome)

    def _in_flight(
        self, call_id: str, call: BoundCall, started: str
    ) -> tuple[str, str | None] | ToolOutcome:
        """A call that was running when the run stopped may have taken effect: run it
        again only with the arguments that started (`started`, canonical JSON), and
        only if its tool is idempotent or a person approves. Returns how it was allowed
        and the hash approved, or the denied outcome."""
        tool = call.tool
        if started != call.canonical:
            denied = Denied(
                tool,
                f"not run again: {tool} was in flight when the run stopped with the arguments "
                f"{started}, and the checkpointed call now reads as {call.canonical}",
            )
            return ToolOutcome(
                call_id,
                tool,
                call.canonical,
                _failure(tool, denied),
                "denied_changed",
                sha256=call.sha256,
            )
        if self.policy.idempotent(tool):
            return "not_required", None
        why = (
            f"This call of {tool} was in flight when the run stopped: it may already have "
            "taken effect, and running it again may repeat that."
        )
        decision = self.approver.decide(call, why)
        if decision.allowed:
            return decision.how, decision.sha256
        denied = Denied(
            tool,
            f"not run again: {tool} was in flight when the run stopped and may have taken "
            f"effect; it is not idempotent, so it runs again only with a person's approval "
            f"({decision.how})",
        )
        return ToolOutcome(
            call_id,
            tool,
            call.canonical,
            _failure(tool, denied),
            decision.how,
            sha256=call.sha256,
            approved_sha256=decision.sha256,
        )

    def _restored(self, call_id: str, tool: str, arguments: str, done: Outcome) -> ToolOutcome:
        error = (
            None if done.ok else ToolError(kind=done.error_kind or "tool_error", message=done.sent)
        )
        result = ToolResult(
            tool=tool,
            ok=done.ok,
            output=done.sent if done.ok else None,
            error=error,
            duration_ms=0.0,
        )
        return ToolOutcome(call_id, tool, arguments, result, "restored", done.sent, restored=True)

    def _noted(self, call_id: str, tool: str, arguments: str, text: str, how: str) -> ToolOutcome:
        result = ToolResult(tool=tool, ok=True, output=text, error=None, duration_ms=0.0)
        return ToolOutcome(call_id, tool, arguments, result, how, sent=text)

    def _record_tool_call(
        self, outcome: ToolOutcome, step: int, repaired: BoundCall | None = None
    ) -> None:
        r = outcome.result
        self.trace.emit(
            ToolCalled(
                step=step,
                call_id=outcome.call_id,
                tool=outcome.tool,
                arguments=outcome.arguments,
                arguments_sha256=outcome.sha256,
                approved_sha256=outcome.approved_sha256,
                ok=r.ok,
                output=r.output,
                error_kind=r.error.kind if r.error else None,
                error_message=r.error.message if r.error else None,
                error_origin=r.error_origin,
                duration_ms=r.duration_ms,
                worker_pid=r.worker_pid,
                approval=outcome.approval,
                sent_chars=len(outcome.sent),
                timeout_s=outcome.timeout_s,
                wall_left_s=outcome.wall_left_s,
                repairs=list(repaired.repairs) if repaired else [],
                model_arguments=repaired.model_arguments if repaired else None,
                model_call_id=self._model_ids.get(outcome.call_id),
            )
        )
        for attempt in egress_events(step, outcome.call_id, outcome.tool, r):
            self.trace.emit(attempt)
        self.progress("tool", {"outcome": outcome})


def fresh_ids(calls: list[dict[str, Any]], messages: list[dict[str, Any]]) -> dict[str, str]:
    """Give each of a turn's calls whose id an earlier turn of the run already used
    (a server that numbers each turn's calls from `call_0`) a fresh one, in place:
    the checkpoint's rows, the audit trail and the tool messages know a call by its
    id, and two calls under one would overwrite or answer each other. Returns the
    renamed ids, each → the model's own. (`agent.model` makes a turn's ids unique.)"""
    used = {
        str(c.get("id"))
        for m in messages
        if m.get("role") == "assistant"
        for c in m.get("tool_calls") or []
    }
    renamed: dict[str, str] = {}
    for i, call in enumerate(calls):
        given = str(call.get("id") or f"call_{i}")
        fresh, n = given, 2
        while fresh in used:
            fresh, n = f"{given}_{n}", n + 1
        used.add(fresh)
        if fresh != given:
            call["id"] = fresh
            renamed[fresh] = given
    return renamed


def _unpack(call: dict[str, Any], index: int) -> tuple[str, str, str]:
    function = call.get("function") or {}
    call_id = str(call.get("id") or f"call_{index}")
    tool = str(function.get("name") or "")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments) if arguments is not None else "{}"
    return call_id, tool, arguments


FLOOD_FACTOR = 4
FLOOD_MIN = 64
"""A turn of more than this many calls, or `FLOOD_FACTOR` times `max_calls_per_turn`
if more, is not answered call by call (a note, a trace line and a checkpoint each, and
the whole of it sent back): 2,000 calls in one turn took a 20 s run 50 s. The 64 calls
read from an answer's text at most stay within it."""


def _ceiling(cap: int) -> int:
    return max(FLOOD_MIN, FLOOD_FACTOR * cap)


def _flood(calls: int, cap: int) -> RunError:
    return RunError(
        f"the model asked for {calls} tool calls in one turn; at most {cap} run per turn "
        f"(max_calls_per_turn), and a turn of more than {_ceiling(cap)} is not "
        "answered: the run stops"
    )


def _refused(call_id: str, tool: str, bound: BoundCall, why: str, approval: str) -> ToolOutcome:
    """A validated call the loop does not run (`not_yet`, `max_calls`, `not_offered`):
    answered with `why`, under the hash of the arguments it would have run with."""
    return ToolOutcome(
        call_id,
        tool,
        bound.canonical,
        _failure(tool, Denied(tool, why)),
        approval,
        sha256=bound.sha256,
    )


def _failed(outcome: ToolOutcome) -> tuple[str, str, str] | None:
    """(tool, what the model was told, what the user is told: "" where it is not to be
    the answer) of a call that failed as it ran, or that a person did not approve; None
    for any other (a refusal of the loop's own, a note, a success)."""
    error = outcome.result.error
    if outcome.executed and error is not None:
        said = re.sub(r"^\w+(?:Error|Exception): ", "", error.message)  # "LookupError: "
        # A message that repeats what the model sent ("no order with id '...'") would
        # be its words, shown as the tool's: only plain values (an id, a date, a path)
        # make a failure the answer; the model is still told the failure as it is.
        told = f"{outcome.tool} failed: {said}" if _plain_arguments(outcome.arguments) else ""
        return outcome.tool, outcome.sent, told
    if outcome.approval.startswith("denied"):
        told = (
            f"{outcome.tool} needs a person's approval, and it did not get it: nothing was "
            "done. A staff member must approve it first."
        )
        return outcome.tool, outcome.sent, told
    return None


_PLAIN = re.compile(r"[\w.,:/@+-]{0,40}")
"""An argument a failure may repeat in the answer: a word of up to 40 characters."""


def _plain_arguments(arguments: str) -> bool:
    """Every string among a call's arguments (canonical JSON) is `_PLAIN`."""
    try:
        values: list[Any] = [json.loads(arguments)]
    except ValueError:
        return False
    while values:
        value = values.pop()
        if isinstance(value, dict):
            values += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            values += value
        elif isinstance(value, str) and not _PLAIN.fullmatch(value):
            return False
    return True


def _failure(tool: str, exc: ToolCallError) -> ToolResult:
    return ToolResult(
        tool=tool,
        ok=False,
        output=None,
        error=ToolError(kind=exc.kind, message=exc.message),
        duration_ms=0.0,
        error_origin="agent",
    )


def _mentions(text: str, words: list[str]) -> bool:
    """`text` mentions one of `words` at the start of a word, in any case (no words:
    always)."""
    if not words:
        return True
    return any(re.search(rf"(?<!\w){re.escape(w.strip())}", text, re.IGNORECASE) for w in words)


def _copy(tool: str) -> str:
    return (
        f"note: the same call of {tool}, with the same arguments, as an earlier one in this "
        "turn: it ran once, and its result is the one given to that call."
    )


def _not_asked(tool: str, words: list[str]) -> str:
    """What the model is told of a call of a tool offered only when asked for."""
    said = " or ".join(repr(w) for w in words)
    return (
        f"not run: {tool} is offered only when the user's message asks for it (mentions "
        f"{said}), and this one does not. Answer the question that was asked."
    )


def _not_now(tool: str, first: list[str]) -> str:
    """What the model is told of a call made while it was asked to call others first."""
    return (
        f"not run yet: the answer needs {_names(first)} first (the question or an earlier "
        f"result calls for them). Call {_names(first)} now; then call {tool} again if it "
        "is still needed."
    )


def _not_yet(tool: str, first: list[str]) -> str:
    """What the model is told of a call made before the tools it must follow."""
    return (
        f"not run yet: {tool} runs only after {_names(first)} answered in this run. Call "
        f"{_names(first)} first; then call {tool} again if it is still needed."
    )


def _names(tools: list[str]) -> str:
    return tools[0] if len(tools) == 1 else ", ".join(tools[:-1]) + " and " + tools[-1]
