"""Short scheduler slices: the pool's callers and its workers get one where the kernel
has them (Linux 6.12+); the zygote, other threads and nice values keep their own."""

from __future__ import annotations

import os
import threading
import time

import pytest

from sandbox import Pool, _sched
from tools import Registry


def slice_of(pid: int) -> int | None:
    """The kernel's `se.slice` of a process (ns), from its /proc sched file."""
    try:
        with open(f"/proc/{pid}/sched") as f:
            for line in f:
                if line.startswith("se.slice"):
                    return int(line.split(":")[1])
    except OSError:
        pass
    return None


def test_the_threads_that_call_and_the_workers_get_a_short_slice() -> None:
    if _sched.current_slice_ns() is None or slice_of(os.getpid()) is None:
        pytest.skip("no sched_getattr or no se.slice in /proc here")
    main_before = _sched.current_slice_ns()
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    seen: dict[str, object] = {}

    def caller(pool: Pool) -> None:
        result = pool.call("calculate", {"expression": "6*7"})
        seen["ok"] = result.ok
        seen["after"] = _sched.current_slice_ns()

    # The zygote is forked from the thread that makes the pool: if that one has a
    # short slice already (it called a pool before), the zygote must not keep it.
    _sched.set_short_slice()
    pool = Pool(registry=Registry.default(), size=1)
    _sched.set_default_slice()  # the caller's thread starts without one
    with pool:
        thread = threading.Thread(target=caller, args=(pool,))
        thread.start()
        thread.join()
        spare = pool._template.take_spare("none", 60)
        try:
            # Handed over as soon as it is forked: its first step sets its slice, which
            # under load it may not have run yet (where the kernel keeps one at all).
            settled = seen["after"] == _sched.SLICE_NS
            worker = _settled_slice(spare.host_pid) if settled else slice_of(spare.host_pid)
            zygote = slice_of(pool.template_pid)
        finally:
            spare.kill()
            spare.close()
    if main_before:
        _sched.set_short_slice()
    if seen["after"] != _sched.SLICE_NS and worker != _sched.SLICE_NS:
        pytest.skip("this kernel keeps no slice of a task's own (before Linux 6.12)")
    assert seen == {"ok": True, "after": _sched.SLICE_NS}
    assert worker == _sched.SLICE_NS
    assert zygote != _sched.SLICE_NS
    assert os.getpriority(os.PRIO_PROCESS, 0) == nice


def _settled_slice(pid: int, timeout: float = 30.0) -> int | None:
    """The slice of a worker just forked once it set its own; whatever it is at
    `timeout` (then the assertion says so)."""
    end = time.monotonic() + timeout
    while (found := slice_of(pid)) != _sched.SLICE_NS and time.monotonic() < end:
        time.sleep(0.005)
    return found
