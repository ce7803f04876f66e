"""Attacks on what the host shares with every process: UNIX sockets, file metadata,
file modes, SysV IPC, keyrings and user namespaces; and the jail set up from anywhere.

Each attack runs under every combination of the layers that claim to stop it that this
machine offers, and under each such layer alone, so that none stands in for another.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FILE_LAYERS, host_ipc_key, pool_without

from policies import parse_policy
from sandbox import Pool
from tools import Registry

pytestmark = [
    pytest.mark.attack,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the attack tools are x86_64"),
]
TOOLS = str(Path(__file__).with_name("host_attack_tools.py"))
ROOT = str(Path(__file__).resolve().parent.parent)


def pool_with(tmp_path: Path, off: tuple[str, ...], wanted: tuple[str, ...]) -> Pool:
    """A pool with `off` turned off, whose `wanted` layers must all be active here."""
    registry = Registry.default()
    registry.load(TOOLS)
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    tools = ["attack_unix_connect", "attack_stat", "attack_list_dir", "read_file"]
    text = "".join(f'[tools.{name}]\nroot = "docs"\n' for name in tools)
    return pool_without(off, wanted, parse_policy(text, "host.toml", tmp_path), registry=registry)


def out(pool: Pool, tool: str, **args: object) -> str:
    result = pool.call(tool, args)
    assert result.ok, result
    return result.output or ""


class Listener:
    """A UNIX socket server of the host's, mode 0777, that answers and records who came."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, 0o777)
        self.server.listen()
        self.server.settimeout(0.2)
        self.connected: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self.connected.append(conn.recv(100))
                    conn.sendall(b"host secret\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a UNIX socket's path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="s"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listeners(short_dir: Path) -> Iterator[dict[str, Listener]]:
    """A host socket outside every allowed path, one inside the tool's own root (which
    it may read), and an abstract one."""
    (short_dir / "docs").mkdir()
    made = {
        "outside": Listener(str(short_dir / "service.sock")),
        "inside the root": Listener(str(short_dir / "docs" / "service.sock")),
        "abstract": Listener(f"\0sandboxed-agent-test-{os.getpid()}-{id(short_dir)}"),
    }
    yield made
    for listener in made.values():
        listener.close()


def _path(listener: Listener) -> str:
    return "@" + listener.address[1:] if listener.address.startswith("\0") else listener.address


SOCKET_LAYERS = {
    # name: (layers off, layers that must be on, which sockets they must keep out)
    "every layer": ((), ("seccomp", "bind_mounts"), ("outside", "inside the root", "abstract")),
    "seccomp alone": (
        # With no file layer, a root worker must be allowed uid 0 explicitly.
        ("bind_mounts", "landlock", "network_namespace", "unprivileged_uid"),
        ("seccomp",),
        ("outside", "inside the root", "abstract"),
    ),
    "bind mounts alone": (("seccomp", "landlock"), ("bind_mounts",), ("outside",)),
    "network namespace alone": (
        ("seccomp", "landlock", "bind_mounts", "unprivileged_uid"),
        ("network_namespace",),
        ("abstract",),
    ),
}


@pytest.mark.parametrize("layers", list(SOCKET_LAYERS))
def test_host_unix_sockets_are_out_of_reach(
    layers: str, short_dir: Path, listeners: dict[str, Listener]
) -> None:
    off, wanted, kept_out = SOCKET_LAYERS[layers]
    with pool_with(short_dir, off, wanted) as pool:
        for name in kept_out:
            listener = listeners[name]
            answer = out(pool, "attack_unix_connect", path=_path(listener))
            assert answer.startswith("denied"), (name, answer)
            assert not listener.connected, name


def test_a_tool_with_the_network_gets_no_unix_socket(
    short_dir: Path, listeners: dict[str, Listener]
) -> None:
    registry = Registry.default()
    registry.load(TOOLS)
    policy = parse_policy("[tools.attack_unix_connect]\nnetwork = true\n", "n.toml", short_dir)
    with Pool(policy, registry=registry, size=1) as pool:
        if not pool.layers["seccomp"].active:
            pytest.skip(f"seccomp is unavailable here: {pool.layers['seccomp'].detail}")
        for name, listener in listeners.items():
            assert out(pool, "attack_unix_connect", path=_path(listener)).startswith("denied")
            assert not listener.connected, name


JAILED = {name: off for name, (off, _) in FILE_LAYERS.items() if "jail" in name}


@pytest.fixture(params=list(JAILED))
def jailed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pool]:
    with pool_with(tmp_path, JAILED[request.param], ("bind_mounts",)) as pool:
        yield pool


