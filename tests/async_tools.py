"""Tools for the async tests: `async def` tools, and one that tells when it ran.

Loaded with `Registry.load(<this file>)`; they run in real workers.
"""

from __future__ import annotations

import asyncio
import time

from tools import tool


@tool
async def async_add(a: int, b: int) -> int:
    """Add two numbers after yielding to the event loop once.

    Args:
        a: The first number.
        b: The second number.
    """
    await asyncio.sleep(0)
    return a + b


@tool
async def async_spawn_and_hang(marker: str) -> str:
    """Start `sleep MARKER` in a session of its own, then await far past any deadline.

    Args:
        marker: A unique sleep length, so the test can find the child.
    """
    await asyncio.create_subprocess_exec("sleep", marker, start_new_session=True)
    await asyncio.sleep(3600)
    return "woke up"


@tool
def span(seconds: float) -> list[float]:
    """Sleep, and say when (CLOCK_MONOTONIC, one clock for the whole machine).

    Args:
        seconds: How long to sleep.
    """
    start = time.monotonic()
    time.sleep(seconds)
    return [start, time.monotonic()]
