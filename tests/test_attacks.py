"""Attacks on each isolation promise (`pytest -m attack` runs them alone).

Each hostile tool runs in a real worker and must fail there, leaving the orchestrator,
other processes and the host untouched. A test skips, saying why, only when this
machine truly lacks the layer it attacks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FILE_LAYERS, pool_without, shared

from policies import parse_policy
from sandbox import IsolationWarning, Pool, SandboxUnavailable
from tools import Registry

pytestmark = pytest.mark.attack
ATTACKS = str(Path(__file__).with_name("attack_tools.py"))
ROOT = str(Path(__file__).resolve().parent.parent)
SECRET = "sk-attack-suite-secret-5551234"


@pytest.fixture(scope="module")
def attacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """One pool for the module's attacks under every layer (each call a fresh worker:
    what one attack did cannot help or hide the next), a secret in our environment."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", SECRET)
        registry = Registry.default()
        registry.load(ATTACKS)
        base = tmp_path_factory.mktemp("attacks")
        policy = parse_policy("[tools.attack_connect]\n", "attacks.toml", base)
        with Pool(policy, registry=registry, size=2) as pool:
            yield shared(pool)


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


NETWORK_LAYERS = {
    "both layers": (),
    "namespace alone": ("seccomp",),
    "seccomp alone": ("network_namespace",),
}


@pytest.fixture(scope="module", params=list(NETWORK_LAYERS), ids=list(NETWORK_LAYERS))
def offline(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """A pool with each network layer alone, then both: each must hold by itself (one
    pool per combination, for the module's tests of it)."""
    registry = Registry.default()
    registry.load(ATTACKS)
    off = NETWORK_LAYERS[request.param]
    wanted = {"network_namespace", "seccomp"} - set(off)
    with pool_without(off, wanted, registry=registry) as pool:
        yield shared(pool)


def test_no_connection_to_the_hosts_loopback(offline: Pool, listener: int) -> None:
    assert out(offline, "attack_connect", host="127.0.0.1", port=listener).startswith("denied")
    assert not getattr(listener, "accepted", [])


def test_no_connection_to_an_outside_address(offline: Pool) -> None:
    assert out(offline, "attack_connect", host="1.1.1.1", port=53).startswith("denied")


def test_no_name_resolution(offline: Pool) -> None:
    assert out(offline, "attack_resolve", name="example.com").startswith("denied")


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_INET6, socket.SOCK_STREAM),
        (socket.AF_PACKET, socket.SOCK_RAW),
        (40, socket.SOCK_STREAM),  # AF_VSOCK: a VM's way to its host, in no namespace
    ],
)
def test_no_network_socket_can_even_be_made(attacks: Pool, family: int, kind: int) -> None:
    needs(attacks, "seccomp")
    assert out(attacks, "attack_socket", family=family, kind=kind).startswith("denied")
    # UNIX sockets too: a host service's socket is no business of a tool's.
    unix = out(attacks, "attack_socket", family=socket.AF_UNIX, kind=socket.SOCK_STREAM)
    assert unix.startswith("denied"), unix


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