def test_metadata_outside_the_policy_does_not_exist(jailed: Pool, tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    store.write_text("checkpoints")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    hidden = ("/etc/shadow", "/etc/hostname", "/root/.bashrc", f"{ROOT}/pyproject.toml")
    for path in (*hidden, str(store), str(private)):
        if os.path.exists(path):
            assert out(jailed, "attack_stat", path=path).startswith("denied"), path
    # The project's directory is on the way to the tools' code; the tool sees a
    # directory of its own root there, not the host's.
    host = os.stat(ROOT)
    seen = out(jailed, "attack_stat", path=ROOT)
    assert f"size={host.st_size} uid={host.st_uid} mtime={host.st_mtime}" not in seen
    assert out(jailed, "attack_inotify", path=str(private)).startswith("denied")
    assert out(jailed, "attack_inotify", path=str(tmp_path)).startswith("denied")


def test_a_worker_sees_no_other_workers_directory(jailed: Pool) -> None:
    """The pool's directory holds every worker's (spares are waiting as this runs)."""
    listing = out(jailed, "attack_list_dir", path="../..")
    if listing.startswith("ALLOWED"):  # Landlock, where on, refuses even that
        names = json.loads(listing.removeprefix("ALLOWED: ").replace("'", '"'))
        assert len(names) == 1, names  # its own, nothing else
    else:
        assert listing.startswith("denied"), listing


def test_the_jails_binds_are_read_only_without_the_other_file_walls() -> None:
    """With neither Landlock nor a uid of its own, a worker (uid 0 without capabilities,
    or the pool's own user) owns the bound directories it could write but for the
    read-only flag `_jail.build` sets on every bind at once: nothing else stands in."""
    registry = Registry.default()
    registry.load(str(Path(__file__).with_name("attack_tools.py")))
    name = f"sandboxed-agent-owned-{os.getpid()}.txt"
    targets = [Path(ROOT) / "tools" / name, Path(sys.prefix) / name]
    off = ("landlock", "unprivileged_uid")
    try:
        with pool_without(off, ("bind_mounts",), registry=registry) as pool:
            for target in targets:
                seen = pool.call("attack_write", {"path": str(target)}).output or ""
                assert seen.startswith("denied") and "Read-only" in seen, (target, seen)
                assert not target.exists()
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def test_file_modes_hold_inside_the_allowed_paths(tmp_path: Path) -> None:
    """Without a read capability, a file the policy allows is still only as readable
    as its mode says: a root 0600 file, a 0700 directory, /etc/ssl/private."""
    if os.geteuid() != 0:
        pytest.skip("needs root: as a normal user, workers run as that user and read what it may")
    for off in JAILED.values():
        with pool_with(tmp_path, off, ("bind_mounts", "unprivileged_uid")) as pool:
            docs = tmp_path / "docs"
            (docs / "root-only.txt").write_text("root's")
            os.chmod(docs / "root-only.txt", 0o600)
            closed = docs / "closed"
            closed.mkdir(mode=0o700, exist_ok=True)
            (closed / "inside.txt").write_text("behind a closed door")
            for path in ("root-only.txt", "closed/inside.txt"):
                result = pool.call("read_file", {"path": path})
                assert not result.ok and "is not readable" in result.error.message, result
            private = "/etc/ssl/private"
            if os.path.isdir(private) and not os.stat(private).st_mode & stat.S_IROTH:
                assert out(pool, "attack_list_dir", path=private).startswith("denied")


def test_sysv_ipc_is_the_workers_own(tmp_path: Path) -> None:
    key = host_ipc_key()
    with pool_with(tmp_path, (), ("ipc_namespace",)) as pool:
        planted = out(pool, "attack_sysv_plant", key=key)
        assert planted.startswith("ALLOWED"), planted  # in its own namespace, it may
        # A later call (another worker) finds nothing of it.
        assert out(pool, "attack_sysv_read", key=key).startswith("denied")
        # Nor anything the host queued.
        host_queue = _host_queue(key + 1, b"host message")
        try:
            assert out(pool, "attack_sysv_read", key=key + 1).startswith("denied")
        finally:
            _libc.msgctl(host_queue, 0, None)
    assert _host_ipc_keys() & {key, key + 1} == set()


_libc = ctypes.CDLL(None, use_errno=True)


def _host_queue(key: int, text: bytes) -> int:
    queue = _libc.msgget(key, 0o1000 | 0o600)
    assert queue >= 0, os.strerror(ctypes.get_errno())
    message = (1).to_bytes(8, "little") + text
    assert _libc.msgsnd(queue, message, len(text), 0) == 0
    return queue


def _host_ipc_keys() -> set[int]:
    keys = set()
    for name in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{name}") as f:
            next(f)
            keys |= {int(line.split()[0]) for line in f if line.strip()}
    return keys


KEYRING_SCRIPT = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
KEYCTL_JOIN, SESSION = 1, -3
assert libc.syscall(250, KEYCTL_JOIN, None) >= 0  # a session keyring of this test's own
secret = b"sk-in-the-keyring-5550199"
key = libc.syscall(248, b"user", b"sandboxed-agent-test", secret, len(secret), SESSION)
assert key > 0, ctypes.get_errno()
from sandbox import Pool
from tools import Registry
registry = Registry.default()
registry.load(sys.argv[1])
with Pool(registry=registry, size=1) as pool:
    if not pool.layers["keyring"].active:
        print("SKIP", pool.layers["keyring"].detail); raise SystemExit(0)
    print(pool.call("attack_keyring", {"description": "sandboxed-agent-test"}).output)
found = libc.syscall(250, 10, SESSION, b"user", b"planted", 0)
print("planted key found:", found > 0)
"""


def test_the_orchestrators_keyring_is_out_of_reach() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KEYRING_SCRIPT, TOOLS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout)
    answer, planted = proc.stdout.strip().splitlines()
    search, plant, listed = answer.split(" | ")
    assert search.startswith("search denied"), answer
    assert plant.startswith("plant denied"), answer
    assert "sandboxed-agent-test" not in listed, answer
    assert planted == "planted key found: False"


def test_no_user_namespace_can_be_made(tmp_path: Path) -> None:
    with pool_with(tmp_path, (), ("userns_denied",)) as pool:
        direct, program = out(pool, "attack_user_namespace").split(" | ")
    assert direct.startswith("denied"), direct
    assert program != "unshare(1) exit 0", program


def test_the_jail_is_built_from_any_working_directory(tmp_path: Path) -> None:
    """Started from a directory outside every bound path, with Landlock off, the jail
    must still come up, and never leave the tool on the host's files as uid 0."""
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    (elsewhere / "secret.txt").write_text("next to where you started")
    script = (  # noqa: UP031  (a program's text, braces and all)
        "import json, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from sandbox import Pool\n"
        "from tools import Registry\n"
        "registry = Registry.default(); registry.load(%r)\n"
        "with Pool(registry=registry, size=1, disable=['landlock']) as pool:\n"
        "    print(json.dumps({\n"
        "        'jail': pool.layers['bind_mounts'].state,\n"
        "        'uid': pool.layers['unprivileged_uid'].state,\n"
        "        'shadow': pool.call('attack_stat', {'path': '/etc/shadow'}).output,\n"
        "        'beside': pool.call('attack_stat', {'path': %r}).output,\n"
        "        'order': pool.call('get_order_status', {'order_id': '12345'}).ok,\n"
        "    }))\n"
    ) % (TOOLS, str(elsewhere / "secret.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=elsewhere,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    if seen["jail"] != "active":
        pytest.skip("bind mounts are unavailable on this machine")
    assert seen["shadow"].startswith("denied"), seen
    assert seen["beside"].startswith("denied"), seen
    assert seen["order"], seen


SABOTAGE = '''
import os
from sandbox import _linux
from tools import tool

_join = _linux.join_new_session_keyring


def _broken() -> None:
    if os.getpid() == 1:  # in a worker (pid 1 of its namespace), not in a probe
        raise OSError("injected: the keyring could not be replaced")
    _join()


_linux.join_new_session_keyring = _broken


@tool
def would_run() -> str:
    """Say that it ran."""
    return "RAN"
'''


def test_a_layer_that_fails_in_a_worker_fails_the_call_closed(tmp_path: Path) -> None:
    source = tmp_path / "sabotage.py"
    source.write_text(SABOTAGE)
    registry = Registry.default()
    registry.load(str(source))
    with Pool(registry=registry, size=1) as pool:
        if not (pool.layers["keyring"].active and pool.pid_namespaces):
            pytest.skip("needs the keyring layer and PID namespaces")
        result = pool.call("would_run")
        assert not result.ok and result.error.kind == "crashed", result
        assert "did not run" in result.error.message
        assert "injected: the keyring could not be replaced" in result.error.message
        assert "failed closed" in result.error.message
