"""Tools the MCP server tests call through real MCP clients; they run in real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tools import tool

# Top-level code runs in the server itself (and its zygote) as `--tools` loads this file:
# over stdio, this line must reach stderr, never the protocol on stdout.
print("mcp_tools loaded")


def _hang_with_helper(marker: str) -> str:
    # The helper leaves the worker's session and ignores SIGTERM: only a kill of the
    # worker's whole tree stops it.
    subprocess.Popen(["sleep", marker], start_new_session=True, preexec_fn=_ignore_sigterm)
    time.sleep(3600)
    return "woke up"


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@tool
def hang_until_deadline(marker: str) -> str:
    """Start a helper that outlives a plain kill, then hang past the deadline.

    Args:
        marker: A unique sleep length, so the test can find the helper.
    """
    return _hang_with_helper(marker)


@tool
def hang_until_cancelled(marker: str) -> str:
    """Start a helper that outlives a plain kill, then hang (the deadline is long).

    Args:
        marker: A unique sleep length, so the test can find the helper.
    """
    return _hang_with_helper(marker)


@tool
def chatty(text: str) -> str:
    """Print to stdout, write to fd 1 and to fd 2, then return the text.

    Args:
        text: Returned as given.
    """
    print("chatty: print")
    os.write(1, b"chatty: fd 1\n")
    os.write(2, b"chatty: fd 2\n")
    return text


@tool
def stamp(seconds: float) -> dict:
    """Sleep, and say when it started and ended (to show which calls overlapped).

    Args:
        seconds: How long to sleep.
    """
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time(), "pid": os.getpid()}


@tool
def approved_action(note: str) -> str:
    """Something a person must allow (the tests' server allows it with --approve).

    Args:
        note: Any text, returned.
    """
    return f"done: {note}"
