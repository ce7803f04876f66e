"""Every error sandboxed-agent raises, in one tree.

```
SandboxedAgentError
├─ ToolCallError: kind, tool, message; told to the model
│  ├─ UnknownTool, BadArguments, ToolFailed, WorkerCrashed, Denied
│  └─ LimitExceeded: ToolTimeout, MemoryLimit, CpuLimit, OutputLimit, DataLimit
├─ PolicyError: names file, table, key
├─ CallCancelled: the caller cancelled the call (`CancelToken`); no result comes
└─ RunError: model API down, budget spent; ends the run
```

A `ToolCallError` is an answer, not a bug: the pool returns it inside a failed
`ToolResult`, and the agent shows it to the model so that it can correct itself.
The other branches are for the developer or the operator.
"""

from __future__ import annotations

from difflib import get_close_matches
from enum import StrEnum


class ErrorKind(StrEnum):
    """The stable names of the ways a tool call can fail (a public contract)."""

    UNKNOWN_TOOL = "unknown_tool"
    BAD_ARGUMENTS = "bad_arguments"
    TOOL_ERROR = "tool_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    OUTPUT_LIMIT = "output_limit"
    DATA_LIMIT = "data_limit"
    CRASHED = "crashed"
    DENIED = "denied"
    INTERRUPTED = "interrupted"


class SandboxedAgentError(Exception):
    """Root of every error this project raises on purpose."""


class ToolCallError(SandboxedAgentError):
    """A tool call that did not produce an output."""

    kind: ErrorKind = ErrorKind.TOOL_ERROR

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(message)
        self.tool = tool
        self.message = message


class UnknownTool(ToolCallError):
    kind = ErrorKind.UNKNOWN_TOOL

    def __init__(self, tool: str, available: list[str]) -> None:
        names = ", ".join(available) or "none"
        close = get_close_matches(str(tool), available, n=1, cutoff=0.75)
        meant = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(tool, f"unknown tool {tool!r}{meant}; available tools: {names}")
        self.available = available


class BadArguments(ToolCallError):
    kind = ErrorKind.BAD_ARGUMENTS


class ToolFailed(ToolCallError):
    kind = ErrorKind.TOOL_ERROR


class WorkerCrashed(ToolCallError):
    kind = ErrorKind.CRASHED


class Denied(ToolCallError):
    kind = ErrorKind.DENIED


class LimitExceeded(ToolCallError):
    """The call went past one of its limits and was stopped."""


class ToolTimeout(LimitExceeded):
    kind = ErrorKind.TIMEOUT

    def __init__(self, tool: str, timeout_s: float) -> None:
        super().__init__(
            tool, f"{tool} did not finish within {timeout_s:g} s and was killed with its processes"
        )
        self.timeout_s = timeout_s


class MemoryLimit(LimitExceeded):
    kind = ErrorKind.MEMORY_LIMIT


class CpuLimit(LimitExceeded):
    kind = ErrorKind.CPU_LIMIT


class OutputLimit(LimitExceeded):
    kind = ErrorKind.OUTPUT_LIMIT


class DataLimit(LimitExceeded):
    """The tool's `data_dir` holds `max_data_mb` or more (before or after the call)."""

    kind = ErrorKind.DATA_LIMIT


class PolicyError(SandboxedAgentError):
    """A policy file that cannot be used; the message names file, table and key."""


class CallCancelled(SandboxedAgentError):
    """Raised by `Pool.call` whose `CancelToken` was cancelled before it returned: its
    worker and tree were killed (or it never started), and any result is dropped. Not a
    `ToolCallError`, and no `ErrorKind`: it is never told to a model, since whoever
    cancelled has stopped waiting."""

    def __init__(self, tool: str) -> None:
        super().__init__(f"the call of {tool} was cancelled")
        self.tool = tool


class SandboxUnavailable(SandboxedAgentError):
    """The pool could not start or lost its template process."""


class RunError(SandboxedAgentError):
    """Ends an agent run: the model API is down, a budget is spent."""


_BY_KIND: dict[ErrorKind, type[ToolCallError]] = {
    cls.kind: cls
    for cls in (
        UnknownTool,
        BadArguments,
        ToolFailed,
        ToolTimeout,
        MemoryLimit,
        CpuLimit,
        OutputLimit,
        DataLimit,
        WorkerCrashed,
        Denied,
    )
}


def error_for(kind: ErrorKind, tool: str, message: str) -> ToolCallError:
    """The exception for an error that crossed a pipe as `{kind, message}`."""
    cls = _BY_KIND[ErrorKind(kind)]
    exc = cls.__new__(cls)
    ToolCallError.__init__(exc, tool, message)  # the message is already built
    return exc
