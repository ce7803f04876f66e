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

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from .guardrails import Budget, RunStopped, model_calls

Steer = Literal[
    "repeated_call",
    "max_iterations",
    "contradiction",
    "decided",
    "max_calls",
    "refusal",
    "lookup_failed",
    "acted",
]
"""Why a model call was steered: the model repeated a call, it is the last step, its
answer said the opposite of a tool's verdict, a tool that decides the question
(`[tools.NAME] decides`) has answered, its answer refused where a tool's failure
was the answer, the lookup the question is asked for first failed, or the action the
user asked for ran or was refused by a person."""

_VERDICT = re.compile(r"\s*(Yes|No)\b\s*[:;,.!\u2013\u2014-]")
"""A tool result that opens with its verdict: "No: order 12345 can no longer be ...",
"Yes - ...", "No. ..."."""
_ANSWER_VERDICT = re.compile(
    r"[\W_]*(?:(yes|yeah|yep|sure|certainly|absolutely)|(no|nope|unfortunately))\b",
    re.IGNORECASE,
)
"""An answer that opens with a yes or a no, in the words people use for them."""
_NEGATED = re.compile(
    r"\b(?:not|never|no longer|cannot|unable|too late|expired|past)\b|n't\b", re.IGNORECASE
)
"""A negation or lateness: in the question, it turns what a yes or no means ("Is it too
late to return it?": yes, it cannot be returned); in an answer's first sentence
without a leading yes or no, it says no ("You can no longer return it")."""
_SENTENCE = re.compile(r"[^.!?\n]*")
_BARE = re.compile(r"[\W_]*\w+[\W_]*")
"""An answer of one word (and punctuation): "No.", "**Yes**"."""

INSTRUCTION = (
    "Do not call any more tools. Write your final answer for the user now, using only "
    "the tool results above. If a result says a step needs a person's approval, was "
    "denied or failed, say so plainly and say what happens next."
)


REVIEW = (
    "Before this answer goes to the user, check it against the question and the tool "
    "results above. Does it depend on a fact that no tool has returned yet (a rule of the "
    "shop's policy, today's date, an order's details, an amount)? Then call the tools for "
    "all of those now, in one turn. Does it contradict a tool result? Then correct it. "
    "Otherwise write the final answer again, starting with the direct answer (yes or no, "
    "when the question asks one), then the facts that decide it."
)
"""Sent once with a run's first answer when `[run] review_answer` (`review`)."""


class _Outcome(Protocol):
    approval: str
    tool: str
    executed: bool

    @property
    def result(self) -> Any: ...


def after_calls(
    outcomes: Sequence[_Outcome], decides: Callable[[str], bool] = lambda tool: False
) -> Steer | None:
    """A call of the turn repeated one of an earlier turn (answered with a note, not
    run), or the turn was one call over and over (a flood: three or more copies and
    nothing else), or a tool that `decides` the question answered without an error.
    One lookup twice beside others is not a loop: it is not steered."""
    if any(o.approval == "repeat_note" for o in outcomes):
        return "repeated_call"
    if any(o.approval == "max_calls" for o in outcomes):
        return "max_calls"  # asked again for a tool it has run its most: it is looping
    if any(o.executed and o.result.ok and decides(o.tool) for o in outcomes):
        return "decided"
    copies = sum(o.approval == "copy_note" for o in outcomes)
    return "repeated_call" if copies >= 2 and len(outcomes) - copies == 1 else None


def last_step(budget: Budget, messages: list[dict[str, Any]]) -> Steer | None:
    """The next model call is the last `max_iterations` allows, and the run has tool
    results to answer from."""
    if budget.steps + 1 < budget.limits.max_iterations:
        return None
    turns = since_question(messages)
    return "max_iterations" if any(m.get("role") == "tool" for m in turns) else None


