"""`max_data_mb`: a tool's data_dir cannot fill the host's disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HOSTILE

from policies import parse_policy
from sandbox import Pool
from sandbox.data_quota import usage_bytes
from tools import Registry

pytestmark = pytest.mark.attack

MIB = 1024 * 1024


@pytest.fixture(params=[False, True], ids=["fresh", "trusted"])
def quota_pool(tmp_path: Path, process_tree: str, request: pytest.FixtureRequest) -> Iterator[Pool]:
    registry = Registry.default()
    registry.load(HOSTILE)
    text = (
        "[tools.fill_data]\n"
        'data_dir = "data"\n'
        "max_data_mb = 8\n"
        "max_file_size_mb = 64\n"
        "timeout_s = 60\n"
        f"trusted = {'true' if request.param else 'false'}\n"
    )
    policy = parse_policy(text, "q.toml", tmp_path)
    with Pool(policy, registry=registry, size=1, process_tree=process_tree) as pool:
        yield pool


def test_one_big_file_stops_at_the_quota(quota_pool: Pool, tmp_path: Path) -> None:
    first = quota_pool.call("fill_data", {"files": 1, "mb": 300})
    assert first.ok, first
    assert first.output.startswith("stopped after 7 MiB: File too large"), first.output
    assert usage_bytes(str(tmp_path / "data")) <= 8 * MIB
    full = quota_pool.call("fill_data", {"files": 1, "mb": 1})
    assert full.output == "stopped after 0 MiB: File too large", full  # nothing left
    assert usage_bytes(str(tmp_path / "data")) <= 8 * MIB


def test_a_sparse_file_past_the_quota_is_refused(quota_pool: Pool) -> None:
    result = quota_pool.call("fill_data", {"files": 1, "mb": 4096, "sparse": True})
    assert result.ok and "File too large" in result.output, result


def test_many_files_under_the_quota_end_the_call_with_data_limit(
    quota_pool: Pool, tmp_path: Path
) -> None:
    result = quota_pool.call("fill_data", {"files": 3, "mb": 6})
    assert result.error.kind == "data_limit", result
    assert "past its max_data_mb of 8" in result.error.message
    # What it does not bound: each file was under what was left (documented).
    assert usage_bytes(str(tmp_path / "data")) <= 3 * 6 * MIB + MIB
    again = quota_pool.call("fill_data", {"files": 1, "mb": 1})
    assert again.error.kind == "data_limit"
    assert "max_data_mb is 8" in again.error.message
    assert again.worker_pid is None  # refused before any worker ran
    for name in os.listdir(tmp_path / "data"):
        os.unlink(tmp_path / "data" / name)
    assert quota_pool.call("fill_data", {"files": 1, "mb": 1}).output == "wrote 1 MiB"


def test_the_measure_follows_no_link_and_counts_a_hard_link_once(tmp_path: Path) -> None:
    data = tmp_path / "d"
    (data / "sub").mkdir(parents=True)
    (data / "f").write_bytes(b"x" * (2 * MIB))
    os.link(data / "f", data / "sub" / "g")
    os.symlink("/usr", data / "usr")
    os.symlink(data, data / "sub" / "loop")
    used = usage_bytes(str(data))
    assert 2 * MIB <= used < 2 * MIB + 64 * 1024
    assert usage_bytes(str(tmp_path / "missing")) == 0