@pytest.fixture(scope="module")
def confined_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The confined pools' directory: their tools' root (docs) and a secret beside it."""
    base = tmp_path_factory.mktemp("confined")
    docs = base / "docs"
    docs.mkdir()
    (docs / "policy.txt").write_text("Returns accepted within 30 days of delivery.\n")
    (base / "secret.txt").write_text("TOP SECRET")
    return base


@pytest.fixture(scope="module", params=list(FILE_LAYERS), ids=list(FILE_LAYERS))
def confined(request: pytest.FixtureRequest, confined_dir: Path) -> Iterator[Pool]:
    """A pool whose files are confined by both walls, then by each alone (one pool per
    combination, for the module's tests of it)."""
    registry = Registry.default()
    registry.load(ATTACKS)
    policy = parse_policy(
        '[tools.read_file]\nroot = "docs"\n[tools.attack_read]\nroot = "docs"\n',
        "files.toml",
        confined_dir,
    )
    with pool_without(*FILE_LAYERS[request.param], policy, registry=registry) as pool:
        yield shared(pool)


def test_host_files_cannot_be_read(confined: Pool, confined_dir: Path) -> None:
    project = Path(__file__).resolve().parent.parent
    for path in (
        "/etc/shadow",
        "/root/.bashrc",
        str(Path(__file__)),
        str(project / "pyproject.toml"),
        str(confined_dir / "secret.txt"),  # beside the tool's root
        f"/proc/{os.getpid()}/root{confined_dir}/secret.txt",  # through the host's root
        f"/proc/{os.getppid()}/root/etc/hostname",
    ):
        if os.path.exists(path):
            assert out(confined, "attack_read", path=path).startswith("denied"), path


def test_the_tools_root_and_the_system_stay_readable(confined: Pool) -> None:
    text = out(confined, "read_file", path="policy.txt")
    assert text.startswith("Returns accepted within 30 days")
    assert out(confined, "attack_read", path="/etc/passwd").startswith("ALLOWED: b'root:")
    assert out(confined, "calculate", expression="2**10") == "1024"


def test_the_orchestrators_environment_cannot_be_read(attacks: Pool) -> None:
    needs(attacks, "capabilities")
    direct = out(attacks, "attack_read", path=f"/proc/{os.getpid()}/environ")
    assert direct.startswith("denied")
    assert out(attacks, "attack_environ_scan", secret=SECRET).startswith("not found")


def test_nothing_can_be_written_outside_the_workdir(confined: Pool, confined_dir: Path) -> None:
    targets = [
        confined_dir / "owned.txt",
        confined_dir / "docs" / "owned.txt",
        Path("/tmp/sandboxed-agent-owned.txt"),
        Path("/etc/owned"),
    ]
    for target in targets:
        assert out(confined, "attack_write", path=str(target)).startswith("denied"), target
        assert not target.exists()
    assert out(confined, "attack_write", path="inside.txt").startswith("ALLOWED")
    assert out(confined, "attack_write", path="/dev/null").startswith("ALLOWED")


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


def test_the_pids_limit_cannot_be_raised_from_inside(confined: Pool) -> None:
    needs(confined, "cgroup_pids")
    assert out(confined, "attack_raise_pids_limit").startswith("denied")


def test_strict_isolation_fails_closed_naming_the_missing_layer() -> None:
    """An orchestrator that is root without capabilities can make no namespace (nor
    map uid 0 into a user namespace of its own, without CAP_SETFCAP): strict mode must
    refuse to run anything, and say which layers are missing and why."""
    script = (
        "from sandbox import _linux; _linux.drop_privileges(None)\n"
        "from sandbox import IsolationWarning, Pool, SandboxUnavailable, SandboxUnavailable\n"
        "try:\n"
        "    Pool(size=1, isolation='strict')\n"
        "except SandboxUnavailable as exc:\n"
        "    print(exc); raise SystemExit(3)\n"
    )
    if os.geteuid() != 0:
        pytest.skip("needs root: this is root giving its capabilities up")  # pragma: no cover
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 3, proc.stderr
    assert "isolation is strict and these layers are missing: user_namespace (" in proc.stdout
    assert "root without CAP_SETFCAP may not map uid 0" in proc.stdout
    assert "; pid_namespace (" in proc.stdout


def test_a_layer_the_policy_turns_off_is_not_required_by_strict_isolation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)
        with Pool(size=1) as probe:
            missing = {n for n, layer in probe.layers.items() if layer.state == "unavailable"}
    # The memory cgroup, and whatever this host lacks (a normal user without a delegated
    # subtree: the cgroup layers), turned off: strict runs with no other layer missing.
    off = sorted(missing | {"cgroup_memory"})
    with Pool(size=1, isolation="strict", disable=off) as pool:
        assert all(pool.layers[name].detail == "turned off" for name in off)
        assert pool.call("calculate", {"expression": "1+1"}).output == "2"
    for name in sorted(missing)[:1]:  # turned back on, a missing one is required again
        with pytest.raises(SandboxUnavailable, match=f"these layers are missing: .*{name} \\("):
            Pool(size=1, isolation="strict", disable=[n for n in off if n != name])


def test_unknown_or_essential_layers_cannot_be_turned_off() -> None:
    with pytest.raises(ValueError, match="unknown isolation layer 'landlok'; known: user_na"):
        Pool(size=1, disable=["landlok"])
    with pytest.raises(ValueError, match="the rlimits layer cannot be turned off"):
        Pool(size=1, disable=["rlimits"])


def test_strict_isolation_runs_when_every_layer_is_there() -> None:
    try:
        pool = Pool(size=1, isolation="strict")
    except SandboxUnavailable as exc:
        pytest.skip(f"not every layer is available here: {exc}")
    with pool:
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


def test_workers_run_as_unprivileged_uids_of_their_own(attacks: Pool) -> None:
    needs(attacks, "unprivileged_uid")
    results = []
    with ThreadPoolExecutor(2) as executor:
        for result in executor.map(lambda _: attacks.call("attack_whoami"), range(2)):
            results.append(json.loads(result.output or "{}"))
    for who in results:
        assert who["uid"] != 0 and who["gid"] != 0, who
        assert who["caps"] == 0, who  # none kept, not even a read capability
        assert who["bounding"] == 0, who  # nothing to regain through execve
    if attacks.layers["unprivileged_uid"].detail.startswith("each worker"):
        assert results[0]["uid"] != results[1]["uid"]


def test_files_cannot_be_opened_by_handle(attacks: Pool) -> None:
    for path in ("/etc/shadow", "/etc/hostname"):
        if os.path.exists(path):
            assert out(attacks, "attack_open_by_handle", path=path).startswith("denied"), path


def test_processes_are_bounded_without_a_pids_cgroup(tmp_path: Path) -> None:
    """With the pids cgroup off, RLIMIT_NPROC must bind: it does, because the worker's
    uid is its own (root would ignore it)."""
    registry = Registry.default()
    registry.load(ATTACKS)
    policy = parse_policy("[tools.attack_fork_bomb]\nmax_processes = 16\n", "p.toml", tmp_path)
    with Pool(policy, registry=registry, size=1, disable=["cgroup_pids"]) as pool:
        needs(pool, "unprivileged_uid")
        result = out(pool, "attack_fork_bomb")
    assert result.startswith("stopped after"), result
    assert int(result.split()[2]) < 16
