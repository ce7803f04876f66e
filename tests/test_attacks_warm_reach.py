"""A trusted tool changes its warm worker where no watched dict's version moves: the
bases of `socket.socket` (whose `sendall` writes the answers), the class of the `json`
module (whose `dumps` writes them), a value that claims to equal the one it replaced,
the `write` of the buffer or raw file below `sys.stdout` (where a print ends), a hard
rlimit lowered, the int digits limit, the collector's thresholds, the process's
priority. The next call must neither carry a forged answer nor run under the changed
process: the worker is retired, and the next call finds a fresh one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shared

from sandbox import Limits, Pool
from tools import Registry

pytestmark = pytest.mark.attack

TOOLS = str(Path(__file__).with_name("warm_reach_tools.py"))
TRUSTED = Limits(reuse_worker=True, timeout_s=20)
FORGING = ["socket_bases", "module_class", "lying_equal", "buffer_write", "raw_write"]
CHANGING = ["nofile_hard", "data_limit", "int_digits", "gc_threshold", "priority"]


@pytest.fixture(scope="module")
def warm() -> Iterator[Pool]:
    registry = Registry.default()
    registry.load(TOOLS)
    with Pool(registry=registry, size=1) as pool:
        yield shared(pool)


@pytest.mark.parametrize("kind", FORGING + CHANGING)
def test_a_change_no_namespace_dict_shows_retires_the_worker(warm: Pool, kind: str) -> None:
    marker = uuid.uuid4().hex
    fresh = warm.call("reach", {"kind": "nothing", "marker": marker}, limits=TRUSTED)
    first = warm.call("reach", {"kind": kind, "marker": marker}, limits=TRUSTED)
    second = warm.call("reach", {"kind": "nothing", "marker": marker}, limits=TRUSTED)
    assert fresh.ok and first.ok and second.ok, (fresh, first, second)
    assert marker not in second.output, f"{kind}: the next call's answer was forged"
    assert marker not in second.logs, f"{kind}: the next call's log was written through it"
    assert second.worker_pid != first.worker_pid, f"{kind}: the worker served again"
    seen, before = json.loads(second.output), json.loads(fresh.output)
    assert seen["left"] == [], seen
    before["left"] = []
    assert seen == before, f"{kind}: the next call ran in a changed process"
