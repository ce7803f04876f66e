"""Tools: `@tool`, the registry, and the built-in tools.

from tools import tool, Registry
"""

from .context import ToolContext as ToolContext
from .registry import ArgumentError as ArgumentError
from .registry import Registry as Registry
from .registry import ToolSpec as ToolSpec
from .registry import tool as tool
from .schema import ToolDefinitionError as ToolDefinitionError

__all__ = ["ArgumentError", "Registry", "ToolContext", "ToolDefinitionError", "ToolSpec", "tool"]
