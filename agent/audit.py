"""The audit trail: one JSON line per event, written and flushed as it happens.

A crash or a kill loses nothing written before it. Secrets never reach it: events do
not carry headers or keys, and every line is scrubbed of the API key besides (a model
could echo it back).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox import ToolResult

from .scrubbing import remember_secret, scrub
from .terminal import ascii_json, safe


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str
    ts: float = Field(default_factory=time.time)


class RunStarted(Event):
    event: Literal["run_started"] = "run_started"
    task: str
    model: str
    base_url: str | None
    policy: str
    limits: dict[str, Any]
    run_id: str | None = None
    resumed: bool = False
    """The run goes on from a checkpoint (`run --resume`)."""


class ModelCalled(Event):
    event: Literal["model_call"] = "model_call"
    step: int
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    total_cost_usd: float
    latency_ms: float
    finish_reason: str
    tool_calls: int
    priced: bool
    cached_tokens: int = 0
    """Of `input_tokens`, those the server said came from its prompt cache."""
    text_calls: str | None = None
    """The tool calls were read from the answer's text, in this format (`fenced_json`,
    `tool_call_tags`, `mistral`, `llama`, `bare_json`); None: the API's own."""
    text_call_repairs: list[str] = Field(default_factory=list)
    """What had to be fixed to read the calls from the text (`trailing_commas`)."""
    steered: str | None = None
    """This call asked for the final answer with tools off (`agent.steering`), because
    the model had repeated a call (`repeated_call`) or it was the last step
    (`max_iterations`); None: an ordinary call."""
    follow_ups: list[str] = Field(default_factory=list)
    """This call was offered only these tools and had to call one (`[tools] then`: an
    earlier result's tool calls for them; `first_when`: the question's first call)."""
    tool_choice_refused: str | None = None
    """The server refused this `tool_choice` (HTTP 400 naming it), so the call went
    without it: "required" as the server's own choice, "none" without tools."""
    reviewed: str | None = None
    """This call was asked to check the draft answer it holds before it went to the
    user (`[run] review_answer`): it may look more up, or answer again."""


class ToolCalled(Event):
    event: Literal["tool_call"] = "tool_call"
    step: int
    call_id: str
    tool: str
    arguments: str
    """The validated arguments as canonical JSON: what ran (the model's own text when
    they did not validate, or the tool does not exist)."""
    arguments_sha256: str | None = None
    """sha256 of `arguments`, when they validated."""
    approved_sha256: str | None = None
    """The hash the approval decision named: equal to `arguments_sha256` when a person
    or a flag approved (or denied) this very call; None when no approval was asked."""
    ok: bool
    output: str | None
    error_kind: str | None
    error_message: str | None
    error_origin: str | None = None
    """Who named error_kind: `sandbox` (the pool: deadlines, limits, deaths, bad calls),
    `agent` (a denial, arguments it refused), or `worker` (the worker's frame, which
    the tool can write)."""
    duration_ms: float
    worker_pid: int | None
    approval: str
    """not_required, approved_flag, approved_yes, approved_tty, approved_always, denied_tty,
    denied_no_tty, denied_changed (on resume, a call in flight whose arguments no longer
    read as those that started), restored, or repeat_note / repeat_stop when the call
    was answered with a note instead, or call_limit when it was past the turn's
    max_calls_per_turn, or not_yet when the tools its policy's `after` names had not
    answered yet; from `mcp serve --ask`, approved_client and denied_client,
    denied_client_timeout, denied_client_unable, denied_client_changed, and
    denied_client_replayed (a yes sent again after it ran its call), denied_client_busy
    (too many questions unanswered at once)."""
    sent_chars: int
    """How much of the result entered the context (after truncation)."""
    timeout_s: float | None = None
    """The timeout the call ran under: its policy's, or what was left of the run's wall
    budget when that was less (None: it did not run)."""
    wall_left_s: float | None = None
    """Seconds of the run's wall budget left when the call started."""
    repairs: list[str] = Field(default_factory=list)
    """Slips fixed in the model's arguments before they validated (`agent.repair`):
    trailing_commas, stringified_arguments, arguments_wrapper, string_as_number,
    number_as_string."""
    model_arguments: str | None = None
    """The model's own arguments text, when a repair changed it."""
    model_call_id: str | None = None
    """The id the model gave this call, when a call of an earlier turn of the run already
    had it: the call is known by `call_id`, a fresh one, here, in the checkpoint and in
    the conversation sent back to the model (`agent.loop.fresh_ids`). Two calls of one
    turn under one id are told apart by the model client (`ID_1`)."""
    worker: str | None = None
    """The Temporal worker that ran it (`run --temporal`); None: this process's pool."""


