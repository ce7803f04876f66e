"""Attacks on each isolation promise (`pytest -m attack` runs them alone).

Each hostile tool runs in a real worker and must fail there, leaving the orchestrator,
other processes and the host untouched. A test skips, saying why, only when this
machine truly lacks the layer it attacks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import parse_policy
from sandbox import Pool, SandboxUnavailable
from tools import Registry

pytestmark = pytest.mark.attack
ATTACKS = str(Path(__file__).with_name("attack_tools.py"))
SECRET = "sk-attack-suite-secret-5551234"


@pytest.fixture
def attacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Pool]:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    registry = Registry.default()
    registry.load(ATTACKS)
    policy = parse_policy("[tools.attack_connect]\n", "attacks.toml", tmp_path)
    with Pool(policy, registry=registry, size=2) as pool:
        yield pool


def needs(pool: Pool, layer: str) -> None:
    if not pool.layers[layer].active:
        pytest.skip(f"{layer} is unavailable here: {pool.layers[layer].detail}")


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's loopback that records whether anyone connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[bool] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(True)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()
    listener.accepted = accepted  # type: ignore[attr-defined]


def out(pool: Pool, tool: str, **args: object) -> str:
    result = pool.call(tool, args)
    assert result.ok, result
    return result.output or ""


def test_no_connection_to_the_hosts_loopback(attacks: Pool, listener: int) -> None:
    needs(attacks, "network_namespace")
    assert out(attacks, "attack_connect", host="127.0.0.1", port=listener).startswith("denied")


def test_no_connection_to_an_outside_address(attacks: Pool) -> None:
    needs(attacks, "network_namespace")
    result = out(attacks, "attack_connect", host="1.1.1.1", port=53)
    assert result.startswith("denied") and "unreachable" in result.lower()


def test_no_name_resolution(attacks: Pool) -> None:
    needs(attacks, "network_namespace")
    assert out(attacks, "attack_resolve", name="example.com").startswith("denied")


def test_a_tool_allowed_the_network_reaches_it(tmp_path: Path, listener: int) -> None:
    registry = Registry.default()
    registry.load(ATTACKS)
    policy = parse_policy("[tools.attack_connect]\nnetwork = true\n", "net.toml", tmp_path)
    with Pool(policy, registry=registry, size=1) as pool:
        result = out(pool, "attack_connect", host="127.0.0.1", port=listener)
        other = out(pool, "attack_resolve", name="localhost")
    assert result.startswith("ALLOWED")
    assert other  # answered at all: the policy, not the pool, decided
    assert "network_namespace" in pool.layers


def test_host_files_cannot_be_read(attacks: Pool) -> None:
    needs(attacks, "landlock")
    project = Path(__file__).resolve().parent.parent
    for path in (
        "/etc/shadow",
        "/root/.bashrc",
        str(Path(__file__)),
        str(project / "pyproject.toml"),
    ):
        if os.path.exists(path):
            assert out(attacks, "attack_read", path=path).startswith("denied"), path


def test_the_orchestrators_environment_cannot_be_read(attacks: Pool) -> None:
    needs(attacks, "capabilities")
    direct = out(attacks, "attack_read", path=f"/proc/{os.getpid()}/environ")
    assert direct.startswith("denied")
    assert out(attacks, "attack_environ_scan", secret=SECRET).startswith("not found")


def test_nothing_can_be_written_outside_the_workdir(attacks: Pool, tmp_path: Path) -> None:
    needs(attacks, "landlock")
    targets = [tmp_path / "owned.txt", Path("/tmp/sandboxed-agent-owned.txt"), Path("/etc/owned")]
    for target in targets:
        assert out(attacks, "attack_write", path=str(target)).startswith("denied"), target
        assert not target.exists()
    assert out(attacks, "attack_write", path="inside.txt").startswith("ALLOWED")


def test_other_processes_cannot_be_signalled_or_traced(attacks: Pool) -> None:
    needs(attacks, "pid_namespace")
    victim = subprocess.Popen(["sleep", "60"])
    try:
        for target in (victim.pid, os.getpid()):
            assert "ALLOWED" not in out(attacks, "attack_signal", pid=target)
            assert out(attacks, "attack_ptrace", pid=target).startswith("denied")
        assert victim.poll() is None  # alive
    finally:
        victim.kill()
        victim.wait()


def test_the_hosts_network_namespace_cannot_be_joined(attacks: Pool) -> None:
    needs(attacks, "capabilities")
    assert out(attacks, "attack_host_netns").startswith("denied")


def test_the_pids_limit_cannot_be_raised_from_inside(attacks: Pool) -> None:
    needs(attacks, "cgroup_pids")
    needs(attacks, "landlock")
    assert out(attacks, "attack_raise_pids_limit").startswith("denied")


def test_strict_isolation_fails_closed_naming_the_missing_layer() -> None:
    with pytest.raises(SandboxUnavailable, match=r"pid_namespace \(turned off"):
        Pool(size=1, process_tree="subreaper", isolation="strict")
    with pytest.raises(SandboxUnavailable, match=r"cgroup_pids \(turned off\)"):
        Pool(size=1, cgroups=False, isolation="strict")


def test_strict_isolation_runs_when_every_layer_is_there() -> None:
    with Pool(size=1, isolation="strict") as pool:
        if not all(layer.active for layer in pool.layers.values()):
            pytest.skip("not every layer is available here")  # pragma: no cover
        assert pool.call("calculate", {"expression": "1+1"}).output == "2"


def test_the_disk_cannot_be_filled(attacks: Pool) -> None:
    needs(attacks, "mount_namespace")
    result = out(attacks, "attack_fill_disk")
    assert result.startswith("stopped after") and "No space left on device" in result
    assert int(result.split()[2]) <= 64


def test_the_disk_quota_follows_the_policy(tmp_path: Path) -> None:
    registry = Registry.default()
    registry.load(ATTACKS)
    policy = parse_policy("[tools.attack_fill_disk]\nmax_disk_mb = 8\n", "d.toml", tmp_path)
    with Pool(policy, registry=registry, size=1) as pool:
        needs(pool, "mount_namespace")
        result = out(pool, "attack_fill_disk")
    assert result.startswith("stopped after") and int(result.split()[2]) <= 8


def test_the_hosts_processes_are_not_visible(attacks: Pool) -> None:
    needs(attacks, "mount_namespace")
    needs(attacks, "pid_namespace")
    assert int(out(attacks, "attack_list_processes")) <= 2


def test_memory_that_rlimit_as_does_not_count_is_still_bounded(tmp_path: Path) -> None:
    registry = Registry.default()
    registry.load(ATTACKS)
    policy = parse_policy(
        "[tools.attack_memfd_bomb]\nmemory_mb = 64\nmax_open_files = 1024\ntimeout_s = 60\n",
        "m.toml",
        tmp_path,
    )
    with Pool(policy, registry=registry, size=1) as pool:
        needs(pool, "cgroup_memory")
        result = pool.call("attack_memfd_bomb")
    if result.ok:  # stopped inside the tool (a limit it could see)
        assert result.output.startswith("stopped after")
        assert int(result.output.split()[2]) <= 64 + 16
    else:
        assert result.error.kind == "memory_limit", result
        assert "64 MiB" in result.error.message
