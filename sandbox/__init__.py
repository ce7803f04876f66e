"""The sandbox: tool calls in killable, resource-limited worker processes.

from sandbox import Pool, Limits
"""

from .cancel import CancelToken as CancelToken
from .errors import CallCancelled as CallCancelled
from .errors import ErrorKind as ErrorKind
from .errors import SandboxedAgentError as SandboxedAgentError
from .errors import SandboxUnavailable as SandboxUnavailable
from .errors import ToolCallError as ToolCallError
from .limits import Limits as Limits
from .pool import IsolationWarning as IsolationWarning
from .pool import LimitsPolicy as LimitsPolicy
from .pool import Pool as Pool
from .pool import ToolResult as ToolResult
from .protocol import ToolError as ToolError

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
