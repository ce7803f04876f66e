"""An evaluation suite: a TOML file of cases, each a task with checks on the answer and
on the path the agent took to it.

    name = "worked example"
    policy = "../policies/demo.toml"      # relative to this file; default: built-in
    runs = 3                              # each case, unless it says otherwise

    [[cases]]
    name = "order 12345 is past its window"
    task = "Can I still return order 12345?"
    expect = { contains = ["2025-05-10"] }
    path = { must_call = ["get_order_status", "read_file"], max_steps = 6 }
    # must_call: called and succeeded; must_attempt: called, whatever came back

    [[cases.script]]                      # the scripted model, for --scripted runs
    calls = [{ tool = "get_order_status", args = { order_id = "12345" } }]
    [[cases.script]]
    answer = "No: the return window closed on 2025-05-10."
"""

from __future__ import annotations

import re
import tomllib
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sandbox.errors import ErrorKind, SandboxedAgentError

from ..guardrails import StopReason


class SuiteError(SandboxedAgentError):
    """The suite file cannot be used; the message names the file, the case and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Strict):
    """Checks on the outcome."""

    ended: StopReason = "answer"
    """How the run must end: `answer`, or a guardrail's reason (`repeated_call`, ...)."""
    contains: list[str] = []
    """Every one of these appears in the answer (case-insensitive)."""
    not_contains: list[str] = []
    matches: str | None = None
    """A regular expression the answer must match (searched, case-insensitive)."""
    number: float | None = None
    """Some number in the answer is within `tolerance` of this one."""
    tolerance: float = Field(default=0.0, ge=0)

    @field_validator("matches")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class ToolReturn(_Strict):
    """What one call of a tool must have come back with: its output, or its error."""

    tool: str = Field(min_length=1)
    ok: bool | None = None
    """True: the call succeeded; False: it failed (any kind); unset: either."""
    kind: ErrorKind | None = None
    """The call failed with this kind, as the orchestrator named it (see
    `must_recover_from`)."""
    contains: str | None = None
    """Its output, or its error's message, contains this (case-insensitive)."""

    @model_validator(mode="after")
    def _consistent(self) -> ToolReturn:
        if self.ok and self.kind is not None:
            raise ValueError("a call that succeeded has no error kind: drop ok or kind")
        return self


class PathChecks(_Strict):
    """Checks on the path: the tools called, the steps, the cost, the errors."""

    must_call: list[str] = []
    """Tools that must have been called and succeeded (a failed call does not count)."""
    must_attempt: list[str] = []
    """Tools that must have been called, whatever came back."""
    in_order: bool = False
    """`must_call` in this order (other calls may come between)."""
    must_not_call: list[str] = []
    max_steps: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, ge=0)
    must_recover_from: list[ErrorKind] = []
    """Error kinds (`timeout`, `tool_error`, `denied`, ...) that must occur in a tool
    call, with the run still ending in an answer after them. Only a kind the
    orchestrator named counts: the sandbox's own (a deadline, a limit, a death, a bad
    call), the agent's (`denied`), or a failure a worker reports of its own call
    (`tool_error`, `output_limit`); a kind a worker's frame claims for itself
    (`timeout`, say) does not."""
    must_return: list[ToolReturn] = []
    """Calls that must have come back so (to tell "no such order" from a broken
    database, which are both a `tool_error`)."""
    must_ask_approval: list[str] = []
    """Tools for which a person's approval must have been asked."""


class ToolCallSpec(_Strict):
    tool: str
    args: dict[str, Any] | str = {}
    """A str is sent as the raw arguments text (to script malformed JSON)."""


class Turn(_Strict):
    """One scripted model turn: tool calls, or an answer."""

    calls: list[ToolCallSpec] = []
    answer: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Turn:
        if bool(self.calls) == (self.answer is not None):
            raise ValueError("a turn has either calls or an answer, not both or neither")
        return self


class Case(_Strict):
    name: str = Field(min_length=1)
    task: str = Field(min_length=1)
    runs: int | None = Field(default=None, ge=1, le=100)
    approve: list[str] = []
    """Tools a person approves in advance for this case; others needing approval are
    denied (an evaluation has no one at the terminal)."""
    expect: Expect = Expect()
    path: PathChecks = PathChecks()
    rubric: str | None = None
    """For the optional LLM judge: what a good trajectory does."""
    script: list[Turn] = []


class Suite(_Strict):
    name: str = Field(min_length=1)
    policy: str | None = None
    tools: list[str] = []
    """More tool modules or files, as `--tools` takes them."""
    runs: int = Field(default=1, ge=1, le=100)
    cases: list[Case] = Field(min_length=1)
    base_dir: Path = Path(".")
    source: str = ""

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        seen: set[str] = set()
        for case in self.cases:
            if case.name in seen:
                raise ValueError(f"two cases are named {case.name!r}")
            seen.add(case.name)
        return self

    def runs_of(self, case: Case) -> int:
        return case.runs or self.runs

    @property
    def policy_path(self) -> Path | None:
        return (self.base_dir / self.policy).resolve() if self.policy else None

    def tool_sources(self) -> list[str]:
        """File sources are relative to the suite file; module names stay as they are."""
        out = []
        for source in self.tools:
            path = self.base_dir / source
            out.append(str(path.resolve()) if source.endswith(".py") else source)
        return out


def load_suite(path: str | Path) -> Suite:
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"suite file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: cannot read the suite file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from None
    data = {**data, "base_dir": file.resolve().parent, "source": str(path)}
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_describe(str(path), data, exc)) from None


def _describe(source: str, data: dict[str, Any], exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # An unknown key first: `[[case]]` or `tol = ...` is a typo of the key that is then
    # also missing, and "cases: Field required" alone does not say so.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = list(err["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        cases = data.get("cases") or []
        name = cases[loc[1]].get("name") if loc[1] < len(cases) else None
        where = f"case {name!r}: " if name else f"case {loc[1] + 1}: "
        loc = loc[2:]
    names = [str(p) for p in loc if not isinstance(p, int)]
    key = ".".join(names)
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        parent = names[-2] if len(names) >= 2 else ("case" if where else "suite")
        model = _TABLES.get(parent, Suite)
        accepted = [f for f in model.model_fields if f not in ("base_dir", "source")]
        close = get_close_matches(names[-1], accepted, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = f"unknown key{hint} (accepted: {', '.join(accepted)})"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    elif err["type"] != "missing":  # pydantic's own check: say what was given
        got = repr(err.get("input"))
        message += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
    return f"{source}: {where}{key + ': ' if key else ''}{message}"


_TABLES: dict[str, type[BaseModel]] = {
    "suite": Suite,
    "case": Case,
    "expect": Expect,
    "path": PathChecks,
    "script": Turn,
    "calls": ToolCallSpec,
    "must_return": ToolReturn,
}