def request(
    messages: list[dict[str, Any]],
    steer: Steer | None,
    decides: Callable[[str], bool] | None = None,
) -> list[dict[str, Any]]:
    """What the model is sent: the conversation, and when steered the instruction with
    the user's question again (a small model forgets it after many tool results).
    `decides`: the tools whose verdict the decided steer asks the answer to follow."""
    if steer is None:
        return messages
    at = _last_user(messages)
    question = messages[at].get("content") if at >= 0 else None
    text = INSTRUCTION
    verdict = _decided(messages, decides) if steer == "decided" else None
    if verdict and asked_as_verdicts(question if isinstance(question, str) else ""):
        # The small model answered "Yes, you can still return it" after "No: ...".
        text += (
            f' A tool result decides it: begin your answer with "{verdict}", as it does, '
            "then say why in a sentence, with the dates or amounts it gives."
        )
    elif verdict:  # "Is it too late ...?": its "No" would read as "not too late"
        text += (
            " A tool result decides it: your answer must say what it says, with the dates "
            "or amounts it gives."
        )
    if isinstance(question, str) and question.strip():
        text += f"\n\nThe question was: {question.strip()}"
    return [*messages, {"role": "user", "content": text}]


def _decided(
    messages: list[dict[str, Any]], decides: Callable[[str], bool] | None = None
) -> str | None:
    """The verdict ("Yes" or "No") the latest tool result opens with, if it does; with
    `decides`, that of the latest turn's result of a deciding tool (a document read in
    the same turn that opens "Yes:" is not what decides it)."""
    last = messages[-1] if messages else {}
    content = last.get("content")
    if last.get("role") != "tool" or not isinstance(content, str):
        return None
    if decides is not None:
        found = verdict_result(messages, decides)
        if found is None or not found[0] or not decides(found[0]):
            return None
        content = found[1]
    verdict = _VERDICT.match(content)
    return verdict.group(1) if verdict else None


def review(messages: list[dict[str, Any]], draft: dict[str, Any]) -> list[dict[str, Any]]:
    """What the model is sent to check its draft answer: the conversation, the draft,
    and `REVIEW`. Neither is kept: the reply (calls, or the answer again) is."""
    return [*messages, draft, {"role": "user", "content": REVIEW}]


def contradiction(
    answer: str, messages: list[dict[str, Any]], decides: Callable[[str], bool] | None = None
) -> str | None:
    """The tool result whose verdict the answer turns round: the answer says yes ("Yes",
    "Sure", ...) and the latest tool result that opens with a verdict says "No:", or the
    answer says no ("No", "Unfortunately", or a first sentence such as "You can no
    longer return it") and the result "Yes:". A small model copied "its window closed
    on 2025-05-10" behind "Yes, you can still return it". None: no verdict to go
    against, the answer agrees or says neither, or the question is asked the other way
    round from the tools' verdicts ("Is it too late to ...?": there "Yes" agrees with
    "No:"), where a yes and a no cannot be compared. `decides`: as `verdict_result`."""
    found = verdict_result(messages, decides)
    said = answer_says(answer)
    if found is None or said is None or not asked_as_verdicts(latest_question(messages) or ""):
        return None
    content = found[1]
    verdict = _VERDICT.match(content)
    return content if verdict and verdict.group(1).lower() != said else None


def answer_says(answer: str | None) -> Literal["yes", "no"] | None:
    """What an answer says to a yes-or-no question: a leading yes or no in any of its
    common words, else "no" when its first sentence holds a negation; None: neither."""
    text = answer or ""
    opening = _ANSWER_VERDICT.match(text)
    if opening:
        return "yes" if opening.group(1) else "no"
    first = _SENTENCE.match(text.strip())
    return "no" if first and _NEGATED.search(first.group(0)) else None


_SENTENCES = re.compile(r"(?:[^.!?\n]|[.!?](?=[^\s.!?]))+[.!?]*")
"""Sentences; a point inside a number ("89.99") does not end one."""
_TO_YOU = re.compile(
    r"\b(?:please|(?:can|could|would|will)\s+you\b(?!\s+(?:tell|check|explain|confirm|say|"
    r"see|let)\b))",
    re.IGNORECASE,
)
"""A sentence that asks someone to do it: "please", "can you ..." (not "can you tell me
whether ...")."""