class EgressAttempt(Event):
    """One connection a tool with a network allowlist attempted, as the sandbox's proxy
    saw it; written right after that call's `tool_call`."""

    event: Literal["egress"] = "egress"
    step: int
    call_id: str
    tool: str
    host: str
    """As the tool asked (a name or an address); empty when it never said."""
    port: int
    address: str | None
    """Where the proxy connected, or would have: its own resolution."""
    allowed: bool
    reason: str
    """Why it was refused, or how an allowed one ended."""
    cut: bool = False
    """Allowed, then cut short by the proxy (`max_egress_mb`)."""
    protocol: str
    bytes_out: int
    bytes_in: int
    duration_ms: float


def egress_events(step: int, call_id: str, tool: str, result: ToolResult) -> list[EgressAttempt]:
    return [
        EgressAttempt(step=step, call_id=call_id, tool=tool, **c.model_dump())
        for c in result.connections
    ]


class RunEnded(Event):
    event: Literal["run_ended"] = "run_ended"
    reason: str
    message: str
    answer: str | None
    steps: int
    cost_usd: float
    wall_s: float
    answered_from: str | None = None
    """The answer is this tool's own result (the model's answer said the opposite of
    the verdict of a tool that decides the question), or its reason after the model's
    bare yes or no."""


TraceEvent = RunStarted | ModelCalled | ToolCalled | EgressAttempt | RunEnded


