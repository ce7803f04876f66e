"""A wall-time bound on a warm worker while it waits for its next call.

A warm worker that left nothing (`sandbox.leftovers`) runs nothing between calls; the
bound is the wall behind that check: whatever a call managed to leave that no check
saw runs for at most `WARM_IDLE_S` once the call is over, and memory a trusted tool
kept is given back. One thread per pool, started with its first warm worker, wakes
when the oldest idle worker's time is up (or its life's: `Limits.max_warm_age_s`)
and has the pool retire it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

WARM_IDLE_S = 60.0
"""Longest a warm worker waits for its next call before the pool kills it."""


class IdleBound:
    """Calls `expire(now)` whenever an idle worker's time may be up; `expire` retires
    the workers idle past the bound and returns when the next one's is (None: none)."""

    def __init__(self, expire: Callable[[float], float | None]) -> None:
        self._expire = expire
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._woken = False
        self._stopped = False
        self._next_at: float | None = None
        """When the thread, waiting, runs `expire` next; None: it waits for no time
        (none is idle), or is not waiting."""

    def started(self) -> bool:
        """Whether the thread runs, started now if need be: False where none can be
        (out of threads, or stopped), and then no worker may be kept warm."""
        with self._cond:
            if self._stopped:
                return False
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="sandbox-warm-idle", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # can't start new thread
                    return False
                self._thread = thread
            return True

    def wake(self, due: float) -> None:
        """A worker went idle (after `started`), its time up at `due`: the thread is
        woken only if it waits for a later time, or none (not on every warm call: the
        workers' times come in the order they went idle, so most wait for another's)."""
        with self._cond:
            if self._next_at is None or due < self._next_at:
                self._woken = True
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            next_at = self._expire(time.monotonic())
            with self._cond:
                if not self._woken and not self._stopped:
                    timeout = None if next_at is None else max(0.0, next_at - time.monotonic())
                    self._next_at = next_at
                    self._cond.wait(timeout)
                    self._next_at = None
                self._woken = False
                if self._stopped:
                    return