def requests_action(question: str, words: list[str]) -> bool:
    """The message asks for an action named by one of `words` to be done, not whether it
    could be: a sentence that mentions one is not a question ("Refund order 12345.", "I
    want my money back"), or asks someone to do it ("Please refund it?", "Can you refund
    it?"). "Can I get a refund for order 12345?" and "Is it too late for a refund?" ask
    whether: a tool that decides the question answers those."""
    for sentence in _SENTENCES.findall(question):
        if not any(_starts_word(sentence, w) for w in words):
            continue
        if not sentence.rstrip().endswith("?") or _TO_YOU.search(sentence):
            return True
    return False


def _starts_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word.strip())}", text, re.IGNORECASE) is not None


def asked_as_verdicts(question: str) -> bool:
    """The question asks in the sense of the tools' verdicts ("Can I still return
    it?"), not turned round by a negation ("Is it too late to return it?", "Can't I
    return it?"): only then does an answer's yes mean a verdict's Yes."""
    return not _NEGATED.search(question)


def verdict_result(
    messages: list[dict[str, Any]], decides: Callable[[str], bool] | None = None
) -> tuple[str, str] | None:
    """(tool, text) of the latest tool result since the user's question that opens
    with a verdict ("Yes:" or "No:"), of a tool that `decides` where one has given
    one: a document that opens "Yes:" (`read_file`) does not outvote the deciding
    verdict, nor is the model told to begin with its word. None: there is none."""
    turns = since_question(messages)
    found: tuple[str, str] | None = None
    for at in range(len(turns) - 1, -1, -1):
        message = turns[at]
        content = message.get("content")
        if message.get("role") != "tool" or not isinstance(content, str):
            continue
        if _VERDICT.match(content):
            tool = _tool_of(turns[:at], message.get("tool_call_id"))
            if decides is None or (tool and decides(tool)):
                return tool, content
            found = found or (tool, content)
    return found


def _tool_of(before: list[dict[str, Any]], call_id: Any) -> str:
    """The tool a result answers: the call of its id in the assistant turn it follows
    (the nearest before it), never another turn's; "" if that turn has none. A server
    that reuses an id across turns would otherwise pass a document's text for the
    deciding tool's result (`overruled`)."""
    for message in reversed(before):
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name") or "")
        return ""
    return ""


def overruled(
    answer: str, messages: list[dict[str, Any]], decides: Callable[[str], bool]
) -> tuple[str, str] | None:
    """When `answer` turns round the verdict of a tool that `decides` the question:
    (that tool, the answer built from its own result, marked as such); when it is that
    verdict's word alone ("No."), the word and the result's reason. None: neither, or
    the verdict is another tool's (its contradiction is steered, not replaced). The
    small model answered "Yes, you can still return it ... its window closed on
    2025-05-10" again after being shown the result, and, asked to begin with "No",
    wrote "No." and nothing else: the tool's words are the answer, or its reason."""
    found = verdict_result(messages, decides)
    if found is None or not found[0] or not decides(found[0]):
        return None
    tool, result = found
    if contradiction(answer, messages, decides) is not None:
        return tool, answer_from(tool, result)
    if _BARE.fullmatch(answer or "") and answer_says(answer) is not None:
        return tool, with_reason(answer, tool, result)
    return None


def with_reason(answer: str, tool: str, result: str) -> str:
    """A bare yes or no, with the deciding result's reason after it, and a line that
    says whose it is: "No." + "Order 12345 can no longer be returned; ..."."""
    verdict = _VERDICT.match(result)
    reason = result[verdict.end() :].strip() if verdict else result.strip()
    reason = reason[:1].upper() + reason[1:]
    return (
        f"{answer.strip()} {reason}\n\n(The reason is {tool}'s own result: the model's "
        "answer gave none.)"
    )


