"""What a tool can see and keep: no secrets, a private empty directory, no stdin,
nothing that lasts past its call or past the orchestrator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import HOSTILE, ROOT, shared

from sandbox import Limits, Pool
from sandbox.reaper import survivors
from tools import Registry

SECRET = "sk-test-do-not-leak-0123456789"


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    """One pool for the module's tests of what a call sees: each asks for a worker of
    its own (or, trusted, for the one it keeps), which is the promise they test."""
    registry = Registry.default()
    registry.load(HOSTILE)
    with Pool(registry=registry, size=2) as p:
        yield shared(p)


def test_no_secret_of_the_orchestrator_reaches_a_tool(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    with Pool(registry=registry, size=1) as pool:
        result = pool.call("dump_environment")
    assert result.ok, result
    seen = json.loads(result.output)
    assert "OPENAI_API_KEY" not in seen["environ"]
    assert SECRET not in result.output  # not in os.environ, /proc/self/environ, the parent's
    assert set(seen["environ"]) <= {"PATH", "LANG", "LANGUAGE", "TZ", "HOME", "TMPDIR", "PWD"} | {
        k for k in seen["environ"] if k.startswith("LC_")
    }


def test_a_tool_runs_in_a_private_empty_directory_removed_after_the_call(pool: Pool) -> None:
    result = pool.call("where_am_i")
    info = json.loads(result.output)
    assert info["entries"] == []
    assert info["sid_is_pid"]
    assert info["fds"][:4] == [0, 1, 2, 3]
    assert result.logs == "hello from the tool\n"
    deadline = time.monotonic() + 15
    while os.path.exists(info["cwd"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(info["cwd"])


def test_stdin_is_empty(pool: Pool) -> None:
    assert pool.call("read_stdin").output == "''"


def test_each_untrusted_call_gets_a_new_worker(pool: Pool) -> None:
    first = pool.call("write_in_workdir", {"name": "a.txt"})
    second = pool.call("write_in_workdir", {"name": "b.txt"})
    assert first.worker_pid != second.worker_pid
    assert second.output == ""  # nothing of the first call is visible


def test_a_trusted_worker_is_reused_and_cleaned_between_calls(pool: Pool) -> None:
    trusted = Limits(reuse_worker=True)
    first = pool.call("write_in_workdir", {"name": "a.txt"}, limits=trusted)
    second = pool.call("write_in_workdir", {"name": "b.txt"}, limits=trusted)
    assert first.worker_pid == second.worker_pid
    assert second.output == ""


def test_a_trusted_worker_that_fails_is_not_reused(pool: Pool) -> None:
    # The same tool and limits again: the one call a failed worker could be reused for
    # (a call of another tool never gets it, so that could not tell).
    trusted = Limits(reuse_worker=True)
    first, second = (pool.call("raise_error", {"message": m}, limits=trusted) for m in "xy")
    assert not first.ok and not second.ok
    assert first.worker_pid != second.worker_pid


def _script(body: str) -> str:
    return textwrap.dedent(
        f"""
        import json, os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from sandbox import Pool, Limits
        from tools import Registry
        registry = Registry.default()
        registry.load({HOSTILE!r})
        pool = Pool(registry=registry, size=2)
        """
    ) + textwrap.dedent(body)


def _tree(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_nothing_outlives_the_orchestrator(sig: int) -> None:
    script = _script(
        """
        import threading
        threading.Thread(target=pool.call, args=("sleep_forever",),
                         kwargs={"limits": Limits(timeout_s=600)}, daemon=True).start()
        while not pool._busy:  # the call has its worker: the signal lands mid-call
            time.sleep(0.01)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        tree = _tree(proc.pid)
        assert len(tree) >= 2  # the zygote and the busy worker (spares may be on their way)
        proc.send_signal(sig)
        proc.wait(timeout=120)  # SIGINT's exit closes the pool: seconds on a loaded machine
        deadline = time.monotonic() + 20
        while survivors(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert survivors(tree) == []
    finally:
        proc.kill()
        proc.wait()


def test_the_pool_refuses_calls_after_close(registry: Registry) -> None:
    pool = Pool(registry=registry, size=1)
    pool.close()
    pool.close()
    result = pool.call("calculate", {"expression": "1"})
    assert result.error.kind == "crashed"
    assert "shut down" in result.error.message


def test_the_pool_recovers_when_its_template_process_is_killed(registry: Registry) -> None:
    with Pool(registry=registry, size=1) as pool:
        assert pool.call("calculate", {"expression": "1+1"}).ok
        first = pool.template_pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while survivors([first]) and time.monotonic() < deadline:
            time.sleep(0.02)
        results = [pool.call("calculate", {"expression": "2+2"}) for _ in range(3)]
        assert pool.template_pid != first
    assert all(r.ok and r.output == "4" for r in results[1:])
    assert results[0].ok or results[0].error.kind == "crashed"


def test_text_comes_back_exactly_and_bad_unicode_is_a_tool_error(pool: Pool) -> None:
    text = 'quotes " and \\ backslash, café ✓, 🎉, \x00\x1f control, \u2028 line sep'
    assert pool.call("echo_text", {"text": text}).output == text
    bad = pool.call("lone_surrogate")
    assert bad.error.kind == "tool_error"
    assert "lone_surrogate returned text that is not valid Unicode" in bad.error.message


def test_a_reused_workers_log_holds_each_calls_output_only(pool: Pool) -> None:
    trusted = Limits(reuse_worker=True)
    first = pool.call("echo_text", {"text": "a", "chatter": "first"}, limits=trusted)
    second = pool.call("echo_text", {"text": "b"}, limits=trusted)
    third = pool.call("echo_text", {"text": "c", "chatter": "third"}, limits=trusted)
    assert first.worker_pid == second.worker_pid == third.worker_pid
    assert (first.logs, second.logs, third.logs) == ("first\n", "", "third\n")


def test_a_sweep_from_a_pid_namespace_keeps_the_cgroups_of_live_zygotes(tmp_path: Path) -> None:
    """A normal user's zygote is pid 1 of a PID namespace of its own: another pool's
    zygote (here, this process) is alive all the same, and its cgroup must stay, while
    a dead one's goes. (It was swept, and that pool's next worker crashed.)"""
    from sandbox.layers import CGROUP_PREFIX

    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) here")  # pragma: no cover
    gone = subprocess.Popen(["true"])
    gone.wait()
    live, stale = (tmp_path / f"{CGROUP_PREFIX}{pid}" for pid in (os.getpid(), gone.pid))
    for cgroup in (live, stale):
        (cgroup / "w1").mkdir(parents=True)
    sweep = "import sys; from sandbox.layers import sweep_stale_cgroups as s; s(sys.argv[1])"
    namespaces = ["unshare", "--user", "--map-current-user", "--pid", "--fork"]
    proc = subprocess.run(
        [*namespaces, sys.executable, "-c", sweep, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (live / "w1").is_dir()
    assert not stale.exists()


def test_cgroups_left_by_a_killed_zygote_are_swept(registry: Registry) -> None:
    from sandbox import _cgroups
    from sandbox.layers import CGROUP_PREFIX

    parents = _cgroups.parents("pids", _cgroups.parse_root(os.environ.get(_cgroups.ROOT_ENV)))
    if not parents or not os.access(parents[0], os.W_OK):
        pytest.skip("no writable pids cgroup here")  # pragma: no cover
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has now: a zygote that was SIGKILLed
    stale = os.path.join(parents[0], f"{CGROUP_PREFIX}{gone.pid}")
    os.makedirs(os.path.join(stale, "w1"))
    with Pool(registry=registry, size=1) as pool:
        assert pool.layers["cgroup_pids"].active
        assert not os.path.exists(stale)
