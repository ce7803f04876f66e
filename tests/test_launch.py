"""`python -m sandbox.launch LIMITS_JSON -- CMD`: any command inside every layer a tool
gets, its stdin and stdout the caller's. Each test runs a real command (a probe script,
a shell) and tries, from inside, what the layers must stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import Limits
from sandbox.launch import ACCEPT_FLAG, EXIT_STOPPED, EXIT_USAGE, command_line, parse
from tests.conftest import pid_namespaces_available, sleepers, unique_marker

PROBE = str(Path(__file__).with_name("launch_probe.py"))


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback server that answers `hello` to whoever connects (the host's network)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_a_command_gets_its_code_and_its_paths_and_nothing_else(
    tmp_path: Path, listener: int
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "notes.txt").write_text("readable")
    secret = tmp_path / "secret.txt"
    secret.write_text("the key")
    argv = command_line(
        [sys.executable, PROBE, "report", str(allowed / "notes.txt"), str(secret), str(listener)],
        Limits(memory_mb=256),
        read_paths=[str(allowed)],
        env=["PASSED_ON"],
    )
    env = os.environ | {"PASSED_ON": "yes", "OPENAI_API_KEY": "sk-secret", "SECRET_TOKEN": "t"}
    proc = start(argv, env)
    out, err = proc.communicate("from the caller\n", timeout=120)
    assert proc.returncode == 0, err
    found = json.loads(out)
    assert found["stdin"] == "from the caller"
    assert found["allowed"] == "readable"
    for refused in ("secret", "shadow", "ssh", "connect", "write_root"):
        assert found[refused].startswith("refused"), (refused, found[refused])
    assert found["cap_eff"] == "0000000000000000"
    assert found["no_new_privs"] == "1"
    assert found["seccomp"] == "2"
    assert found["home_is_cwd"]
    assert set(found["env"]) <= {"PATH", "LANG", "LANGUAGE", "TZ", "HOME", "TMPDIR", "PWD"} | {
        "PASSED_ON"
    } | {name for name in found["env"] if name.startswith("LC_")}
    assert "PASSED_ON" in found["env"]
    if os.geteuid() == 0:
        assert found["uid"] != 0
    if pid_namespaces_available():
        assert found["pid"] == 2  # the init is 1: nothing of the host's is in sight


def _wait_for(condition: Callable[[], bool], deadline_s: float = 30.0) -> bool:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("tree", ["pid-namespace", "subreaper"])
def test_stopping_the_launcher_kills_the_whole_tree_at_once(tree: str) -> None:
    marker = unique_marker()
    disable = ["pid_namespace"] if tree == "subreaper" else []
    if tree == "pid-namespace" and not pid_namespaces_available():
        pytest.skip("PID namespaces are not available on this machine")
    script = f"setsid sleep {marker} & sleep {marker} & echo started; wait"
    proc = start(command_line(["/bin/sh", "-c", script], Limits(), disable=disable))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    # The detached one too: the test must see what it then checks is gone.
    assert _wait_for(lambda: len(sleepers(marker)) == 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, err
    assert sleepers(marker) == []


def test_memory_processes_and_cpu_time_are_bounded() -> None:
    limits = Limits(memory_mb=128, max_processes=8, cpu_s=1)
    proc = start(command_line([sys.executable, PROBE, "limits"], limits))
    out, err = proc.communicate(timeout=120)
    found = json.loads(out.splitlines()[0])
    assert found["big_allocation"].startswith("refused"), found
    assert found["forks"] < 8, found
    assert proc.returncode == 128 + signal.SIGXCPU, err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (['{"memory_mb": 1}', "--", "true"], "memory_mb"),
        (['{"memory": 1}', "--", "true"], "memory: unknown field; did you mean 'memory_mb'?"),
        (['{"network": "yes"}', "--", "true"], "network: must be true or false (got 'yes')"),
        (['{"memory_mb": "256"}', "--", "true"], "memory_mb: Input should be a valid integer"),
        (["not json", "--", "true"], "LIMITS_JSON: Invalid JSON"),
        (["{}", "true"], "must follow --"),
        (["{}", "--"], "no command"),
        (["{}", "--", "no-such-command-here"], "no-such-command-here was not found"),
        (["{}", "--read", "/no/such/path", "--", "true"], "--read /no/such/path"),
        (["{}", "--env", "A=b", "--", "true"], "--env takes a variable's name"),
        (["{}", "--disable", "rlimits", "--", "true"], "cannot be turned off"),
        (['{"network": ["api.test:443"]}', "--", "true"], "takes true or false"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], said: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox.launch", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_USAGE
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandbox.launch: "), proc.stderr
    assert said in lines[0]


def test_the_command_dies_with_whoever_started_the_launcher() -> None:
    """An agent killed with SIGKILL runs no clean-up: the launcher's parent-death signal
    still stops the command's tree."""
    marker = unique_marker()
    argv = command_line(["/bin/sh", "-c", f"setsid sleep {marker} & wait"], Limits())
    starter = (
        "import subprocess, sys, time; "
        f"subprocess.Popen({argv!r}); "
        "print('started', flush=True); time.sleep(3600)"
    )
    parent = start([sys.executable, "-c", starter])
    assert parent.stdout is not None and parent.stdout.readline() == "started\n"
    assert _wait_for(lambda: len(sleepers(marker)) == 1)
    parent.kill()
    parent.communicate(timeout=60)
    assert _wait_for(lambda: sleepers(marker) == [])


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: as a normal user the command runs as you"
)
def test_as_root_a_command_writes_its_write_paths_as_their_owner(tmp_path: Path) -> None:
    writable = tmp_path / "out"
    writable.mkdir()
    os.chown(writable, 4321, 4321)
    script = f"echo made > {writable}/file && echo x > {tmp_path}/beside; id -u"
    proc = start(command_line(["/bin/sh", "-c", script], Limits(), write_paths=[str(writable)]))
    out, err = proc.communicate(timeout=120)
    assert out.strip() == "4321", err
    assert (writable / "file").read_text() == "made\n"
    assert (writable / "file").stat().st_uid == 4321
    assert not (tmp_path / "beside").exists()
    refused = subprocess.run(
        command_line(["/bin/true"], Limits(), write_paths=[str(tmp_path)]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 70
    assert "one user other than root" in refused.stderr


def test_no_command_runs_where_no_layer_walls_its_signals(tmp_path: Path) -> None:
    """With no PID namespace and no Landlock, a command that runs as the caller, or as
    the owner of its `--write` paths (root's choice), could kill their processes: the
    launcher refuses, unless told to accept it."""
    off = ["pid_namespace", "landlock", "unprivileged_uid"]
    runs = [command_line(["/bin/true"], Limits(), disable=off)]
    if os.geteuid() == 0:
        owned = tmp_path / "out"
        owned.mkdir()
        os.chown(owned, 4321, 4321)
        runs.append(
            command_line(["/bin/true"], Limits(), disable=off[:2], write_paths=[str(owned)])
        )
    for argv in runs:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 70, (argv, proc.stderr)
        assert "no layer walls signals" in proc.stderr and ACCEPT_FLAG in proc.stderr, argv
    accepted = command_line(["/bin/true"], Limits(), disable=off, accept_unwalled_signals=True)
    assert parse(accepted[3:]).accept_unwalled_signals  # what the second stage is handed
