"""Attacks on the worker's own words: its set-up report, its answer, its log.

What the orchestrator tells the model and the user about a call must come from
where the tool cannot reach: a set-up failure only from the set-up pipe (closed
before the tool runs), an answer built from an exact copy of what the tool returned,
and a log that never lands on the host's disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shared

from policies import parse_policy
from sandbox import Limits, Pool
from tools import Registry

pytestmark = pytest.mark.attack
TOOLS = str(Path(__file__).with_name("worker_attack_tools.py"))
TRUSTED = Limits(reuse_worker=True)


def make_pool(
    tmp_path: Path, process_tree: str = "auto", policy: str = "", sources: tuple[str, ...] = ()
) -> Pool:
    registry = Registry.default()
    for source in (TOOLS, *sources):
        registry.load(source)
    return Pool(
        parse_policy(policy, "worker.toml", tmp_path),
        registry=registry,
        size=1,
        process_tree=process_tree,
    )


@pytest.fixture
def pool(tmp_path: Path, process_tree: str) -> Iterator[Pool]:
    with make_pool(tmp_path, process_tree) as p:
        yield p


@pytest.fixture(scope="module")
def plain_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """One pool for the module's tests of what a call returns: each call is a fresh
    worker of its own, whatever the one before did."""
    with make_pool(tmp_path_factory.mktemp("worker")) as p:
        yield shared(p)


# --- 1. Only the sandbox's set-up code can say that set-up failed ------------------


@pytest.mark.parametrize("everywhere", [False, True], ids=["log", "every-fd"])
@pytest.mark.parametrize("trusted", [False, True], ids=["fresh", "warm"])
def test_a_tool_cannot_pass_itself_off_as_a_failed_sandbox(
    pool: Pool, everywhere: bool, trusted: bool
) -> None:
    """The tool writes the orchestrator's own words to its log (and to every fd it
    may hold) and exits 70, as a failed set-up does: an ordinary crash, and none of
    its words in the error the model and the user read."""
    limits = TRUSTED if trusted else None
    if trusted:
        warm = pool.call("forge_setup_failure", {"act": False}, limits=limits)
        assert warm.ok, warm
    result = pool.call("forge_setup_failure", {"everywhere": everywhere}, limits=limits)
    if trusted:
        assert result.worker_pid == warm.worker_pid, "the call did not reuse the worker"
    assert result.error is not None and result.error.kind == "crashed", result
    assert result.error.message == (
        "forge_setup_failure's worker exited with status 70 before answering"
    ), result.error.message
    assert "Landlock is missing" in result.logs  # the tool's words stay its log's


SABOTAGE = '''
import os
import sys

from sandbox import worker
from tools import tool

_step = getattr(worker, "{step}")


def _broken(*args, **kwargs):
    # Only in the zygote's interpreter (it runs `python -I`), never in the test's.
    if sys.flags.isolated:
        raise OSError("injected: {step} found a link planted in data_dir")
    return _step(*args, **kwargs)


setattr(worker, "{step}", _broken)


@tool
def would_run() -> str:
    """Say that it ran."""
    return "RAN"
'''


@pytest.mark.parametrize("step", ["harden", "_max_fd"], ids=["at-the-call", "at-the-fork"])
def test_a_real_set_up_failure_still_says_why(tmp_path: Path, process_tree: str, step: str) -> None:
    """A set-up step raises (an OSError, as one from a link planted in a policy path):
    the call fails closed, and its reason reaches the user through the set-up pipe."""
    source = tmp_path / f"sabotage_{step.strip('_')}.py"
    source.write_text(SABOTAGE.format(step=step))
    with make_pool(tmp_path, process_tree, sources=(str(source),)) as pool:
        result = pool.call("would_run")
    assert result.error is not None and result.error.kind == "crashed", result
    assert result.error.message == (
        "would_run did not run: its worker's sandbox set-up failed: OSError: injected: "
        f"{step} found a link planted in data_dir (failed closed)"
    ), result.error.message


# --- 2. Whatever the returned object's class does, the call is the tool's ----------

EXACT = {"str": "hello", "dict": '{"a":1}', "list": "[1,2]", "nested": '{"a":["x"]}'}


@pytest.mark.parametrize("error", ["RuntimeError", "SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("kind", [*EXACT, "model", "class"])
def test_a_returned_object_whose_methods_raise_is_never_a_crash(
    plain_pool: Pool, kind: str, error: str
) -> None:
    """A str, dict or list subclass whose __len__, __str__, __eq__, encode... raise
    is answered with an exact copy of its value; a model whose serializer raises, or
    an object whose __class__ does, is a tool_error. Never `crashed`, never a set-up
    failure."""
    result = plain_pool.call("hostile_return", {"kind": kind, "error": error})
    if kind in EXACT:
        assert result.ok and result.output == EXACT[kind], result
    else:
        assert result.error is not None and result.error.kind == "tool_error", result


def test_a_hostile_sys_stdout_does_not_take_the_worker_down(plain_pool: Pool) -> None:
    """The worker flushes sys.stdout after the call: a replacement whose flush raises
    SystemExit is ignored, and the tool's answer stands."""
    result = plain_pool.call("hostile_stdout")
    assert result.ok and result.output == "returned", result


# --- 3. The log is in memory, bounded, and never on the host's disk ----------------


def test_the_log_never_touches_the_host_disk(tmp_path: Path, process_tree: str) -> None:
    """max_disk_mb = 16, max_file_size_mb = 100: 40 MiB of stdout. The log was a
    file in the pool's directory on the host; now it is on no file system of the
    host (its device is the kernel's internal memfd mount), and it is still read."""
    policy = "[tools.fill_stdout]\nmax_disk_mb = 16\nmax_file_size_mb = 100\n"
    with make_pool(tmp_path, process_tree, policy) as pool:
        result = pool.call("fill_stdout", {"mib": 40})
    assert result.ok, result
    seen = json.loads(result.output or "")
    assert seen["size"] == 40 << 20, seen
    host = {os.stat(p).st_dev for p in (tempfile.gettempdir(), tmp_path, "/", Path.home())}
    assert seen["dev"] not in host, (seen, host)
    assert result.logs.startswith("A" * 100)  # the orchestrator still reads it


def test_each_calls_log_is_bounded_by_max_file_size_mb(tmp_path: Path) -> None:
    """Without a memory cgroup RLIMIT_FSIZE is the bound, renewed per call (a warm
    worker truncates its log before each call)."""
    limits = Limits(max_file_size_mb=4, reuse_worker=True)
    with make_pool(tmp_path) as pool:
        first = pool.call("fill_stdout", {"mib": 40}, limits=limits)
        second = pool.call("fill_stdout", {"mib": 40}, limits=limits)
    for result in (first, second):
        assert result.ok, result
        seen = json.loads(result.output or "")
        assert seen == {"size": 4 << 20, "dev": seen["dev"], "error": "File too large"}, seen
    assert first.worker_pid == second.worker_pid


def test_the_log_counts_against_the_memory_cgroup(tmp_path: Path) -> None:
    """memory_mb = 32, max_file_size_mb = 512: 200 MiB of stdout. The log's pages are
    the worker's memory, so the kernel stops it at its memory limit."""
    limits = Limits(memory_mb=32, max_file_size_mb=512)
    with make_pool(tmp_path) as pool:
        if not pool.layers["cgroup_memory"].active:
            pytest.skip(f"no memory cgroup here: {pool.layers['cgroup_memory'].detail}")
        result = pool.call("fill_stdout", {"mib": 200}, limits=limits)
    assert result.error is not None and result.error.kind == "memory_limit", result