def answer_from(tool: str, result: str) -> str:
    """The final answer made of a deciding tool's result, and a line that says so."""
    return (
        f"{result.strip()}\n\n(This answer is {tool}'s own result: the model's answer said "
        "the opposite of it.)"
    )


def answer_cut(tool: str, result: str) -> str:
    """The final answer made of a deciding tool's result, when the model's was cut off."""
    return (
        f"{result.strip()}\n\n(This answer is {tool}'s own result: the model's answer was "
        "cut off at its output limit.)"
    )


def recheck(
    messages: list[dict[str, Any]], draft: dict[str, Any], conflict: str
) -> list[dict[str, Any]]:
    """What the model is sent when its answer turned a tool's verdict round: the draft,
    the result it contradicts and the question again, tools off. Not kept."""
    said = str(draft.get("content") or "").strip().split()[0].strip(",.:;!")
    verdict = _VERDICT.match(conflict)
    begin = f' Begin it with "{verdict.group(1)}".' if verdict else ""
    text = (
        f'Your answer begins with "{said}", but a tool result says:\n{conflict.strip()}\n\n'
        f"Write the final answer again so that it agrees with the tool results.{begin} Do "
        "not call any more tools."
    )
    return _again(messages, draft, text)


def _again(
    messages: list[dict[str, Any]], draft: dict[str, Any], text: str
) -> list[dict[str, Any]]:
    """The conversation with the draft answer and `text` about it, then the question
    again (a small model answers the last thing it read)."""
    question = latest_question(messages)
    if question and question.strip():
        text += f"\n\nThe question was: {question.strip()}"
    return [*messages, draft, {"role": "user", "content": text}]


_REFUSAL = re.compile(
    r"[\W_]*(?:(?:(?:I['\u2019]?m|I am)\s+)?(?:very\s+)?sorry\W*(?:but\s+)?)?"
    r"(?:I\s+(?:can(?:no|['\u2019])t|am\s+(?:unable|not\s+able)\s+to|won['\u2019]?t|"
    r"(?:do\s+not|don['\u2019]t)\s+know\s+how\s+to)|unable\s+to)\s+(?:assist|help)\b",
    re.IGNORECASE,
)
"""A canned refusal: "I can't assist with that.", "I'm sorry, but I cannot help with
this request"."""


def refuses(answer: str | None) -> bool:
    """The answer is a canned refusal and little else (the small model answered a
    lookup's "no order with id '99999'" with "I can't assist with that")."""
    text = (answer or "").strip()
    return len(text) <= 200 and _REFUSAL.match(text) is not None


def explain(
    messages: list[dict[str, Any]], draft: dict[str, Any], failure: str
) -> list[dict[str, Any]]:
    """What the model is sent when its answer refused and a tool's failure in the run
    is what the user needs to hear: the draft, that failure and the question again,
    tools off. Not kept."""
    text = (
        "Your answer refuses, but the question has an answer: a tool said\n"
        f"{failure.strip()}\n\nWrite the final answer again and tell the user plainly "
        "what this means for their question (what was not found, failed or needs a "
        "person's approval), with the names and numbers it gives. Do not call any more "
        "tools."
    )
    return _again(messages, draft, text)


def answer_from_failure(tool: str, said: str) -> str:
    """The final answer made of a tool's failure, when the model's answer refused."""
    return (
        f"{said.strip()}\n\n(This answer is {tool}'s own result: the model's answer refused "
        "to say it.)"
    )


