"""The demo's recorded transcript: the model's turns, and what each tool call returned
when they were recorded.

The recorded model wrote each turn after seeing the recorded results, so a replay only
means something while the live results agree with them. `differs` says, in plain
words, when one does not: an error where the recording had a result, a different
result, or an error of another kind or with another cause. For the calls whose
recorded outcome is itself an error (the hung tool, the path escape), that error is the
substance: the same kind, named by the same part of the orchestrator, saying the same
thing (`must_say`); the wording around it, such as a duration, may change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sandbox.errors import ErrorKind, SandboxedAgentError

from .loop import ToolOutcome
from .replay import Step, call, say


class RecordingError(SandboxedAgentError):
    """The transcript file cannot be used; the message says what is wrong in it."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recorded(_Frozen):
    """What one call came back with when the transcript was recorded."""

    ok: bool
    output: str | None = None
    """The output, when the call succeeded."""
    kind: ErrorKind | None = None
    origin: Literal["sandbox", "worker", "agent"] | None = None
    """Who named the kind (see `ToolResult.error_origin`)."""
    message: str | None = None
    """The recorded error message, shown when the live one differs."""
    must_say: str | None = None
    """What a live error's message must contain to be the same error."""

    @model_validator(mode="after")
    def _complete(self) -> Recorded:
        if self.ok and self.output is None:
            raise ValueError("a recorded result needs its output")
        if not self.ok and (self.kind is None or self.origin is None or not self.must_say):
            raise ValueError("a recorded error needs its kind, origin and must_say")
        return self


class RecordedCall(_Frozen):
    tool: str
    args: dict[str, Any] = {}
    recorded: Recorded


class RecordedTurn(_Frozen):
    tool_calls: list[RecordedCall] = []
    content: str | None = None
    usage: dict[str, int] = {}

    @model_validator(mode="after")
    def _one_of(self) -> RecordedTurn:
        if bool(self.tool_calls) == (self.content is not None):
            raise ValueError("a turn has either tool_calls or content")
        return self


class Transcript(_Frozen):
    about: str = ""
    question: str
    turns: list[RecordedTurn] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> Transcript:
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise RecordingError(f"{path}: not a usable demo transcript: {exc}") from None

    def steps(self) -> tuple[list[Step], dict[str, RecordedCall]]:
        """The scripted model's steps, and each call id's recorded call."""
        steps, by_id = [], {}
        for turn in self.turns:
            if turn.content is not None:
                steps.append(say(turn.content, usage=turn.usage))
                continue
            step = call(*[(c.tool, c.args) for c in turn.tool_calls], usage=turn.usage)
            assert step.message is not None
            for made, recorded in zip(step.message["tool_calls"], turn.tool_calls, strict=True):
                by_id[made["id"]] = recorded
            steps.append(step)
        return steps, by_id


def differs(recorded: Recorded, live: ToolOutcome) -> str | None:
    """None when the live outcome is the recorded one in substance; else what
    happened live instead, in plain words."""
    result = live.result
    error = result.error
    if recorded.ok:
        if not (live.executed and result.ok):
            return f"live, {_live(live)}"
        if _same_text(recorded.output or "", result.output or ""):
            return None
        return f"live, it returned something else: {result.output}"
    if error is None or error.kind != recorded.kind or result.error_origin != recorded.origin:
        return f"live, {_live(live)}"
    if (recorded.must_say or "").casefold() not in error.message.casefold():
        return f"live, it failed with {error.kind} for another reason: {error.message}"
    return None


def describe_recorded(recorded: Recorded) -> str:
    if recorded.ok:
        return f"recorded, it returned {recorded.output}"
    return f"recorded, it failed with {recorded.kind}: {recorded.message or recorded.must_say}"


def _live(live: ToolOutcome) -> str:
    result = live.result
    if result.ok and live.executed:
        return f"it returned {result.output}"
    if result.ok:
        return f"it was not run ({live.approval})"
    assert result.error is not None
    return f"it failed with {result.error.kind}: {result.error.message}"


def _same_text(recorded: str, live: str) -> bool:
    """JSON compared as values; other text with its spacing ignored."""
    try:
        return bool(json.loads(recorded) == json.loads(live))
    except ValueError:
        return recorded.split() == live.split()
