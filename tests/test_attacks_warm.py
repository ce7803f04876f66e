"""A trusted tool answers, then leaves something in its warm worker: a thread that
spins, a timer whose handler forges the next call's answer, a child writing to the
next call's log, a descriptor, an environment variable, a umask, a patched module,
a hook. Nothing of it may run during, or change, the next call: the worker that was
left something is retired (its whole tree killed), and the next call runs in a
worker that finds nothing. A call that leaves nothing keeps its warm worker.
Each under PID namespaces and under the subreaper fallback."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import FILE_LAYERS, pool_without, shared

from sandbox import Limits, Pool
from tools import Registry

pytestmark = pytest.mark.attack

TOOLS = str(Path(__file__).with_name("warm_leftover_tools.py"))
TRUSTED = Limits(reuse_worker=True, timeout_s=20)

KINDS = [
    "spinning_thread",
    "forging_alarm",
    "handler",
    "child",
    "open_fd",
    "swapped_stdout_fd",
    "environment",
    "umask",
    "cwd",
    "patched_json",
    "replaced_stdout",
    "profile_hook",
    "wakeup_fd",
    "faulthandler",
    "native_over_python",
    "native_ignored",
    "async_channel",
    "sysv_shm",
    "sysv_sem",
    "sysv_msg",
    "posix_timer",
]


@pytest.fixture(scope="module", params=["pid-namespace", "subreaper"])
def warm(request: pytest.FixtureRequest) -> Iterator[Pool]:
    from conftest import pid_namespaces_available

    if request.param == "pid-namespace" and not pid_namespaces_available():
        pytest.skip("PID namespaces are not available on this machine")
    registry = Registry.default()
    registry.load(TOOLS)
    with Pool(registry=registry, size=1, process_tree=request.param) as pool:
        yield shared(pool)


def _gone(pid: int) -> bool:
    """Whether `pid` has exited, waiting on the process itself (a generous deadline)."""
    try:
        psutil.Process(pid).wait(timeout=15)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def test_a_call_that_leaves_nothing_keeps_its_warm_worker(warm: Pool) -> None:
    marker = uuid.uuid4().hex
    first = warm.call("leave", {"kind": "nothing", "marker": marker}, limits=TRUSTED)
    second = warm.call("leave", {"kind": "nothing", "marker": marker}, limits=TRUSTED)
    assert first.ok and second.ok, (first, second)
    assert second.worker_pid == first.worker_pid  # the checks retire no clean worker
    assert json.loads(second.output)["left"] == ["nothing"]


@pytest.mark.parametrize("kind", KINDS)
def test_what_a_call_leaves_never_reaches_the_next_call(warm: Pool, kind: str) -> None:
    marker = uuid.uuid4().hex
    first = warm.call("leave", {"kind": kind, "marker": marker}, limits=TRUSTED)
    assert first.ok, first
    # Its worker is retired, and all it started with it: nothing spins on.
    assert _gone(first.worker_pid), f"the worker left a {kind} still runs"
    second = warm.call("leave", {"kind": "nothing", "marker": marker}, limits=TRUSTED)
    assert second.ok, second
    assert second.worker_pid != first.worker_pid
    assert marker not in second.output and marker not in second.logs, second
    seen = json.loads(second.output)
    assert seen == {
        "left": [],
        "env": None,
        "umask": seen["umask"] if kind != "umask" else 0o022,
        "cwd_is_home": True,
        "threads": 1,
    }, seen
    assert seen["umask"] != 0


def test_a_warm_worker_idle_past_its_bound_is_killed() -> None:
    registry = Registry.default()
    registry.load(TOOLS)
    with Pool(registry=registry, size=1, warm_idle_s=0.5) as pool:
        args = {"kind": "nothing", "marker": uuid.uuid4().hex}
        first = pool.call("leave", args, limits=TRUSTED)
        assert first.ok, first
        assert _gone(first.worker_pid)  # no call came: its wall time ran out
        second = pool.call("leave", args, limits=TRUSTED)
        assert second.ok and second.worker_pid != first.worker_pid, second
        assert json.loads(second.output)["left"] == []
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="warm_idle_s must be a number of seconds above 0"):
            Pool(registry=registry, size=1, warm_idle_s=bad)


def test_a_lease_left_on_the_workers_own_log_retires_it(warm: Pool) -> None:
    first = warm.call("lease", {}, limits=TRUSTED)
    assert first.ok, first
    if first.output != "taken":
        # As root the log is root's, not the worker's uid's: no lease can be taken.
        pytest.skip(f"no lease on the worker's log here ({first.output})")
    assert _gone(first.worker_pid)
    second = warm.call("lease", {}, limits=TRUSTED)
    assert second.worker_pid != first.worker_pid, second


@pytest.mark.parametrize("files", list(FILE_LAYERS))
def test_a_call_leaves_no_posix_message_queue_for_the_next(files: str) -> None:
    # A queue lives in the worker's IPC namespace, which lives as long as the worker:
    # one made and closed (not unlinked) would wait there for the next call. Landlock
    # refuses making one; without it, RLIMIT_MSGQUEUE 0 does (EMFILE).
    off, wanted = FILE_LAYERS[files]
    registry = Registry.default()
    registry.load(TOOLS)
    name = f"/leftover-{uuid.uuid4().hex}"
    with pool_without(off, wanted, registry=registry) as pool:
        first = pool.call("message_queue", {"name": name}, limits=TRUSTED)
        second = pool.call("message_queue", {"name": name}, limits=TRUSTED)
    assert first.ok and second.ok, (first, second)
    assert json.loads(first.output)["refused"] is not None, first
    assert json.loads(second.output)["found"] is False, second


def test_a_sysv_object_left_on_the_hosts_namespace_retires_the_worker() -> None:
    # Without an IPC namespace the object is the host's: it outlives the worker
    # whatever the pool does (the conftest guard's business), but the worker that
    # made it is not reused, as for every other leftover.
    from conftest import _remove_sysv, _sysv_objects, host_ipc_key

    registry = Registry.default()
    registry.load(TOOLS)
    before = _sysv_objects()
    try:
        with pool_without(("ipc_namespace",), registry=registry) as pool:
            # This test process's own key: the other test processes' guards ignore it.
            args = {"kind": "sysv_msg", "marker": uuid.uuid4().hex, "key": host_ipc_key()}
            first = pool.call("leave", args, limits=TRUSTED)
            assert first.ok, first
            assert _gone(first.worker_pid)
            assert len(set(_sysv_objects()) - set(before)) == 1  # on the host, still
            args = {"kind": "nothing", "marker": args["marker"]}
            second = pool.call("leave", args, limits=TRUSTED)
            third = pool.call("leave", args, limits=TRUSTED)
            assert second.worker_pid != first.worker_pid, second
            # Another uid's object is not this worker's: it stays warm.
            assert third.worker_pid == second.worker_pid, third
    finally:
        for name in set(_sysv_objects()) - set(before):
            _remove_sysv(name)


def test_a_warm_worker_serves_at_most_max_warm_calls(warm: Pool) -> None:
    limits = Limits(reuse_worker=True, timeout_s=20, max_warm_calls=3)
    args = {"kind": "nothing", "marker": uuid.uuid4().hex}
    pids = [warm.call("leave", args, limits=limits).worker_pid for _ in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3], pids
    assert _gone(pids[0])


def test_a_warm_worker_lives_at_most_max_warm_age_s_however_often_it_is_called(
    warm: Pool,
) -> None:
    # The idle bound alone lets a worker called every 59 s live for ever.
    limits = Limits(reuse_worker=True, timeout_s=20, max_warm_age_s=0.5)
    args = {"kind": "nothing", "marker": uuid.uuid4().hex}
    idle = warm.call("leave", args, limits=limits)
    assert idle.ok, idle
    assert _gone(idle.worker_pid)  # idle far below warm_idle_s: its age ran out
    busy = warm.call("leave", args, limits=limits)
    deadline = time.monotonic() + 30  # generous: the worker is 0.5 s old by then
    while time.monotonic() < deadline:
        again = warm.call("leave", args, limits=limits)
        assert again.ok, again
        if again.worker_pid != busy.worker_pid:
            break
    assert again.worker_pid != busy.worker_pid, "a worker called without a pause lived on"
    assert _gone(busy.worker_pid)


@pytest.mark.parametrize("bad", [{"max_warm_calls": 0}, {"max_warm_age_s": 0}])
def test_the_lifetime_bounds_must_be_above_zero(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="greater than"):
        Limits(reuse_worker=True, **bad)
