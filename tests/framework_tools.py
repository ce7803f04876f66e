"""Tools the framework adapters' tests give each framework: one that hangs with a
helper process, one that reads a file the sandbox must not show."""

from __future__ import annotations

import subprocess
import time

from tools import tool


@tool
def hang(marker: str) -> str:
    """Start a helper process, then never answer (a carrier API that is down).

    Args:
        marker: A unique sleep length, so the test can find the helper.
    """
    subprocess.Popen(["sleep", marker], start_new_session=True)
    while True:
        time.sleep(60)


@tool
def read_path(path: str) -> str:
    """Read a text file.

    Args:
        path: Absolute path.
    """
    with open(path) as f:
        return f.read()
