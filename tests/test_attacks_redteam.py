"""The red-team round's findings on the composed layers, each now an attack that must
fail: datagram socket pairs, a root worker with no file layer, uids and keyrings that
pools shared."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pool_without, sleepers, unique_marker

from policies import parse_policy
from sandbox import IsolationWarning, Pool, SandboxUnavailable, _landlock
from tools import Registry

pytestmark = [
    pytest.mark.attack,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the attack tools are x86_64"),
]
TOOLS = str(Path(__file__).with_name("redteam_tools.py"))


def make_pool(
    base: Path, policy: str, off: tuple[str, ...] = (), wanted: tuple[str, ...] = ()
) -> Pool:
    registry = Registry.default()
    registry.load(TOOLS)
    return pool_without(off, wanted, parse_policy(policy, "rt.toml", base), registry=registry)


class DgramListener:
    """A host UNIX datagram service (as journald's /dev/log or systemd's notify socket)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, 0o777)
        self.sock.setblocking(False)

    def received(self) -> bytes | None:
        try:
            return self.sock.recv(100)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: a UNIX socket's path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="r"))
    (path / "docs").mkdir()
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


DGRAM_CASES = {
    # name: (where the host socket is, policy, layers off, layers that must be on)
    "inside the root, every layer": ("docs/svc.sock", 'root = "docs"', (), ("seccomp",)),
    "anywhere, Landlock alone": ("svc.sock", "", ("bind_mounts",), ("seccomp", "landlock")),
    "abstract, with the network": ("@", "network = true", ("landlock",), ("seccomp",)),
}


@pytest.mark.parametrize("case", list(DGRAM_CASES))
def test_a_datagram_socket_pair_reaches_no_host_socket(case: str, short_dir: Path) -> None:
    where, settings, off, wanted = DGRAM_CASES[case]
    if where == "@":
        address = f"\0sandboxed-agent-rt-{os.getpid()}-{id(short_dir)}"
        shown = "@" + address[1:]
    else:
        address = shown = str(short_dir / where)
    listener = DgramListener(address)
    try:
        policy = f"[tools.rt_dgram_send]\n{settings}\n"
        with make_pool(short_dir, policy, off, wanted) as pool:
            result = pool.call("rt_dgram_send", {"path": shown})
        # The pair itself is refused (the tool's socketpair raises), or its send is.
        refused = not result.ok and "Permission denied" in result.error.message
        assert refused or result.output.startswith("denied"), result
        assert listener.received() is None
    finally:
        listener.close()


def test_no_worker_runs_as_root_without_a_file_layer(tmp_path: Path) -> None:
    """With both file layers off, a worker that could not get a uid of its own (the
    interpreter under a 0700 home) would be uid 0 over the whole host: the pool refuses
    to start. Where it gets a uid of its own, root's files stay out of its reach."""
    if os.geteuid() != 0:
        pytest.skip("needs root: as a normal user, workers never run as root")
    secret = tmp_path / "root-only.txt"
    secret.write_text("host secret\n")
    secret.chmod(0o600)
    try:
        pool = make_pool(tmp_path, "", ("bind_mounts", "landlock"))
    except SandboxUnavailable as exc:
        assert "workers would run as uid 0 with no file layer" in str(exc)
        return
    with pool:
        assert pool.layers["unprivileged_uid"].active
        result = pool.call("rt_root_on_host", {"path": str(secret)})
    assert result.ok, result
    assert "READ" not in result.output and "CORE_PATTERN WRITABLE" not in result.output
    assert secret.read_text() == "host secret\n"


def test_a_uid_0_worker_in_the_jail_alone_cannot_write_what_it_may_read(tmp_path: Path) -> None:
    """Without Landlock or a uid of its own, a worker is uid 0 (no capabilities) and
    root's files are its own: only the read-only binds keep it from writing its root's
    (and the system's) files."""
    if os.geteuid() != 0:
        pytest.skip("needs root: as a normal user, workers never run as root")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "policy.txt").write_text("Returns accepted within 30 days.\n")
    policy = '[tools.rt_overwrite]\nroot = "docs"\n'
    with make_pool(tmp_path, policy, ("landlock", "unprivileged_uid"), ("bind_mounts",)) as pool:
        result = pool.call("rt_overwrite", {"path": str(docs / "policy.txt")})
    assert result.ok and result.output == "denied: Read-only file system", result
    assert (docs / "policy.txt").read_text() == "Returns accepted within 30 days.\n"


SIGNAL_WALLS = {
    # name: (layers off, the layer left that walls signals)
    "no layer walls signals": (("pid_namespace", "landlock", "unprivileged_uid"), None),
    "Landlock's signal scope alone": (("pid_namespace", "unprivileged_uid"), "landlock"),
    "a uid of its own alone": (("pid_namespace", "landlock"), "unprivileged_uid"),
}


