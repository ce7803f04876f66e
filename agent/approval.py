"""Human approval for tools whose policy says `requires_approval`.

On a terminal the person sees the tool and its exact arguments and answers yes, no,
or always (for this tool, for the rest of the run). Without a terminal the call is
denied, unless `--approve TOOL` or `--yes` allowed it beforehand.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    allowed: bool
    how: str
    """Goes into the trace: approved_flag, approved_yes, approved_tty, approved_always,
    denied_tty, denied_no_tty."""


@dataclass
class Approver:
    approve: set[str] = field(default_factory=set)
    """Tools allowed in advance (`--approve TOOL`)."""
    yes: bool = False
    """Everything allowed in advance (`--yes`)."""
    interactive: bool = False
    ask: Callable[[str], str] | None = None
    always: set[str] = field(default_factory=set)

    @classmethod
    def for_terminal(cls, approve: list[str], yes: bool) -> Approver:
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
        return cls(set(approve), yes, interactive, _ask_on_terminal if interactive else None)

    def decide(self, tool: str, arguments: str, why: str = "") -> Decision:
        """`why` is shown above the prompt (a re-run after a resume says so)."""
        if self.yes:
            return Decision(True, "approved_yes")
        if tool in self.approve:
            return Decision(True, "approved_flag")
        if tool in self.always:
            return Decision(True, "approved_always")
        if not self.interactive or self.ask is None:
            return Decision(False, "denied_no_tty")
        header = f"\n{why}\n" if why else "\n"
        prompt = (
            f"{header}The model wants to run {tool} with arguments:\n  {arguments}\n"
            f"Allow? [y]es / [n]o / [a]lways for {tool}: "
        )
        while True:
            answer = self.ask(prompt).strip().lower()
            if answer in ("y", "yes"):
                return Decision(True, "approved_tty")
            if answer in ("a", "always"):
                self.always.add(tool)
                return Decision(True, "approved_always")
            if answer in ("n", "no", ""):
                return Decision(False, "denied_tty")


def _ask_on_terminal(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line if line else "n"
