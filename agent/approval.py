"""Human approval for tools whose policy says `requires_approval`.

On a terminal the person sees the tool and its validated arguments, one key per line
and every control character escaped (`binding.argument_lines`), with the hash of the
exact object that will run, and answers yes, no, or always (for this tool, for the
rest of the run). Without a terminal the call is denied, unless `--approve TOOL` or
`--yes` allowed it beforehand. Each decision names the hash it was made for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .binding import BoundCall, argument_lines
from .terminal import safe

MODEL = "The model"
COMMAND = "This command (sandboxed-agent tool)"
"""Who asks when a person or a script runs one call, not a model."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    how: str
    """Goes into the trace: approved_flag, approved_yes, approved_tty, approved_always,
    denied_tty, denied_no_tty; over MCP (`--ask`) approved_client, denied_client,
    denied_client_timeout, denied_client_unable, denied_client_changed,
    denied_client_replayed, denied_client_busy."""
    sha256: str
    """The arguments' hash the decision was made for (`BoundCall.sha256`)."""


@dataclass
class Approver:
    approve: set[str] = field(default_factory=set)
    """Tools allowed in advance (`--approve TOOL`)."""
    yes: bool = False
    """Everything allowed in advance (`--yes`)."""
    interactive: bool = False
    ask: Callable[[str], str] | None = None
    always: set[str] = field(default_factory=set)
    who: str = MODEL
    """Who asks for the calls, as the prompt names it: a script is not "the model"."""

    @classmethod
    def for_terminal(cls, approve: list[str], yes: bool, who: str = "") -> Approver:
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
        ask = _ask_on_terminal if interactive else None
        return cls(set(approve), yes, interactive, ask, who=who or MODEL)

    def decide(self, call: BoundCall, why: str = "") -> Decision:
        """`why` is shown above the prompt (a re-run after a resume says so)."""
        tool = call.tool
        if self.yes:
            return Decision(True, "approved_yes", call.sha256)
        if tool in self.approve:
            return Decision(True, "approved_flag", call.sha256)
        if tool in self.always:
            return Decision(True, "approved_always", call.sha256)
        if not self.interactive or self.ask is None:
            return Decision(False, "denied_no_tty", call.sha256)
        prompt = approval_prompt(call, why, self.who)
        asked = prompt
        while True:
            answer = self.ask(asked).strip().lower()
            if answer in ("y", "yes"):
                return Decision(True, "approved_tty", call.sha256)
            if answer in ("a", "always"):
                self.always.add(tool)
                return Decision(True, "approved_always", call.sha256)
            if answer in ("n", "no", ""):
                return Decision(False, "denied_tty", call.sha256)
            # Asked again, saying why: the same question alone looked like a hang-up.
            said = safe(answer if len(answer) <= 40 else answer[:37] + "...")
            asked = (
                f"\n'{said}' is not an answer: type y (yes), n (no) or a (always); "
                f"Enter alone is no{prompt}"
            )


def denial(tool: str, how: str) -> str:
    """What the model is told when a call needing approval was not approved: what that
    means and what to tell the user, so that its answer says a person must approve
    (and not, say, that a terminal was missing)."""
    why = {
        "denied_tty": "the person asked said no",
        "denied_client": "the person asked said no",
        "denied_no_tty": "no one was there to approve it",
        "denied_client_timeout": "no one answered in time",
        "denied_client_changed": "the answer given was for other arguments",
        "denied_client_replayed": "that answer was already used for an earlier call",
        "denied_client_busy": "too many questions were already waiting for an answer",
    }.get(how, "it was not approved")
    # The decision's code (denied_no_tty) stays in the trace: a model repeats it.
    return (
        f"not run: {tool} needs a person's approval before it runs, and {why}. Nothing "
        f"was done. Do not call {tool} again in this run; tell the user that a staff "
        "member must approve this before it can happen."
    )


def approval_prompt(call: BoundCall, why: str = "", who: str = "") -> str:
    """What the person reads: every line escaped, every value whole."""
    header = f"\n{safe(why)}\n" if why else "\n"
    asked = what_would_run(call, who)
    return f"{header}{asked}\nAllow? [y]es / [n]o / [a]lways for {safe(call.tool)}: "


def what_would_run(call: BoundCall, who: str = "") -> str:
    """The tool and the exact arguments that run if allowed, one key per line, escaped.
    `who` asked for it (the model, unless told otherwise)."""
    shown = "\n".join(f"    {line}" for line in argument_lines(call.args))
    return (
        f"{safe(who or MODEL)} wants to run {safe(call.tool)} with these arguments "
        f"(sha256 {call.sha256[:16]}):\n{shown}"
    )


def _ask_on_terminal(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line if line else "n"