@pytest.mark.parametrize("case", list(SIGNAL_WALLS))
def test_a_tool_cannot_kill_a_process_outside_its_call(case: str, tmp_path: Path) -> None:
    """Without a PID namespace a tool names every process on the host; only Landlock's
    signal scope (ABI 6) or a uid of its own keeps its kill() inside its call. The
    victim, a process of the orchestrator's own uid (root's, or the normal user's), as
    the orchestrator itself, sshd or the user's shell are: the pool refuses to start
    where no layer walls signals, and elsewhere the victim lives."""
    off, wall = SIGNAL_WALLS[case]
    victim = subprocess.Popen(["sleep", unique_marker()])
    try:
        try:
            pool = make_pool(tmp_path, "", off)
        except SandboxUnavailable as exc:
            assert "no layer walls signals" in str(exc), exc
            offered = {"landlock": _landlock.abi_version() >= 6, "unprivileged_uid": False}
            offered["unprivileged_uid"] = os.geteuid() == 0
            assert wall is None or not offered[wall], f"refused, yet {wall} walls signals: {exc}"
            if wall is not None:
                pytest.skip(f"{wall} walls no signal here: {exc}")
            return
        with pool:
            result = pool.call("rt_kill", {"pids": [victim.pid]})
        assert result.ok, result
        assert "KILLED" not in result.output and victim.poll() is None, result
    finally:
        victim.kill()
        victim.wait()


def test_without_a_pid_namespace_seccomp_refuses_kill_everyone(tmp_path: Path) -> None:
    """The pool that accepts unwalled signals, knowingly, still loses the blanket
    kill(-1) (seccomp, below any wall), and its tools still kill their own children:
    a `subprocess` timeout, a process group of their own. Nor can a trusted tool leave
    a process behind its warm worker with clone(CLONE_PARENT), a child of the zygote
    that the worker's clean-up (its own children) never sees."""
    registry = Registry.default()
    registry.load(TOOLS)
    off = ("pid_namespace", "landlock", "unprivileged_uid")
    trusted = parse_policy("[tools.rt_clone_parent]\ntrusted = true\n", "rt.toml", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)
        pool = Pool(trusted, registry=registry, size=1, disable=off, accept_unwalled_signals=True)
    with pool:
        if not pool.layers["seccomp"].active:
            pytest.skip(f"no seccomp here: {pool.layers['seccomp'].detail}")
        marker = unique_marker()
        escaped = pool.call("rt_clone_parent", {"marker": marker})
        left = sleepers(marker)  # the warm worker still serves: nothing of its call may run
        result = pool.call("rt_kill_everyone_then_own_children", {"marker": marker})
    assert escaped.ok and left == [], (escaped, left)
    assert escaped.output == "refused: Operation not permitted", escaped
    assert result.ok, result
    seen = json.loads(result.output or "")
    assert seen == {
        "everyone": "denied: Operation not permitted",
        "timeout": "killed at the timeout",
        "group": -9,
    }, seen
    assert sleepers(marker) == []


def test_a_key_left_in_a_worker_uids_keyring_reaches_no_later_call(tmp_path: Path) -> None:
    """With seccomp off, keyring calls work; a key a call leaves in its uid's user
    keyring (which outlives the worker) must not be found by a later call, in this
    pool or the next."""
    description = f"rt-{os.getpid()}-{id(tmp_path)}"
    with make_pool(tmp_path, "", ("seccomp",), ("unprivileged_uid",)) as pool:
        planted = pool.call("rt_key_plant", {"description": description, "secret": "s3"})
        assert planted.ok, planted
    with make_pool(tmp_path, "", ("seccomp",), ("unprivileged_uid",)) as pool:
        found = pool.call("rt_key_find", {"description": description})
    assert found.ok and found.output == "not found", found


def test_pools_never_share_a_worker_uid(tmp_path: Path) -> None:
    """With the pids cgroup off, RLIMIT_NPROC counts a uid's processes: a tool in pool
    A holding processes must not take pool B's tool's share."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a uid per worker; as a normal user every worker runs as that user")
    data = tmp_path / "data"
    data.mkdir()
    policy = (
        '[tools.rt_hold_processes]\ndata_dir = "data"\nmax_processes = 17\ntimeout_s = 60\n'
        "[tools.rt_fork_some]\nmax_processes = 16\n"
    )
    off = ("cgroup_pids",)
    with (
        make_pool(tmp_path, policy, off, ("unprivileged_uid",)) as a,
        make_pool(tmp_path, policy, off, ("unprivileged_uid",)) as b,
    ):
        assert a.layers["unprivileged_uid"].detail != b.layers["unprivileged_uid"].detail
        held: list[object] = []
        holder = threading.Thread(
            target=lambda: held.append(a.call("rt_hold_processes", {"count": 16}))
        )
        holder.start()
        try:
            while not (data / "ready").exists() and holder.is_alive():
                holder.join(0.05)  # the holder says when its processes run
            forked = b.call("rt_fork_some", {"count": 4})
        finally:
            (data / "release").write_text("")
            holder.join()
    assert forked.ok and forked.output == "4", forked
