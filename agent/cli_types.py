"""What the command line's flags accept, and how a long-running command speaks.

The `argparse` types here raise `ArgumentTypeError` with what was wrong and what is
accepted, so every subcommand's bad flag ends as one line on stderr with exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tools.memory_files import MemoryRequestError, check_namespace

from .terminal import safe

__all__ = [
    "flag_error",
    "memory_namespace",
    "positive_int",
    "say",
    "seconds_between",
    "session_name",
]


def flag_error(flag: str, err: Any) -> str:
    """One pydantic error of a flag's value → what was wrong, with the value given."""
    value = err.get("input")
    if isinstance(value, float) and value != value:  # nan fails every bound
        return f"{flag}: must be a number (got nan)"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{flag}: {str(err['msg']).lower()} (got {text})"


def memory_namespace(text: str) -> str:
    """`--memory-namespace`: refused here rather than by the first memory call, which
    would make it an error the model reads (or, empty, the policy's namespace)."""
    try:
        return check_namespace(text)
    except MemoryRequestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def session_name(text: str) -> str:
    """`chat --session`: an empty name (an unset variable) kept no session, silently."""
    if not 1 <= len(text) <= 200 or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a session name (1 to 200 characters, none of them control characters)"
        )
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """A type for a number of seconds from `low` to `high`, both included."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g} seconds")
        return value

    return seconds


def say(message: str) -> None:
    """One line on stderr, for the servers and workers that run until stopped."""
    print(f"sandboxed-agent: {safe(message)}", file=sys.stderr, flush=True)
