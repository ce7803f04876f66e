"""Shared fixtures: a no-survivor guard around every test, and pools of real workers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sandbox import _linux
from sandbox.pool import Pool
from tools import Registry

HOSTILE = str(Path(__file__).with_name("hostile_tools.py"))
SURVIVOR_GRACE_S = 15.0
"""How long a test's processes may take to be gone after it ends (a loaded machine)."""

# Orphans of anything a test starts come back to us, so the guard below sees them.
_linux.set_child_subreaper()


def _running_descendants() -> dict[int, str]:
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = " ".join(proc.cmdline())[:120]
        except psutil.Error:
            pass
    return found


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture(autouse=True)
def private_data_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions and run checkpoints go to a directory of the test's, never the user's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


@pytest.fixture(autouse=True)
def no_survivors() -> Iterator[None]:
    """Fail any test that leaves a process alive."""
    before = set(_running_descendants())
    yield
    deadline = time.monotonic() + SURVIVOR_GRACE_S
    while True:
        _reap_orphans()
        left = {pid: cmd for pid, cmd in _running_descendants().items() if pid not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        _reap_orphans()
        pytest.fail(f"the test left processes alive: {left}")


@pytest.fixture
def registry() -> Registry:
    registry = Registry.default()
    registry.load(HOSTILE)
    return registry


@pytest.fixture(params=["pid-namespace", "subreaper"])
def process_tree(request: pytest.FixtureRequest) -> str:
    if request.param == "pid-namespace" and not _linux.PidNamespaces().available:
        pytest.skip("PID namespaces are not available on this machine")
    return request.param


@pytest.fixture
def pool(registry: Registry) -> Iterator[Pool]:
    with Pool(registry=registry, size=2) as p:
        yield p


def sleepers(marker: str) -> list[int]:
    """Processes running `sleep <marker>`, anywhere on the machine."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) == 2 and cmd[0].endswith("sleep") and cmd[1] == marker:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except psutil.Error:
                pass
    return found


def unique_marker() -> str:
    """A sleep length no other process uses: how a test finds its grandchildren."""
    return f"{3000 + os.getpid() % 1000}.{time.monotonic_ns() % 10**9}"
