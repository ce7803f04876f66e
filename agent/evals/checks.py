"""The rule-based checks of one run, read from its audit trail.

The trail is the evidence: what the model asked for, what each call returned, how the
run ended. Each check that fails says what was expected and what happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .suite import Case

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


def check_path(case: Case, facts: RunFacts) -> list[str]:
    path = case.path
    failures = []
    called = [c["tool"] for c in facts.calls]
    for tool in path.must_call:
        if tool not in called:
            failures.append(f"{tool} was never called")
    if path.in_order and not _in_order(path.must_call, called):
        failures.append(
            f"the calls were not in the order {' → '.join(path.must_call)} "
            f"(made: {' → '.join(called) or 'none'})"
        )
    for tool in path.must_not_call:
        if tool in called:
            failures.append(f"{tool} was called")
    if path.max_steps is not None and facts.steps > path.max_steps:
        failures.append(f"took {facts.steps} steps (at most {path.max_steps})")
    if path.max_cost_usd is not None and facts.cost_usd > path.max_cost_usd:
        failures.append(f"cost {facts.cost_usd:.6f} USD (at most {path.max_cost_usd:g})")
    for kind in path.must_recover_from:
        at = [i for i, c in enumerate(facts.calls) if c.get("error_kind") == kind]
        if not at:
            failures.append(f"no tool call failed with {kind}, so nothing was recovered from")
        elif facts.reason != "answer":
            failures.append(f"after the {kind} error the run did not answer ({facts.reason})")
    for tool in path.must_ask_approval:
        asked = [
            c
            for c in facts.calls
            if c["tool"] == tool and c.get("approval", "").startswith(("approved_", "denied_"))
        ]
        if not asked:
            failures.append(f"no approval was asked for {tool}")
    return failures


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
