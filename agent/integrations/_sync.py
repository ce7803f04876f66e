"""What the adapters of frameworks that pass keyword arguments share: the bridge's
async call run synchronously, and the keyword arguments as our strict schema wants."""

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


def strict_arguments(parameters: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """A framework passes what the model sent, and may leave out a key it treats as
    optional; strict schemas want every key, a null standing for the default. So each
    nullable key left out becomes null. Anything else stays as given (an extra key, a
    required one missing), for the bridge's validation to name."""
    nullable = {
        name
        for name, schema in parameters.get("properties", {}).items()
        if "null" in _types(schema)
    }
    return {**{name: None for name in nullable}, **given}


def _types(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type")
    found = [kinds] if isinstance(kinds, str) else list(kinds or [])
    for option in schema.get("anyOf", []):
        found += _types(option) if isinstance(option, dict) else []
    return found
