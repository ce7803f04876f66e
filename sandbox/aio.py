"""Tool calls from async code, on asyncio or trio (through anyio), cancellable.

    result = await pool.acall("calculate", {"expression": "2 + 2"})

`Pool.call` blocks, so it runs on a worker thread and the event loop keeps running.
At most `pool.size` of these threads run per event loop and pool (a waiting `acall`
holds no thread); the pool's own slots bound the workers across every caller.

Cancelling the awaiting task (`task.cancel()`, a cancel scope, a timeout around it)
kills the call's worker and its whole tree at once, waits (shielded) until they are
reaped, and re-raises the cancellation: nothing of the call outlives the `await`, and
no result comes late. A call still waiting for a slot is dropped without starting.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from .cancel import CancelToken
from .limits import Limits

if TYPE_CHECKING:
    from .pool import Pool, ToolResult

T = TypeVar("T")

_limiters: RunVar[weakref.WeakKeyDictionary[Pool, anyio.CapacityLimiter]] = RunVar(
    "sandbox_pool_limiters"
)
"""Per event loop (a limiter belongs to one loop): each pool's thread limiter."""


async def acall(
    pool: Pool,
    tool: str,
    arguments: Mapping[str, Any] | str | None = None,
    *,
    limits: Limits | None = None,
    settings: Mapping[str, Any] | None = None,
) -> ToolResult:
    """`pool.call(...)` awaited; see the module docstring for cancellation."""
    token = CancelToken()

    def call() -> ToolResult:
        return pool.call(tool, arguments, limits=limits, settings=settings, cancel=token)

    return await run_cancellable(call, token, _limiter(pool))


async def run_cancellable(
    fn: Callable[[], T], token: CancelToken, limiter: anyio.CapacityLimiter | None = None
) -> T:
    """`fn()` on a thread; if the awaiting task is cancelled, `token.cancel()`, then,
    when that killed calls in flight, wait shielded until `fn` has returned (their
    threads reap the trees), and re-raise. `fn`'s own outcome is then dropped."""
    done = threading.Event()

    def run() -> T:
        try:
            return fn()
        finally:
            done.set()

    try:
        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=limiter)
    except anyio.get_cancelled_exc_class():
        if token.cancel():
            with anyio.CancelScope(shield=True):
                # Its own limiter: the shared ones may be full of the calls it waits for.
                await anyio.to_thread.run_sync(done.wait, limiter=anyio.CapacityLimiter(1))
        raise


def _limiter(pool: Pool) -> anyio.CapacityLimiter:
    try:
        by_pool = _limiters.get()
    except LookupError:
        by_pool = weakref.WeakKeyDictionary()
        _limiters.set(by_pool)
    limiter = by_pool.get(pool)
    if limiter is None:
        limiter = by_pool[pool] = anyio.CapacityLimiter(pool.size)
    return limiter
