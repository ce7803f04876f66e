"""The bridge's async call, from a framework that calls its tools synchronously."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(call: Coroutine[Any, Any, T]) -> T:
    """Run `call` to its end on a loop of its own. Where this thread already runs an
    event loop (a notebook, an async server), the call gets a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(call)
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, call).result()
