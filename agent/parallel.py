"""A turn's tool calls on a bounded number of threads, results in the order of the calls.

    results = run_bounded(calls, execute, threads=pool.size)

One thread per call ran the orchestrator out of threads on a large turn, and the
pool runs at most `pool.size` calls at once anyway. A thread that cannot start leaves
its share to those that did; when not one can start, `OutOfResources` ends the run
with one line. Threads are daemons: on Ctrl-C the caller stops waiting at once, the
calls in flight stay in flight (a resume decides), and they die when the pool closes.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from sandbox.errors import RunError

T = TypeVar("T")
R = TypeVar("R")


class OutOfResources(RunError):
    """The system would not give the orchestrator a thread or a process."""


def out_of_resources(exc: BaseException) -> OutOfResources | None:
    """`exc` as an `OutOfResources` when it means no thread or process could be made
    (`can't start new thread`, EAGAIN from fork), else None."""
    if isinstance(exc, OutOfResources):
        return exc
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        what = "a thread"
    elif isinstance(exc, OSError) and exc.errno == errno.EAGAIN:
        what = "a process"
    else:
        return None
    return OutOfResources(
        f"stopped: the system would not start {what} ({exc}); too many threads or "
        "processes are running for this user (see ulimit -u) or on this machine"
    )


def run_bounded(items: Sequence[T], fn: Callable[[T], R], threads: int) -> list[R]:
    """`fn` over `items` on at most `threads` threads; the first exception is raised
    once every started item has ended."""
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []
    lock = threading.Lock()
    pending = iter(range(len(items)))
    all_done = threading.Event()
    stopped = threading.Event()
    left = [len(items)]

    def work() -> None:
        while not stopped.is_set():
            with lock:
                i = next(pending, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # handed to the caller, in its thread
                with lock:
                    errors.append(exc)
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

    if not items:
        return []
    for n in range(min(threads, len(items))):
        thread = threading.Thread(target=work, name=f"sandboxed-agent-call-{n}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            if n == 0:
                raise out_of_resources(exc) or exc from None
            break  # the threads that started take the rest
    try:
        all_done.wait()
    except BaseException:  # Ctrl-C: start nothing more; what runs stays in flight
        stopped.set()
        raise
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot was filled
