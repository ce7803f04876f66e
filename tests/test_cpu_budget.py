"""`cpu_s` bounds a call's whole tree, not each process: a cgroup counts them all."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import sleepers, unique_marker

from sandbox import Limits, Pool
from tools import Registry

pytestmark = pytest.mark.attack


@pytest.mark.parametrize("reuse", [False, True])
def test_busy_children_share_one_cpu_budget(
    registry: Registry, process_tree: str, reuse: bool
) -> None:
    marker = unique_marker()
    limits = Limits(cpu_s=2, timeout_s=120, reuse_worker=reuse)
    with Pool(registry=registry, size=1, process_tree=process_tree) as pool:
        if not pool.layers["cgroup_cpu"].active:
            pytest.skip(f"no CPU cgroup here: {pool.layers['cgroup_cpu'].detail}")
        result = pool.call("busy_children", {"count": 6, "marker": marker}, limits=limits)
        assert result.error is not None and result.error.kind == "cpu_limit", result
        assert "and the processes it started used" in result.error.message
        used = float(result.error.message.split(" used ")[1].split()[0])
        assert 2 <= used < 12  # the whole tree's, and not six processes' two seconds each
        assert sleepers(marker) == []  # what the children started went with them
        assert pool.call("echo_text", {"text": "next"}, limits=limits).output == "next"


def test_a_call_that_stays_under_its_budget_is_not_killed(pool: Pool) -> None:
    result = pool.call("slow_stamp", {"seconds": 0.5}, limits=Limits(cpu_s=1))
    assert result.ok, result


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_each_cgroup_version_found_here_is_made_and_read(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox import _cgroups, _cpuacct
    from sandbox.layers import CGROUP_PREFIX, sweep_stale_cgroups

    if version == "v2":  # as on a machine with v2 only
        mounted = _cgroups.hierarchy
        monkeypatch.setattr(_cgroups, "hierarchy", lambda c: None if c else mounted(c))
    found = [usage for _, usage in _cpuacct.candidates()]
    wanted = _cpuacct.V1_USAGE if version == "v1" else _cpuacct.V2_USAGE
    if wanted not in found:
        pytest.skip(f"no {version} CPU accounting hierarchy here")
    named = _cgroups.parse_root(os.environ.get(_cgroups.ROOT_ENV))  # a user's subtree
    path, usage, why = _cpuacct.make_root(
        f"{CGROUP_PREFIX}{os.getpid()}", sweep_stale_cgroups, named
    )
    if path is None:
        pytest.skip(f"not writable here: {why}")  # pragma: no cover
    try:
        assert usage == wanted
        child = os.path.join(path, "w1")
        os.mkdir(child)
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read(); [0 for _ in range(10**7)]"],
            stdin=subprocess.PIPE,
        )
        with open(os.path.join(child, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        before = _cpuacct.usage_s(os.path.join(child, usage))
        proc.communicate(b"")  # now it burns some CPU, inside the cgroup, and exits
        assert _cpuacct.usage_s(os.path.join(child, usage)) > before
        os.rmdir(child)
    finally:
        os.rmdir(path)
