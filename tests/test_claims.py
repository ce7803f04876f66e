"""What a worker may claim about its own call: an output or a tool error, and a memory
limit only when the kernel backs it. Everything else is a protocol violation."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from conftest import HOSTILE, pid_namespaces_available, shared

from sandbox import Limits, Pool
from tools import Registry

pytestmark = pytest.mark.attack


@pytest.fixture(scope="module", params=["pid-namespace", "subreaper"])
def claims_pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """One pool per process tree for the module: each claim is made in a worker of its
    own call, which the pool retires (the pool carrying on is checked too)."""
    if request.param == "pid-namespace" and not pid_namespaces_available():
        pytest.skip("PID namespaces are not available on this machine")
    registry = Registry.default()
    registry.load(HOSTILE)
    with Pool(registry=registry, size=1, process_tree=request.param) as pool:
        yield shared(pool)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    registry = Registry.default()
    registry.load(HOSTILE)
    with Pool(registry=registry, size=2) as p:
        yield shared(p)


ORCHESTRATOR_KINDS = [
    "timeout",
    "cpu_limit",
    "denied",
    "unknown_tool",
    "bad_arguments",
    "crashed",
    "data_limit",
]


@pytest.mark.parametrize("then", ["return", "hang"])
@pytest.mark.parametrize("kind", ORCHESTRATOR_KINDS)
def test_a_worker_cannot_claim_a_kind_only_the_orchestrator_gives(
    claims_pool: Pool, kind: str, then: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sandbox.pool"):
        result = claims_pool.call("claim_kind", {"kind": kind, "then": then})
    assert result.error.kind == "crashed", result
    assert result.error.message == (f"claim_kind's worker broke the protocol: claimed kind {kind}")
    assert any("protocol violation" in r.message for r in caplog.records)
    assert claims_pool.call("echo_text", {"text": "next"}).output == "next"


def test_a_claimed_kind_in_a_trusted_worker_retires_it(claims_pool: Pool) -> None:
    trusted = Limits(reuse_worker=True)
    first = claims_pool.call("claim_kind", {"kind": "timeout", "then": "return"}, limits=trusted)
    second = claims_pool.call("claim_kind", {"kind": "timeout", "then": "return"}, limits=trusted)
    assert first.error.kind == second.error.kind == "crashed"
    assert first.worker_pid != second.worker_pid


@pytest.mark.parametrize("then", ["return", "hang"])
def test_a_memory_limit_without_memory_used_is_the_tools_own_error(
    claims_pool: Pool, then: str
) -> None:
    result = claims_pool.call("claim_kind", {"kind": "memory_limit", "then": then})
    assert result.error.kind == "tool_error", result
    assert "raised MemoryError, but" in result.error.message


def test_raising_memory_error_is_not_a_memory_limit(claims_pool: Pool) -> None:
    result = claims_pool.call("raise_memory_error")
    assert result.error.kind == "tool_error", result
    assert "below its limit" in result.error.message


def test_running_out_of_memory_is_still_a_memory_limit(claims_pool: Pool) -> None:
    result = claims_pool.call("memory_bomb", limits=Limits(memory_mb=64, timeout_s=60))
    assert result.error.kind == "memory_limit", result


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("str_raises", "StrRaises: (its message could not be read; repr: StrRaises())"),
        ("all_raise", "an exception"),
        ("str_subclass", "Sub: evil text"),
        ("not_str", "NotStr: (its message could not be read; repr: NotStr())"),
        ("surrogate", "ValueError: bad \\udc80 text"),
        ("exit", "SystemExit: 3"),
    ],
)
def test_any_exception_is_a_tool_error_with_a_readable_message(
    pool: Pool, how: str, expected: str
) -> None:
    result = pool.call("odd_exception", {"how": how})
    assert result.error.kind == "tool_error", result
    assert result.error.message == expected


def test_a_huge_exception_message_is_cut(pool: Pool) -> None:
    result = pool.call("odd_exception", {"how": "huge"})
    assert result.error.kind == "tool_error", result
    assert len(result.error.message) < 2100
    assert result.error.message.endswith("(10000012 characters)")
