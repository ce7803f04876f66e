"""Where the agent keeps its files by default: the user's data directory."""

from __future__ import annotations

import os
from pathlib import Path


def user_data_dir() -> Path:
    """`$XDG_DATA_HOME/sandboxed-agent`, else `~/.local/share/sandboxed-agent`."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "sandboxed-agent"
