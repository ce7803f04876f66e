"""What the running call's policy says, for the tools that need to know.

The worker sets it before each call; tools read it. A tool never sees the policy
file itself, only what its table gave it: a `root`, a `data_dir` and `settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolContext:
    root: str | None = None
    """Directory a file tool may read from; None means the tool has no files."""
    data_dir: str | None = None
    """Directory the tool may write to and find again in later calls (its state)."""
    settings: dict[str, Any] = field(default_factory=dict)


_current = ToolContext()


def current() -> ToolContext:
    return _current


def set_current(ctx: ToolContext) -> None:
    global _current
    _current = ctx


def setting(name: str, default: Any = None) -> Any:
    return _current.settings.get(name, default)


def embedding() -> list[float] | None:
    """The vector of the tool's `embed` argument, when the agent has an embeddings
    endpoint; None otherwise (the tool falls back to what needs no model)."""
    value = _current.settings.get(EMBEDDING)
    return [float(x) for x in value] if isinstance(value, list) and value else None


EMBEDDING = "__embedding__"
"""The settings key the agent passes an argument's embedding under."""


def data_dir() -> str:
    """The call's `data_dir`; a clear error when its policy gives none."""
    if not _current.data_dir:
        raise RuntimeError("this tool keeps state and needs a data_dir in its policy table")
    return _current.data_dir
