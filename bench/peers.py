"""Ours and the peers, each behind the same small interface: call `echo(i)` and get
`i` back (checked), call `hang()` with a timeout, and close.

A peer whose package is missing is reported as missing, not as a failure.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import bench_tools
from .bench_tools import echo, hang, spin_1ms

BENCH_TOOLS = os.path.join(os.path.dirname(__file__), "bench_tools.py")


class Missing(Exception):
    """The peer's package is not installed."""


class Peer:
    name = "?"
    kills = True
    """Whether its timeout stops the work (False: it only stops waiting)."""
    reused = True
    """Whether the next call after a kill runs in something that was there before (a
    pool's replacement worker); else every call starts anew, as in table 2."""

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        raise NotImplementedError

    def call_with_timeout(self, grandchild: bool, timeout: float) -> None:
        """Run `hang`; return when the peer reports the timeout."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        return []

    def survivors(self) -> list[Any]:
        """What the last timed-out call left running (beside the marked grandchild),
        for a peer that knows; killed once counted."""
        return []

    def close(self) -> None:
        pass


class Ours(Peer):
    name = "sandboxed-agent"

    def __init__(self, workers: int = 1, reuse: bool = True, spares: int = 2) -> None:
        from sandbox import Limits, Pool
        from tools import Registry

        registry = Registry.default()
        registry.load(BENCH_TOOLS)
        self.pool = Pool(registry=registry, size=workers, spares=spares)
        self.limits = Limits(reuse_worker=reuse)
        self.Limits = Limits

    def wait_spares(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` spare workers are forked and handed over (not a fixed sleep)."""
        end = time.monotonic() + timeout
        spares = self.pool._template.spares
        queue = spares["none"] if "none" in spares else spares[False]  # keyed by network
        while queue.qsize() < count:
            if time.monotonic() > end:
                raise RuntimeError(f"{count} spares were not ready within {timeout} s")
            time.sleep(0.005)

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        result = self.pool.call(fn.__name__, {"x": i}, limits=self.limits)
        if not result.ok:
            raise RuntimeError(result.error)
        return int(result.output)

    def call_with_timeout(self, grandchild: bool, timeout: float) -> None:
        limits = self.Limits(timeout_s=timeout)
        result = self.pool.call("hang", {"grandchild": grandchild}, limits=limits)
        assert result.error is not None and result.error.kind == "timeout", result

    def pids(self) -> list[int]:
        import psutil

        return [self.pool.template_pid] + [
            p.pid for p in psutil.Process(self.pool.template_pid).children()
        ]

    def close(self) -> None:
        self.pool.close()


class InProcess(Peer):
    name = "in-process call"
    kills = False

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        return fn(i)


class _Executor(Peer):
    def __init__(self, executor: cf.Executor) -> None:
        self.ex = executor

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        return self.ex.submit(fn, i).result()

    def call_with_timeout(self, grandchild: bool, timeout: float) -> None:
        future = self.ex.submit(hang, grandchild)
        try:
            future.result(timeout=timeout)
        except cf.TimeoutError:
            return

    def close(self) -> None:
        self.ex.shutdown(wait=False, cancel_futures=True)


class Threads(_Executor):
    name = "ThreadPoolExecutor"
    kills = False

    def __init__(self, workers: int = 1) -> None:
        super().__init__(cf.ThreadPoolExecutor(workers))

    def close(self) -> None:
        bench_tools.STOP.set()  # the only way to end its "hung" threads
        self.ex.shutdown(wait=True)
        bench_tools.STOP.clear()


class Processes(_Executor):
    name = "ProcessPoolExecutor"
    kills = False

    def __init__(self, workers: int = 1) -> None:
        import multiprocessing

        super().__init__(
            cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        )

    def pids(self) -> list[int]:
        return list(getattr(self.ex, "_processes", {}) or {})

    def close(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 9)  # its hung workers would block shutdown forever
            except ProcessLookupError:
                pass
        self.ex.shutdown(wait=True, cancel_futures=True)


class Pebble(Peer):
    name = "pebble.ProcessPool"

    def __init__(self, workers: int = 1) -> None:
        try:
            import pebble
        except ImportError:
            raise Missing("pebble is not installed (pip install -e '.[bench]')") from None
        self.pool = pebble.ProcessPool(max_workers=workers)

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        return self.pool.schedule(fn, args=(i,)).result()

    def call_with_timeout(self, grandchild: bool, timeout: float) -> None:
        future = self.pool.schedule(hang, args=(grandchild,), timeout=timeout)
        try:
            future.result()
        except cf.TimeoutError:
            return

    def pids(self) -> list[int]:
        import psutil

        return [p.pid for p in psutil.Process().children() if p.pid != os.getpid()]

    def close(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=10)


class MultiprocessPool(Peer):
    name = "multiprocess.Pool"
    kills = False

    def __init__(self, workers: int = 1) -> None:
        import multiprocess

        self.pool = multiprocess.get_context("fork").Pool(workers)

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        return self.pool.apply(fn, (i,))

    def call_with_timeout(self, grandchild: bool, timeout: float) -> None:
        import multiprocess

        try:
            self.pool.apply_async(hang, (grandchild,)).get(timeout)
        except multiprocess.TimeoutError:
            return

    def pids(self) -> list[int]:
        return [p.pid for p in self.pool._pool]

    def close(self) -> None:
        # terminate() sends SIGTERM and joins, which hung workers ignore; killing them
        # first can kill one holding the task queue's lock and hang terminate() itself.
        # So it gets its chance, and what is left is killed after.
        pids = self.pids()
        closer = threading.Thread(target=self.pool.terminate, daemon=True)
        closer.start()
        closer.join(1.0)
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        closer.join(10)


class RawPipe(Peer):
    """The floor of a round trip: a forked child echoes bytes on a socket pair, with no
    framing, no validation and no isolation."""

    name = "raw pipe round trip"
    kills = False

    def __init__(self, workers: int = 1) -> None:
        self.sock, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            while data := theirs.recv(64):
                theirs.sendall(data)
            os._exit(0)
        theirs.close()

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        self.sock.sendall(b"%d" % i)
        return int(self.sock.recv(64))

    def close(self) -> None:
        self.sock.close()
        os.waitpid(self.pid, 0)


def fork_per_call(fn: Callable[[int], int], i: int) -> int:
    """os.fork from the orchestrator itself: the child computes and writes to a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, str(fn(i)).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return int(data)


def process_per_call(method: str) -> Callable[[Callable[[int], int], int], int]:
    import multiprocess

    ctx = multiprocess.get_context(method)

    def run(fn: Callable[[int], int], i: int) -> int:
        q = ctx.SimpleQueue()
        p = ctx.Process(target=_put, args=(q, fn, i))
        p.start()
        value = q.get()
        p.join()
        return value

    return run


def _put(q: Any, fn: Callable[[int], int], i: int) -> None:
    q.put(fn(i))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


__all__ = [
    "InProcess",
    "Missing",
    "MultiprocessPool",
    "Ours",
    "Pebble",
    "Peer",
    "Processes",
    "RawPipe",
    "Threads",
    "echo",
    "fork_per_call",
    "process_per_call",
    "spin_1ms",
    "timed",
]