_AMOUNT = re.compile(
    r"(?<![\w.,-])(?:[$\u20ac\u00a3]\s?(?P<cur>\d[\d,]*(?:\.\d+)?)|(?P<dec>\d[\d,]*\.\d+))(?![\w.-]*\d)"
)
"""An amount in an answer: a number with a currency sign ("$1.31", "€30") or with a
decimal point ("18.40"). Whole numbers without a sign (days, ids, counts) and dates are
not amounts."""
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def unfounded(answer: str, messages: list[dict[str, Any]]) -> list[str]:
    """The amounts `answer` gives that no tool result since the question and no user
    message holds, to the cent (29.99 or 30.00 for calculate's 29.9967; a whole amount
    for one that rounds to it). The small model read an order's total of 18.4 as
    "$1.31". Empty: every amount is founded, or the answer gives none."""
    known: set[float] = set()
    sources = [m for m in messages if m.get("role") == "user"]
    sources += [m for m in since_question(messages) if m.get("role") == "tool"]
    for message in sources:
        content = message.get("content")
        if isinstance(content, str):
            known.update(float(n) for n in _NUMBER.findall(content.replace(",", "")))
    found = []
    for match in _AMOUNT.finditer(answer or ""):
        said = (match.group("cur") or match.group("dec")).replace(",", "")
        try:
            value = float(said)
        except ValueError:
            continue
        whole = "." not in said
        if not any(abs(value - k) <= 0.01 + 1e-9 or (whole and round(k) == value) for k in known):
            found.append(match.group(0).strip())
    return found


def amounts(
    messages: list[dict[str, Any]], draft: dict[str, Any], said: list[str]
) -> list[dict[str, Any]]:
    """What the model is sent when its answer gives amounts no tool result holds: the
    draft, those amounts and the question again, tools on (an amount worked out is
    `calculate`'s to work out). Not kept: the reply takes the draft's place."""
    listed = ", ".join(dict.fromkeys(said))
    text = (
        f"Your answer gives {listed}, which no tool result above and no message of the "
        "user holds. Check each amount against the tool results: copy an amount a result "
        "gives exactly as it gives it, and work out any other with calculate. Then write "
        "the final answer again."
    )
    return _again(messages, draft, text)


def kept_going(steer: Steer, calls: list[dict[str, Any]], budget: Budget) -> RunStopped:
    """The run ends: asked for the answer with tools off, the model called tools again."""
    names = ", ".join(sorted({str((c.get("function") or {}).get("name")) for c in calls}))
    if steer == "contradiction":
        return RunStopped(steer, f"stopped: asked to correct its answer, the model called {names}")
    if steer == "decided":
        return RunStopped(
            steer,
            f"stopped: a tool that decides the question had answered, the model was asked "
            f"for the final answer with tools off, and still called {names}",
        )
    if steer == "refusal":
        return RunStopped(
            steer,
            "stopped: asked to tell the user what a tool's failure means, the model "
            f"called {names}",
        )
    if steer == "acted":
        return RunStopped(
            steer,
            "stopped: the action asked for was done or refused, the model was asked for the "
            f"final answer with tools off, and still called {names}",
        )
    if steer == "lookup_failed":
        return RunStopped(
            steer,
            "stopped: the lookup the question turns on failed, the model was asked for the "
            f"final answer with tools off, and still called {names}",
        )
    if steer == "max_calls":
        return RunStopped(
            steer,
            f"stopped: the model asked again for a tool it had run its most (max_calls), was "
            f"asked for the final answer with tools off, and still called {names}",
        )
    if steer == "max_iterations":
        return RunStopped(
            steer,
            f"stopped after {model_calls(budget.steps)} (max_iterations = "
            f"{budget.limits.max_iterations}) without a final answer: asked for one with "
            f"tools off at the last step, the model still called {names}",
        )
    return RunStopped(
        steer,
        "stopped: the model repeated a call, was asked for the final answer with tools "
        f"off, and still called {names}",
    )


def latest_question(messages: list[dict[str, Any]]) -> str | None:
    """The user's latest message, as text (None: there is none)."""
    at = _last_user(messages)
    content = messages[at].get("content") if at >= 0 else None
    return content if isinstance(content, str) else None


def since_question(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages after the user's latest one: the run's turns so far."""
    return messages[_last_user(messages) + 1 :]


def _last_user(messages: list[dict[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return -1
