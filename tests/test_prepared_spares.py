"""Spares set up ahead for a call's profile (limits, root): a spare serves only a call
of exactly the profile it was made for, and nothing of one call reaches the next."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HOSTILE, shared

from sandbox import Limits, Pool
from sandbox.channel import PeerGone, send_frame
from sandbox.protocol import Call, Profile
from sandbox.template import Template, WorkerHandle
from tools import Registry, ToolContext

ARRIVAL_S = 60.0
"""How long a requested spare may take to arrive on a loaded machine."""


class Roots:
    """A policy whose document root the test moves between calls."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def limits_for(self, tool: str) -> Limits:
        return Limits()

    def context_for(self, tool: str) -> ToolContext:
        return ToolContext(root=str(self.root))


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    registry = Registry.default()
    registry.load(HOSTILE)
    with Pool(registry=registry, size=1) as p:
        yield shared(p)


def prepared_spare(template: Template, profile: Profile) -> WorkerHandle:
    """Ask for a spare set up for `profile` and take it once it has arrived."""
    template.request_prepared(profile)
    deadline = time.monotonic() + ARRIVAL_S
    while (handle := template.take_prepared(profile)) is None:
        assert time.monotonic() < deadline, "no prepared spare arrived"
        time.sleep(0.01)
    return handle


def wait_ready(template: Template, profile: Profile) -> None:
    deadline = time.monotonic() + ARRIVAL_S
    while True:
        with template._prepared_lock:
            if template.prepared.get(profile.key):
                return
        assert time.monotonic() < deadline, "no prepared spare arrived"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "change",
    [
        {"limits": Limits(memory_mb=300)},
        {"limits": Limits(max_processes=500)},
        {"limits": Limits(network=True)},
        {"root": "/etc"},
        {"data_dir": "/tmp"},
    ],
    ids=["memory", "processes", "network", "root", "data_dir"],
)
def test_a_spare_runs_no_call_of_another_profile(pool: Pool, change: dict) -> None:
    template = pool._template
    handle = prepared_spare(template, Profile(limits=Limits()))
    call = Call(tool="where_am_i", args={}, **{"limits": Limits(), **change})
    try:
        send_frame(handle.sock, call.model_dump_json().encode())
        with pytest.raises(PeerGone):  # exits unanswered: the tool never ran
            handle.reader.read(time.monotonic() + ARRIVAL_S, 1 << 20)
        exited = template.exit_status(handle.pid)
        assert exited is not None and os.waitstatus_to_exitcode(exited.status) == 70
    finally:
        handle.kill()
        handle.close()


def test_a_spare_runs_the_call_it_was_made_for(pool: Pool) -> None:
    template = pool._template
    handle = prepared_spare(template, Profile(limits=Limits()))
    call = Call(tool="where_am_i", args={}, limits=Limits())
    try:
        send_frame(handle.sock, call.model_dump_json().encode())
        frame = handle.reader.read(time.monotonic() + ARRIVAL_S, 1 << 20)
        assert b'"ok":true' in frame and call.id.encode() in frame
    finally:
        handle.kill()
        handle.wait_dead(ARRIVAL_S)
        template.forget_exit(handle.pid)
        handle.close()


def test_calls_after_the_first_take_spares_set_up_ahead(pool: Pool) -> None:
    """Each call runs in a fresh worker set up for it ahead: no file, no process, no
    pid of the one before."""
    limits = Limits(timeout_s=7)  # a profile of this test's own
    profile = Profile(limits=limits)
    template = pool._template
    first = pool.call("write_in_workdir", {"name": "left.txt"}, limits=limits)
    assert first.ok, first
    seen = {first.worker_pid}
    for _ in range(3):
        wait_ready(template, profile)
        result = pool.call("write_in_workdir", {"name": "left.txt"}, limits=limits)
        assert result.ok and result.output == "", result  # nothing left by the last
        assert result.worker_pid not in seen
        seen.add(result.worker_pid)
    assert template.hits.get(profile.key, 0) == 3


def test_a_spare_made_for_one_root_never_serves_another(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for root, text in ((first, "first secret"), (second, "second text")):
        root.mkdir()
        (root / "doc.txt").write_text(text)
    (first / "only-first.txt").write_text("first secret")
    policy = Roots(first)
    with Pool(policy, registry=Registry.default(), size=1) as p:
        assert p.call("read_file", {"path": "doc.txt"}).output == "first secret"
        wait_ready(p._template, Profile(limits=Limits(), root=str(first)))
        policy.root = second  # a spare for `first` is ready; the call is for `second`
        assert p.call("read_file", {"path": "doc.txt"}).output == "second text"
        denied = p.call("read_file", {"path": "only-first.txt"})
        assert "first secret" not in denied.text, denied
        policy.root = first
        assert p.call("read_file", {"path": "only-first.txt"}).output == "first secret"