class Trace:
    """A JSON Lines sink; `Trace(None)` records nothing."""

    def __init__(self, path: str | Path | None, secrets: list[str] | None = None) -> None:
        self.path = Path(path) if path else None
        for secret in secrets or []:
            remember_secret(secret)
        self._file: IO[str] | None = None
        if self.path is not None:
            # No parent made on the way: a mistyped directory is an error, not a new tree.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, event: TraceEvent) -> None:
        if self._file is None:
            return
        # ASCII JSON: `tail -f` on a terminal shows escapes, not what a tool returned,
        # and no reader that splits lines on U+2028 or U+0085 cuts an event in two.
        line = ascii_json(event.model_dump(mode="json"))
        self._file.write(scrub(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The events of a trace file; ValueError names the first bad line."""
    events = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}: line {number} is not JSON") from None
            if not isinstance(event, dict) or "event" not in event:
                raise ValueError(f"{path}: line {number} is not a trace event")
            events.append(event)
    return events


def check_events(events: list[dict[str, Any]], path: str | Path) -> None:
    """ValueError naming the first event of a known kind that lacks its fields or holds
    another type (a hand-edited or cut trace), so `trace` says what is wrong instead
    of drawing `model #None`. Fields it does not know are let pass: a trace written by
    another version still reads."""
    for number, event in enumerate(events, 1):
        model = _LENIENT.get(event["event"])
        if model is None:
            continue  # an event kind of another version: drawn as it is
        try:
            model.model_validate(event)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the event"
            raise ValueError(
                f"{path}: event {number} ({safe(str(event['event']))}): {where}: "
                f"{first['msg'].lower()}; a trace holds what `run --trace` wrote"
            ) from None


_LENIENT: dict[str, type[BaseModel]] = {
    m.model_fields["event"].default: type(
        m.__name__, (m,), {"model_config": ConfigDict(extra="ignore")}
    )
    for m in (RunStarted, ModelCalled, ToolCalled, EgressAttempt, RunEnded)
}


def render_timeline(events: list[dict[str, Any]]) -> str:
    """A trace as a readable timeline, one line per event whatever its fields hold:
    every text is escaped (`terminal.safe`), so a tool name with a newline cannot add
    a line and a document's escape codes cannot act on the terminal."""
    if not events:
        return "(empty trace)"
    start = _number(events[0].get("ts"))
    lines = []
    for e in events:
        at = f"{_number(e.get('ts', start)) - start:8.3f}s"
        kind = e["event"]
        if kind == "run_started":
            verb = "resumed" if e.get("resumed") else "started"
            run = f" (run {safe(e['run_id'])})" if e.get("run_id") else ""
            lines.append(
                f"{at}  run {verb}{run}: {safe(repr(e.get('task')))} with {safe(e.get('model'))}"
            )
        elif kind == "model_call":
            lines.append(
                f"{at}  model #{safe(e.get('step'))}: {safe(e.get('input_tokens'))}+"
                f"{safe(e.get('output_tokens'))} tokens, ${_number(e.get('cost_usd')):.6f} "
                f"(total ${_number(e.get('total_cost_usd')):.6f}), "
                f"{_number(e.get('latency_ms')):.0f} ms, finish={safe(e.get('finish_reason'))}"
                f"{_model_notes(e)}"
            )
        elif kind == "tool_call":
            if e.get("ok"):
                outcome = f"ok: {_one_line(e.get('output') or '', 60)}"
            else:
                outcome = _one_line(f"{e.get('error_kind')}: {e.get('error_message')}")
            approval = e.get("approval")
            extra = "" if approval == "not_required" else f" [{safe(approval)}]"
            if e.get("repairs"):
                extra += f" [repaired: {safe(', '.join(map(str, e['repairs'])))}]"
            # A call refused before any worker (a denial, bad arguments) has no pid.
            pid = e.get("worker_pid")
            worker = "no worker" if pid is None else f"pid {safe(pid)}"
            lines.append(
                f"{at}    tool {safe(e.get('tool'))} {safe(e.get('arguments'))} -> {outcome} "
                f"({_number(e.get('duration_ms')):.1f} ms, {worker}){extra}"
            )
        elif kind == "egress":
            verdict = "allowed" if e.get("allowed") else "REFUSED"
            where = f"{safe(e.get('host') or '?')}:{safe(e.get('port'))}"
            address = f" ({safe(e['address'])})" if e.get("address") else ""
            lines.append(
                f"{at}      egress {where}{address} {verdict}: {_one_line(e.get('reason'), 120)}, "
                f"{_number(e.get('bytes_out')):.0f} B out, {_number(e.get('bytes_in')):.0f} B in, "
                f"{_number(e.get('duration_ms')):.1f} ms"
            )
        elif kind == "run_ended":
            lines.append(
                f"{at}  run ended ({safe(e.get('reason'))}): {safe(e.get('steps'))} model calls, "
                f"${_number(e.get('cost_usd')):.6f}, {_number(e.get('wall_s')):.2f} s"
            )
            if e.get("answered_from"):
                lines.append(
                    f"           answered from {safe(e['answered_from'])}'s result (the "
                    "model's answer said the opposite, or gave no reason)"
                )
            if e.get("answer"):
                lines.append(f"           answer: {_one_line(e['answer'], 300)}")
            elif e.get("message"):
                lines.append(f"           {_one_line(e['message'], 300)}")
        else:
            lines.append(f"{at}  {safe(kind)}")
    return "\n".join(lines)


def _model_notes(e: dict[str, Any]) -> str:
    """What a small-model guardrail did on this model call, if anything."""
    notes = ""
    if e.get("text_calls"):
        notes += f", calls read from text ({safe(e['text_calls'])})"
        if e.get("text_call_repairs"):
            notes += f" [repaired: {safe(', '.join(map(str, e['text_call_repairs'])))}]"
    if e.get("steered"):
        notes += f", steered to answer ({safe(e['steered'])})"
    if e.get("follow_ups"):
        notes += f", asked to call next: {safe(', '.join(map(str, e['follow_ups'])))}"
    if e.get("tool_choice_refused"):
        notes += f", tool_choice {safe(e['tool_choice_refused'])} refused by the server: not sent"
    return notes


def _one_line(text: object, limit: int = 160) -> str:
    """Whitespace runs (newlines too) as one space, cut with a marker, then escaped."""
    flat = " ".join(str(text).split())
    return safe(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _number(value: object) -> float:
    """A trace field meant to be a number; anything else (an edited file) reads as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)
