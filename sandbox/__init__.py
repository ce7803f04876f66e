"""The sandbox: tool calls in killable, resource-limited worker processes.

from sandbox import Pool, Limits
"""

from typing import TYPE_CHECKING, Any

from .cancel import CancelToken as CancelToken
from .errors import CallCancelled as CallCancelled
from .errors import ErrorKind as ErrorKind
from .errors import SandboxedAgentError as SandboxedAgentError
from .errors import SandboxUnavailable as SandboxUnavailable
from .errors import ToolCallError as ToolCallError
from .limits import Limits as Limits
from .protocol import ToolError as ToolError

if TYPE_CHECKING:
    from .pool import IsolationWarning as IsolationWarning
    from .pool import LimitsPolicy as LimitsPolicy
    from .pool import Pool as Pool
    from .pool import ToolResult as ToolResult

_FROM_POOL = ("IsolationWarning", "LimitsPolicy", "Pool", "ToolResult")


def __getattr__(name: str) -> Any:
    """The pool's names, imported on first use: the zygote imports `sandbox.zygote`,
    and with it this package, but never the pool (its threads, `multiprocess`,
    asyncio for the egress proxy); every worker it forks copies, and tears down, what
    it imported (4.5 MiB of its 24 MiB here)."""
    if name in _FROM_POOL:
        from . import pool

        return getattr(pool, name)
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")


__all__ = [
    "CallCancelled",
    "CancelToken",
    "ErrorKind",
    "IsolationWarning",
    "Limits",
    "LimitsPolicy",
    "Pool",
    "SandboxUnavailable",
    "SandboxedAgentError",
    "ToolCallError",
    "ToolError",
    "ToolResult",
]
