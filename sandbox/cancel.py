"""Cancel tool calls in flight from another thread: kill the worker and its tree at once.

    token = CancelToken()
    threading.Thread(target=pool.call, args=("slow", {}), kwargs={"cancel": token}).start()
    token.cancel()  # that call's worker and tree are SIGKILLed now; it raises CallCancelled

One token may serve many calls (an agent run passes its token to each of its calls):
`cancel()` kills every call holding it now and makes every later call with it raise
`CallCancelled` before it starts. A cancelled call never returns a result, even one that
was ready when `cancel()` came: whoever cancelled has stopped waiting for it. Its tool
may still have had its effects (it ran until killed, or even finished).

The kill is sent under the token's lock, and the pool disarms a call (under the same
lock) before it closes that worker's pidfd, so a cancel never signals a reused fd.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from .errors import CallCancelled

_log = logging.getLogger(__name__)


class CancelToken:
    """Thread-safe; `cancel()` is idempotent and never blocks on the calls it kills."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._armed: dict[int, Callable[[], None] | None] = {}
        """Calls holding a slot of the pool: their kill, once they hold a worker."""
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> int:
        """Cancel; returns how many calls were in flight (holding a pool slot), each now
        being killed and reaped by its own thread, which then raises `CallCancelled`."""
        with self._lock:
            self._cancelled = True
            kills = list(self._armed.values())
            for kill in kills:
                if kill is not None:
                    _send(kill)
        return len(kills)

    # -- the pool's side ------------------------------------------------------------

    def _enter(self, tool: str) -> int:
        """A call took a slot: raise `CallCancelled` if already cancelled, else its key."""
        with self._lock:
            if self._cancelled:
                raise CallCancelled(tool)
            self._next += 1
            self._armed[self._next] = None
            return self._next

    def _arm(self, key: int, kill: Callable[[], None]) -> None:
        """The call holds a worker: `kill` signals its tree (now, if already cancelled)."""
        with self._lock:
            self._armed[key] = kill
            if self._cancelled:
                _send(kill)

    def _disarm(self, key: int) -> None:
        """The worker is about to be closed or kept: no cancel may signal it any more."""
        with self._lock:
            if key in self._armed:
                self._armed[key] = None

    def _leave(self, key: int, tool: str) -> None:
        """The call is done: raise `CallCancelled` if it was cancelled on the way."""
        with self._lock:
            self._armed.pop(key, None)
            if self._cancelled:
                raise CallCancelled(tool)


Armed = Callable[[Callable[[], None] | None], None]


def holding(cancel: CancelToken | None, tool: str) -> contextlib.AbstractContextManager[Armed]:
    """`Pool.call`'s hold on its token while it has a slot: yields `armed(kill)` to
    call once it holds a worker and `armed(None)` before it keeps or closes it, and
    raises `CallCancelled` on the way in or out if the token was cancelled."""
    if cancel is None:
        return _NO_TOKEN  # most calls: no generator to make and run (2 µs a call)
    return _holding(cancel, tool)


class _NoToken:
    def __enter__(self) -> Armed:
        return _ignore

    def __exit__(self, *exc: object) -> None:
        return None


def _ignore(kill: Callable[[], None] | None) -> None:
    return None


_NO_TOKEN = _NoToken()


@contextlib.contextmanager
def _holding(cancel: CancelToken, tool: str) -> Iterator[Armed]:
    key = cancel._enter(tool)
    try:
        yield lambda kill: cancel._arm(key, kill) if kill else cancel._disarm(key)
    finally:
        cancel._leave(key, tool)


def _send(kill: Callable[[], None]) -> None:
    """A kill that fails (psutil refused a step of the tree walk) must not turn the
    caller's cancel into an error; the call is still marked cancelled, and at worst
    ends at its deadline, killed and reaped by its own thread, as any call does."""
    try:
        kill()
    except Exception:
        _log.warning("cancel: sending the kill failed", exc_info=True)
