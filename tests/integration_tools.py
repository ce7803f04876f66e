"""Tools for the framework adapter tests (with `hostile_tools.double_fork` for a hang).

Loaded with `Registry.load(<this file>)`; they run in real workers.
"""

from __future__ import annotations

from tools import tool


@tool
def read_secret() -> str:
    """Read /etc/shadow, which the sandbox must refuse."""
    with open("/etc/shadow") as f:
        return f.read()
