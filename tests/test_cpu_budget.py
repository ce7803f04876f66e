"""`cpu_s` bounds a call's whole tree, not each process: a cgroup counts them all."""

from __future__ import annotations

import pytest
from conftest import sleepers, unique_marker

from sandbox import Limits, Pool
from tools import Registry


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
