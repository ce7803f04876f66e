"""Deadlines, limits and deaths: every way a worker can end becomes a typed error,
and nothing the call started survives it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import HOSTILE, shared, sleepers, unique_marker

from sandbox import Limits, Pool
from tools import Registry

MARGIN_S = 10.0
"""Kill promptness is measured in bench/; here only 'it ended', on a loaded machine."""


def run(pool: Pool, tool: str, args: dict | None = None, **limits: object):
    started = time.monotonic()
    result = pool.call(tool, args or {}, limits=Limits(**limits))
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    """One pool for the module: each test kills or fails its own call's worker, and the
    pool carrying on after that is a promise too (the zygote stays, the workers go)."""
    registry = Registry.default()
    registry.load(HOSTILE)
    with Pool(registry=registry, size=2) as p:
        yield shared(p)


@pytest.mark.parametrize("tool", ["sleep_forever", "blocking_read", "ignore_sigterm"])
def test_a_hung_tool_is_killed_at_its_deadline(pool: Pool, tool: str) -> None:
    result, elapsed = run(pool, tool, timeout_s=0.5)
    assert not result.ok
    assert result.error.kind == "timeout"
    assert "0.5 s" in result.error.message
    assert elapsed < 0.5 + MARGIN_S


def test_the_pool_carries_on_after_a_kill(pool: Pool) -> None:
    run(pool, "sleep_forever", timeout_s=0.3)
    result, _ = run(pool, "calculate", {"expression": "6*7"})
    assert result.ok and result.output == "42"


@pytest.mark.parametrize("hang", [True, False])
def test_a_double_forked_setsid_grandchild_dies_with_the_call(
    registry: Registry, process_tree: str, hang: bool
) -> None:
    marker = unique_marker()
    with Pool(registry=registry, size=1, process_tree=process_tree) as pool:
        result, elapsed = run(pool, "double_fork", {"marker": marker, "hang": hang}, timeout_s=1)
        if hang:
            assert result.error.kind == "timeout"
        else:
            assert result.ok, result
        assert elapsed < 1 + MARGIN_S
        # The call has returned: the grandchild is gone, or dying with SIGKILL pending
        # (its exit goes on after the call); it runs nothing of its own any more.
        assert sleepers(marker) == []


def test_a_helper_in_a_new_session_does_not_outlive_the_call(
    registry: Registry, process_tree: str
) -> None:
    marker = unique_marker()
    with Pool(registry=registry, size=1, process_tree=process_tree) as pool:
        for _ in range(3):  # a returning tool races its worker's exit: try it a few times
            result, _ = run(pool, "spawn_helper", {"marker": marker})
            assert result.ok
            assert sleepers(marker) == []


def test_a_busy_loop_hits_the_cpu_limit(pool: Pool) -> None:
    result, elapsed = run(pool, "busy_loop", cpu_s=1, timeout_s=60)
    assert result.error.kind == "cpu_limit", result
    assert elapsed < 2 + MARGIN_S


def test_a_fork_bomb_is_contained_and_killed(pool: Pool) -> None:
    result, elapsed = run(pool, "fork_bomb", timeout_s=2, max_processes=16)
    assert result.error.kind in ("timeout", "cpu_limit"), result
    assert elapsed < 2 + MARGIN_S


def test_a_memory_bomb_gets_memory_limit(pool: Pool) -> None:
    result, _ = run(pool, "memory_bomb", memory_mb=128, timeout_s=30)
    assert result.error.kind == "memory_limit", result
    assert "128 MiB" in result.error.message


def test_a_huge_file_write_fails_in_the_tool(pool: Pool) -> None:
    result, _ = run(pool, "huge_file", max_file_size_mb=4, timeout_s=30)
    assert result.error.kind == "tool_error", result
    assert "File too large" in result.error.message


def test_too_many_open_files_fails_in_the_tool(pool: Pool) -> None:
    result, _ = run(pool, "many_files", max_open_files=32)
    assert result.error.kind == "tool_error", result
    assert "Too many open files" in result.error.message


def test_a_huge_return_value_is_an_output_limit(pool: Pool) -> None:
    result, _ = run(pool, "huge_return", {"chars": 5_000_000}, max_output_chars=1000)
    assert result.error.kind == "output_limit", result
    assert "5000000" in result.error.message
    ok, _ = run(pool, "huge_return", {"chars": 1000}, max_output_chars=1000)
    assert ok.ok and len(ok.output) == 1000


def test_a_giant_frame_written_to_the_socket_is_refused_unread(pool: Pool) -> None:
    result, _ = run(pool, "smuggle_frame", max_output_chars=1000, timeout_s=30)
    assert result.error.kind == "output_limit", result


def test_garbage_on_the_socket_is_a_crash(pool: Pool) -> None:
    result, _ = run(pool, "garbage_frame", timeout_s=30)
    assert result.error.kind == "crashed", result
    assert "protocol" in result.error.message


def test_os_exit_is_a_crash_with_the_status(pool: Pool) -> None:
    result, _ = run(pool, "exit_now", {"code": 3})
    assert result.error.kind == "crashed"
    assert "status 3" in result.error.message


def test_a_segfault_is_a_crash_naming_the_signal(pool: Pool) -> None:
    result, _ = run(pool, "segfault")
    assert result.error.kind == "crashed"
    assert "SIGSEGV" in result.error.message
    after, _ = run(pool, "calculate", {"expression": "1+1"})
    assert after.output == "2"


def test_an_exception_is_a_tool_error_with_type_and_message(pool: Pool) -> None:
    result, _ = run(pool, "raise_error", {"message": "carrier API said no"})
    assert result.error.kind == "tool_error"
    assert result.error.message == "RuntimeError: carrier API said no"


def test_an_unserializable_return_is_a_tool_error(pool: Pool) -> None:
    result, _ = run(pool, "return_object")
    assert result.error.kind == "tool_error"
    assert "cannot be turned into JSON" in result.error.message


def test_parallel_calls_run_at_once_without_exceeding_the_pool(registry: Registry) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with Pool(registry=registry, size=2) as pool:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as ex:
            results = list(
                ex.map(
                    lambda _: pool.call("sleep_forever", {}, limits=Limits(timeout_s=1)), range(4)
                )
            )
        elapsed = time.monotonic() - started
    assert [r.error.kind for r in results] == ["timeout"] * 4
    pids = {r.worker_pid for r in results}
    assert len(pids) == 4  # a fresh worker each
    # Two at a time: at least two rounds of one second; never all four at once.
    assert elapsed >= 2.0


def test_a_forged_oversized_result_is_still_an_output_limit(pool: Pool) -> None:
    result, _ = run(pool, "forged_result", {"chars": 5000}, max_output_chars=1000)
    assert result.error.kind == "output_limit", result


def test_a_warm_worker_kills_what_a_call_left_and_is_not_reused(
    registry: Registry, process_tree: str
) -> None:
    markers = [unique_marker(), unique_marker()]
    trusted = Limits(reuse_worker=True)
    with Pool(registry=registry, size=1, process_tree=process_tree) as pool:
        first, second = (
            pool.call("double_fork", {"marker": m, "hang": False}, limits=trusted) for m in markers
        )
        # A process left is a reason to retire the worker (`sandbox.leftovers`).
        assert first.ok and second.ok and first.worker_pid != second.worker_pid
        assert sleepers(markers[0]) == []  # killed before the second call ran
    assert sleepers(markers[1]) == []
