"""The rule-based checks of one run, read from its audit trail.

The trail is the evidence: what the model asked for, what each call returned, how the
run ended. Each check that fails says what was expected and what happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .suite import Case, ToolReturn

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


@dataclass
class RunFacts:
    """What one run did, as its trace tells it."""

    reason: str
    answer: str | None
    message: str
    steps: int
    cost_usd: float
    wall_s: float
    tokens: int
    calls: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_trace(cls, events: list[dict[str, Any]]) -> RunFacts:
        ended = next((e for e in reversed(events) if e["event"] == "run_ended"), None)
        if ended is None:
            ended = {"reason": "no_end", "message": "the trace has no run_ended event"}
        models = [e for e in events if e["event"] == "model_call"]
        return cls(
            reason=str(ended.get("reason")),
            answer=ended.get("answer"),
            message=str(ended.get("message", "")),
            steps=int(ended.get("steps", len(models))),
            cost_usd=float(ended.get("cost_usd", 0.0)),
            wall_s=float(ended.get("wall_s", 0.0)),
            tokens=sum(int(e["input_tokens"]) + int(e["output_tokens"]) for e in models),
            calls=[e for e in events if e["event"] == "tool_call"],
        )


def check_outcome(case: Case, facts: RunFacts) -> list[str]:
    expect = case.expect
    failures = []
    if facts.reason != expect.ended:
        failures.append(f"ended with {facts.reason} ({facts.message}), expected {expect.ended}")
    text = facts.answer if facts.answer is not None else facts.message
    folded = text.casefold()
    for needle in expect.contains:
        if needle.casefold() not in folded:
            failures.append(f"the answer does not contain {needle!r}")
    for needle in expect.not_contains:
        if needle.casefold() in folded:
            failures.append(f"the answer contains {needle!r}")
    if expect.matches is not None and not re.search(expect.matches, text, re.IGNORECASE):
        failures.append(f"the answer does not match /{expect.matches}/")
    if expect.number is not None:
        numbers = [_to_float(n) for n in _NUMBER.findall(text)]
        if not any(n is not None and abs(n - expect.number) <= expect.tolerance for n in numbers):
            failures.append(
                f"no number in the answer is within {expect.tolerance:g} of {expect.number:g}"
            )
    return failures


NOT_RUN = ("repeat_note", "repeat_stop")
"""Approvals of calls answered with a note instead of running."""


def succeeded(call: dict[str, Any]) -> bool:
    """The call ran and returned an output (a repeat answered by a note did not run)."""
    return bool(call.get("ok")) and call.get("approval") not in NOT_RUN


SELF_REPORTED = ("tool_error", "output_limit")
"""Kinds a worker's frame may name: failures that only fail its own call."""


def named_by_orchestrator(call: dict[str, Any]) -> bool:
    """Whether the call's error kind was named by the orchestrator: the sandbox's or
    the agent's own finding, or a failure the worker may report of its own call
    (`tool_error`, `output_limit`). Any other kind in a worker's frame is the tool's
    own claim (a tool can write that frame itself); the pool refuses those too."""
    origin = call.get("error_origin")
    return origin in ("sandbox", "agent") or (
        origin == "worker" and call.get("error_kind") in SELF_REPORTED
    )


def check_path(case: Case, facts: RunFacts) -> list[str]:
    path = case.path
    failures = []
    attempted = [c["tool"] for c in facts.calls]
    called = [c["tool"] for c in facts.calls if succeeded(c)]
    for tool in path.must_call:
        if tool in called:
            continue
        tries = [c for c in facts.calls if c["tool"] == tool]
        if not tries:
            failures.append(f"{tool} was never called")
        else:
            failures.append(f"{tool} never succeeded: {_said(tries[-1])}")
    for tool in path.must_attempt:
        if tool not in attempted:
            failures.append(f"{tool} was never called")
    if path.in_order and not _in_order(path.must_call, called):
        failures.append(
            f"the successful calls were not in the order {' → '.join(path.must_call)} "
            f"(made: {' → '.join(called) or 'none'})"
        )
    for tool in path.must_not_call:
        if tool in attempted:
            failures.append(f"{tool} was called")
    if path.max_steps is not None and facts.steps > path.max_steps:
        failures.append(f"took {facts.steps} steps (at most {path.max_steps})")
    if path.max_cost_usd is not None and facts.cost_usd > path.max_cost_usd:
        failures.append(f"cost {facts.cost_usd:.6f} USD (at most {path.max_cost_usd:g})")
    for kind in path.must_recover_from:
        failed = [c for c in facts.calls if c.get("error_kind") == kind]
        if not any(named_by_orchestrator(c) for c in failed):
            claimed = " (only a worker claimed it for itself)" if failed else ""
            failures.append(
                f"no tool call failed with {kind}{claimed}, so nothing was recovered from"
            )
        elif facts.reason != "answer":
            failures.append(f"after the {kind} error the run did not answer ({facts.reason})")
    for expected in path.must_return:
        failures += _check_return(expected, facts.calls)
    for tool in path.must_ask_approval:
        asked = [
            c
            for c in facts.calls
            if c["tool"] == tool and c.get("approval", "").startswith(("approved_", "denied_"))
        ]
        if not asked:
            failures.append(f"no approval was asked for {tool}")
    return failures


def _check_return(expected: ToolReturn, calls: list[dict[str, Any]]) -> list[str]:
    tries = [c for c in calls if c["tool"] == expected.tool]
    if not tries:
        return [f"{expected.tool} was never called"]
    if any(_returned(expected, c) for c in tries):
        return []
    wanted = []
    if expected.ok is not None:
        wanted.append("succeed" if expected.ok else "fail")
    if expected.kind is not None:
        wanted.append(f"fail with {expected.kind} (named by the orchestrator)")
    if expected.contains is not None:
        wanted.append(f"say {expected.contains!r}")
    return [f"no call of {expected.tool} did {' and '.join(wanted)}; it {_said(tries[-1])}"]


def _returned(expected: ToolReturn, call: dict[str, Any]) -> bool:
    ok = succeeded(call)
    if expected.ok is not None and ok != expected.ok:
        return False
    if expected.kind is not None and not (
        call.get("error_kind") == expected.kind and named_by_orchestrator(call)
    ):
        return False
    text = (call.get("output") if ok else call.get("error_message")) or ""
    return expected.contains is None or expected.contains.casefold() in text.casefold()


def _said(call: dict[str, Any]) -> str:
    """What a call came back with, in a few words for a failure line."""
    if succeeded(call):
        return f"returned {_short(call.get('output') or '')}"
    if call.get("ok"):
        return f"was not run ({call.get('approval')})"
    return f"failed with {call.get('error_kind')}: {_short(call.get('error_message') or '')}"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _in_order(wanted: list[str], called: list[str]) -> bool:
    position = 0
    for tool in called:
        if position < len(wanted) and tool == wanted[position]:
            position += 1
    return position == len(wanted)


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None
