"""Hostile tools that move another tool's `root` or `data_dir` with a planted link."""

from __future__ import annotations

import os

from tools import tool
from tools.context import current


@tool
def pa_plant_link(name: str, target: str) -> str:
    """Put a symbolic link in the call's data_dir, in place of what is there.

    Args:
        name: The link's name inside data_dir.
        target: Where it points.
    """
    link = os.path.join(current().data_dir or "", name)
    if os.path.isdir(link) and not os.path.islink(link):
        os.rmdir(link)  # an empty directory there (another tool's root) goes first
    os.symlink(target, link)
    return "planted"


@tool
def pa_write_data(name: str) -> str:
    """Write a file into the call's data_dir.

    Args:
        name: The file's name.
    """
    with open(os.path.join(current().data_dir or "", name), "w") as f:
        f.write("x")
    return "written"
