"""Steering a run to an answer: when the model repeats itself, or the step budget has
one model call left, that call asks for the final answer with tools off.

    steer = after_calls(outcomes) or last_step(budget, messages)
    model.complete(request(messages, steer), tools, tool_choice="none" if steer else None)

Small models often have every fact they need and keep calling tools: a guard that
only stops the run then throws the facts away. The steered call sends the conversation
with one more message, which asks for the answer from the results so far and repeats
the user's question; it is not kept in the conversation (a later turn of `chat` does
not see it). `tool_choice: "none"` keeps tools off where the server honours it; where
it does not and the model asks for tools again, the run stops as before
(`kept_going`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from .guardrails import Budget, RunStopped

Steer = Literal["repeated_call", "max_iterations"]
"""Why a model call was steered: the model repeated a call, or it is the last step."""

INSTRUCTION = (
    "Do not call any more tools. Write your final answer for the user now, using only "
    "the tool results above. If a result says a step needs a person's approval, was "
    "denied or failed, say so plainly and say what happens next."
)


class _Outcome(Protocol):
    approval: str


def after_calls(outcomes: Sequence[_Outcome]) -> Steer | None:
    """A call of the turn repeated an earlier one (answered with a note, not run)."""
    return "repeated_call" if any(o.approval == "repeat_note" for o in outcomes) else None


def last_step(budget: Budget, messages: list[dict[str, Any]]) -> Steer | None:
    """The next model call is the last `max_iterations` allows, and the run has tool
    results to answer from."""
    if budget.steps + 1 < budget.limits.max_iterations:
        return None
    since_question = messages[_last_user(messages) + 1 :]
    return "max_iterations" if any(m.get("role") == "tool" for m in since_question) else None


def request(messages: list[dict[str, Any]], steer: Steer | None) -> list[dict[str, Any]]:
    """What the model is sent: the conversation, and when steered the instruction with
    the user's question again (a small model forgets it after many tool results)."""
    if steer is None:
        return messages
    at = _last_user(messages)
    question = messages[at].get("content") if at >= 0 else None
    text = INSTRUCTION
    if isinstance(question, str) and question.strip():
        text += f"\n\nThe question was: {question.strip()}"
    return [*messages, {"role": "user", "content": text}]


def kept_going(steer: Steer, calls: list[dict[str, Any]], budget: Budget) -> RunStopped:
    """The run ends: asked for the answer with tools off, the model called tools again."""
    names = ", ".join(sorted({str((c.get("function") or {}).get("name")) for c in calls}))
    if steer == "max_iterations":
        return RunStopped(
            steer,
            f"stopped after {budget.steps} model calls (max_iterations = "
            f"{budget.limits.max_iterations}) without a final answer: asked for one with "
            f"tools off at the last step, the model still called {names}",
        )
    return RunStopped(
        steer,
        "stopped: the model repeated a call, was asked for the final answer with tools "
        f"off, and still called {names}",
    )


def _last_user(messages: list[dict[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return -1
