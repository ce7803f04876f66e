"""What the running call's policy says, for the tools that need to know.

The worker sets it before each call; tools read it. A tool never sees the policy
file itself, only the two things its table gave it: a `root` and `settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolContext:
    root: str | None = None
    """Directory a file tool may read from; None means the tool has no files."""
    settings: dict[str, Any] = field(default_factory=dict)


_current = ToolContext()


def current() -> ToolContext:
    return _current


def set_current(ctx: ToolContext) -> None:
    global _current
    _current = ctx


def setting(name: str, default: Any = None) -> Any:
    return _current.settings.get(name, default)
