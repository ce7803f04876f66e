"""Warm workers of trusted tools: reused only for an identical call, never mixing two
calls' results or limits, and always starting from an empty directory. Each test runs
with PID namespaces and with the subreaper fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Limits, Pool
from sandbox.limits import WARM_CPU_CALLS
from sandbox.protocol import Again, Call, again_frame, read_again
from tools import Registry
from tools.context import ToolContext

pytestmark = pytest.mark.attack

TRUSTED = Limits(reuse_worker=True)


@pytest.fixture
def warm_pool(registry: Registry, process_tree: str) -> Iterator[Pool]:
    with Pool(registry=registry, size=1, process_tree=process_tree) as pool:
        yield pool


def test_a_warm_worker_serves_only_calls_with_the_same_network_and_limits(
    warm_pool: Pool,
) -> None:
    online = warm_pool.call("net_interfaces", limits=Limits(reuse_worker=True, network=True))
    offline = warm_pool.call("net_interfaces", limits=TRUSTED)
    small = warm_pool.call("net_interfaces", limits=Limits(reuse_worker=True, memory_mb=64))
    again = warm_pool.call("net_interfaces", limits=TRUSTED)
    assert online.ok and offline.ok and small.ok, (online, offline, small)
    assert len({online.worker_pid, offline.worker_pid, small.worker_pid}) == 3
    assert again.worker_pid == offline.worker_pid  # identical calls do share one
    if warm_pool.layers["network_namespace"].active:
        assert json.loads(offline.output)[:-1] == ["lo"]
        assert json.loads(online.output)[:-1] != ["lo"]
    assert int(json.loads(small.output)[-1]) < int(json.loads(offline.output)[-1])


def test_a_warm_worker_serves_only_its_own_root_and_settings(warm_pool: Pool) -> None:
    first = warm_pool.call("echo_text", {"text": "a"}, limits=TRUSTED, settings={"k": 1})
    other = warm_pool.call("echo_text", {"text": "b"}, limits=TRUSTED, settings={"k": 2})
    same = warm_pool.call("echo_text", {"text": "c"}, limits=TRUSTED, settings={"k": 1})
    assert (first.output, other.output, same.output) == ("a", "b", "c")
    assert other.worker_pid != first.worker_pid == same.worker_pid


class _Policy:
    """A policy that answers with the same objects on every call, as a real one does."""

    def __init__(self) -> None:
        self.context = ToolContext(settings={"k": 1})

    def limits_for(self, tool: str) -> Limits:
        return TRUSTED

    def context_for(self, tool: str) -> ToolContext:
        return self.context


def test_settings_changed_in_place_reach_the_next_call_in_another_worker(
    registry: Registry,
) -> None:
    # The pool works out a call's fixed part once per tool, limits and context: a
    # settings dict changed in place must not leave it sending the old ones, nor
    # give the call a warm worker whose walls were set for them.
    policy = _Policy()
    big = "x" * (3 << 20)  # and a frame far past one read's 64 KiB, both ways
    with Pool(policy, registry=registry, size=1) as pool:
        first = pool.call("show_settings")
        echoed = pool.call("echo_text", {"text": big})
        policy.context.settings["k"] = 2
        second = pool.call("show_settings")
        third = pool.call("show_settings")
    assert (first.output, second.output, third.output) == ('{"k": 1}', '{"k": 2}', '{"k": 2}')
    assert first.worker_pid != second.worker_pid == third.worker_pid
    assert echoed.error is not None and echoed.error.kind == "output_limit", echoed
    assert f"{len(big)} characters" in echoed.error.message


def test_a_trusted_tool_cannot_raise_its_limits_for_good(warm_pool: Pool) -> None:
    limits = Limits(reuse_worker=True, max_open_files=40, max_file_size_mb=3, cpu_s=5)
    first = warm_pool.call("raise_limits", limits=limits)
    second = warm_pool.call("raise_limits", limits=limits)
    assert first.ok and second.ok, (first, second)
    assert first.worker_pid == second.worker_pid
    for result in (first, second):
        seen = json.loads(result.output)
        assert seen["RLIMIT_NOFILE"][1:] == [40, 40, 40], seen
        assert seen["RLIMIT_FSIZE"][1:] == [3 << 20, 3 << 20, 3 << 20], seen
        # CPU adds up over calls: the hard limit holds a few calls' cpu_s, no more.
        assert seen["RLIMIT_CPU"][1] <= WARM_CPU_CALLS * 5 + 2, seen
        for name, (_, hard, soft_after, hard_after) in seen.items():
            assert hard_after == hard != -1, name  # never raised, never unlimited
            assert soft_after <= hard_after


def test_an_extra_frame_with_a_made_up_id_is_a_protocol_violation(warm_pool: Pool) -> None:
    forged = warm_pool.call("extra_frame", {"text": "FORGED", "own_id": False}, limits=TRUSTED)
    assert forged.error.kind == "crashed", forged
    assert "broke the protocol: its answer names another call" in forged.error.message
    after = warm_pool.call("extra_frame", {"text": "FORGED", "own_id": False}, limits=TRUSTED)
    assert after.worker_pid != forged.worker_pid
    assert after.error.kind == "crashed"


def test_an_extra_frame_never_answers_a_later_call(warm_pool: Pool) -> None:
    # The tool answers its own call twice, the second time with the right id: the
    # first answer is its own to give, but the second must reach no other call.
    args = {"text": "FORGED", "own_id": True}
    results = [warm_pool.call("extra_frame", args, limits=TRUSTED) for _ in range(4)]
    outputs = [r.output for r in results]
    assert all(r.ok or r.error.kind == "crashed" for r in results), results
    assert "the real answer" not in outputs  # a previous call's answer, delivered late
    # A worker's stale answer is either seen at once (it is retired) or named by the
    # next call given to it, which then fails: no worker gives two ok answers.
    answered = [r.worker_pid for r in results if r.ok]
    assert len(answered) == len(set(answered))
    for result in (warm_pool.call("echo_text", {"text": str(i)}, limits=TRUSTED) for i in range(3)):
        assert result.ok and result.output in {"0", "1", "2"}, result


def test_a_worker_with_a_thread_left_is_retired(warm_pool: Pool) -> None:
    first = warm_pool.call("leave_thread", limits=TRUSTED)
    second = warm_pool.call("leave_thread", limits=TRUSTED)
    assert first.ok and second.ok
    assert first.worker_pid != second.worker_pid


def test_leftovers_that_write_frames_later_reach_no_call(warm_pool: Pool) -> None:
    outputs = [warm_pool.call("late_frame", {"text": "FORGED"}, limits=TRUSTED) for _ in range(3)]
    assert [r.output for r in outputs] == ["returned"] * 3, outputs
    assert len({r.worker_pid for r in outputs}) == 3  # its thread retired each


def test_the_clean_up_empties_any_workdir_and_follows_no_link(
    warm_pool: Pool, tmp_path: Path
) -> None:
    outside = tmp_path / "keep.txt"
    outside.write_text("host data")
    args = {"outside": str(outside)}
    first = warm_pool.call("lock_workdir", args, limits=TRUSTED)
    assert first.ok, first
    assert first.output == "closed,link-to-dir,link-to-file,locked"
    second = warm_pool.call("lock_workdir", args, limits=TRUSTED)
    assert second.ok, second  # it could build the same again: the first was all removed
    assert second.worker_pid == first.worker_pid
    assert outside.read_text() == "host data"
    assert tmp_path.exists()


def test_the_compact_frame_of_a_warm_call_is_exactly_the_again_model() -> None:
    # The hot path writes and reads `Again` by hand: it must say what the model says,
    # and the worker must take nothing else for it (it exits on a None).
    first = Call(tool="echo_text", args={"text": "a"}, limits=TRUSTED, settings={"k": 1})
    later = Call(tool="echo_text", args={"text": 'é\u2028"}'}, limits=TRUSTED, data_left=7)
    frame = again_frame(later)
    assert Again.model_validate_json(frame) == Again(id=later.id, args=later.args, data_left=7)
    read = read_again(frame, first)
    assert read is not None and (read.id, read.args, read.data_left) == (later.id, later.args, 7)
    assert read.reuse_key == first.reuse_key  # the first call's walls, whatever was sent
    good = {"type": "again", "id": later.id, "args": {}, "data_left": None}
    for bad in (
        {**good, "type": "call"},
        {**good, "id": later.id.upper()},
        {**good, "id": later.id + "0"},
        {**good, "args": []},
        {**good, "data_left": True},
        {**good, "data_left": -1},
        {**good, "data_left": 1.0},
        {**good, "limits": {"timeout_s": 1000}},
        {key: value for key, value in good.items() if key != "data_left"},
    ):
        assert read_again(json.dumps(bad).encode(), first) is None, bad
    for text in (b"", b"[]", b"{", b'{"type":"again"' * 2, b"[" * 100_000):
        assert read_again(text, first) is None, text[:20]
