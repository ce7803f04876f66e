"""The cgroup layers bind wherever the pool finds its cgroups: as root, beneath its own;
as a normal user, in a subtree delegated to it. `tests/test_as_normal_user.py` runs
this file again as an unprivileged user inside such a subtree (with
SANDBOXED_AGENT_DELEGATED=1: there a missing cgroup layer fails, never skips)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shared

from policies import parse_policy
from sandbox import IsolationWarning, Pool
from sandbox._cgroups import ROOT_ENV, parse_root
from sandbox.layers import CGROUP_PREFIX
from tools import Registry

TOOLS = str(Path(__file__).with_name("cgroup_tools.py"))
BOMBS = str(Path(__file__).with_name("attack_tools.py"))
"""Its memfd bomb, aimed here at the memory cgroup."""
REQUIRED = os.environ.get("SANDBOXED_AGENT_DELEGATED") == "1"
POLICY = """
[tools.cgroup_fork_bomb]
max_processes = 16
[tools.attack_memfd_bomb]
memory_mb = 64
max_file_size_mb = 1024
max_open_files = 1024
timeout_s = 60
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    registry = Registry.default()
    registry.load(TOOLS)
    registry.load(BOMBS)
    policy = parse_policy(POLICY, "cgroups.toml", tmp_path_factory.mktemp("policy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)
        with Pool(policy, registry=registry, size=1) as pool:
            yield shared(pool)


def needs(pool: Pool, name: str) -> None:
    layer = pool.layers[name]
    if layer.active:
        return
    if REQUIRED:
        pytest.fail(f"{name} is {layer.state} inside a delegated subtree: {layer.detail}")
    pytest.skip(f"{name} is unavailable here: {layer.detail}")


def test_a_fork_bomb_is_stopped_by_the_pids_cgroup_not_an_rlimit(pool: Pool) -> None:
    needs(pool, "cgroup_pids")
    result = pool.call("cgroup_fork_bomb")
    assert result.ok, result
    seen = json.loads(result.output or "{}")
    assert seen["children"] < 16, seen
    # RLIMIT_NPROC is left as it was (far above 16): only the cgroup can have stopped it.
    assert seen["nproc"] == "unlimited" or int(seen["nproc"]) > 64, seen
    assert CGROUP_PREFIX in seen["pids"], seen


def test_memory_rlimit_as_cannot_see_is_bounded_by_the_memory_cgroup(pool: Pool) -> None:
    needs(pool, "cgroup_memory")
    result = pool.call("attack_memfd_bomb")
    if result.ok:  # the write that would pass the limit refused (ENOMEM)
        assert result.output.startswith("stopped after"), result
        assert int(result.output.split()[2]) <= 64 + 16, result
    else:
        assert result.error.kind == "memory_limit", result
        assert "64 MiB" in result.error.message


def test_without_a_file_layer_a_normal_user_gets_no_cgroup_it_could_rewrite() -> None:
    """Not root, a worker owns its cgroup's files: with neither the jail nor Landlock
    between it and them, the cgroup layers are not offered (it could raise its own
    limits, or leave its cgroup for its parent)."""
    if os.geteuid() == 0:
        pytest.skip("as root the worker's cgroup files are root's")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)
        with Pool(size=1, disable=["bind_mounts", "landlock"]) as pool:
            layers = pool.layers
    for name in ("cgroup_pids", "cgroup_memory", "cgroup_cpu"):
        assert not layers[name].active, (name, layers[name])


def test_a_subtree_named_badly_is_refused_saying_what_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_root("/agents//alice/") == {
        c: "/agents/alice" for c in ("pids", "memory", "cpuacct")
    }
    assert parse_root("pids=/a, memory=/b") == {"pids": "/a", "memory": "/b"}
    for bad, said in (
        ("agents", "is not a cgroup path"),
        ("/agents/../..", "without '..'"),
        ("cpu=/a", "unknown controller 'cpu'"),
    ):
        with pytest.raises(ValueError, match=said):
            parse_root(bad)
    monkeypatch.setenv(ROOT_ENV, "pids=/a,blkio=/b")
    with pytest.raises(ValueError, match=f"{ROOT_ENV}: unknown controller 'blkio'"):
        Pool(size=1)
