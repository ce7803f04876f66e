"""Shared fixtures: a guard around every test against what it leaves behind
(processes, SysV IPC objects, files in the temporary directory), and pools of real
workers."""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path

import psutil
import pytest

from sandbox import IsolationWarning, _linux
from sandbox.layers import LAYER_NAMES
from sandbox.pool import LimitsPolicy, Pool
from sandbox.template import WorkerHandle
from tools import Registry

HOSTILE = str(Path(__file__).with_name("hostile_tools.py"))
ROOT = Path(__file__).resolve().parent.parent
SURVIVOR_GRACE_S = 15.0
"""How long a test's processes may take to be gone after it ends (a loaded machine)."""

# Orphans of anything a test starts come back to us, so the guard below sees them.
_linux.set_child_subreaper()

# A suite started in the background of a non-interactive shell (`cmd &`, nohup) inherits
# SIGINT ignored, and so would every program a test starts: the Ctrl-C tests would see
# no interrupt at all. Take Python's own handler back, as a suite started at a prompt has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Whatever the tests, their pools and the commands they start put in a temporary
# directory goes to one of this run's own, so the guard below sees what a test leaves.
# 0711: workers of other uids may pass through it to the directories they are given.
# Each pytest-xdist worker makes its own beside the others, not inside the run's first
# (nested names would push the tests' socket paths past AF_UNIX's 108 bytes).
_HOST_TMP = os.environ.setdefault("SANDBOXED_AGENT_TESTS_HOST_TMP", tempfile.gettempdir())
TEST_TMP = tempfile.mkdtemp(prefix="sa-tests-", dir=_HOST_TMP)
os.chmod(TEST_TMP, 0o711)
os.environ["TMPDIR"] = tempfile.tempdir = TEST_TMP
atexit.register(shutil.rmtree, TEST_TMP, ignore_errors=True)


START_FIRST = (
    "test_as_normal_user.py",
    "test_resume.py",
    "test_secrets.py",
    "test_bench.py",
)
"""Files of a few long tests (minutes of one process, measured), handed out first.
pytest-xdist hands out the files with the most tests first; one of these last is
minutes of one process running alone (`--no-loadscope-reorder` in addopts keeps the
order below instead)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of START_FIRST first, then the others, most tests first (the order
    pytest-xdist would choose). A stable sort: each file's tests stay together, in order."""
    count = Counter(item.path for item in items)
    first = {name: i for i, name in enumerate(START_FIRST)}
    items.sort(key=lambda item: (first.get(item.path.name, len(first)), -count[item.path]))


def _running_descendants() -> dict[int, str]:
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = " ".join(proc.cmdline())[:120]
        except psutil.Error:
            pass
    return found


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture(autouse=True)
def private_data_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions and run checkpoints go to a directory of the test's, never the user's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


def host_ipc_key(pid: int | None = None) -> int:
    """The SysV key a test process (this one, or `pid`) uses for a host-side object of
    its own; `key + 1` is its too (two a pid, so consecutive pids' never meet). The guard
    below leaves other test processes' alone."""
    return 0x5A000000 + 2 * ((os.getpid() if pid is None else pid) % 0x7FFFF)


def _sibling_keys() -> set[int]:
    """The host-side keys of the other pytest-xdist workers of this run: an attack test
    there may hold one for a moment, and it is not this test's."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return set()
    try:
        siblings = {p.pid for p in psutil.Process(os.getppid()).children()} - {os.getpid()}
    except psutil.Error:
        return set()
    return {host_ipc_key(pid) + offset for pid in siblings for offset in (0, 1)}


def _of_another_run(key: int) -> bool:
    """A `host_ipc_key` of a live process other than this one: another pytest run's on
    a shared machine (another engineer's), whose attack test holds it for a moment; the
    guard failed this run's tests for it."""
    offset = key - host_ipc_key(0)
    if not 0 <= offset < 2 * 0x7FFFF or key - host_ipc_key() in (0, 1):  # or this one's
        return False
    pids = (offset // 2 + n * 0x7FFFF for n in range(64))  # pid_max is at most 2**22
    return any(pid != os.getpid() and psutil.pid_exists(pid) for pid in pids if pid > 0)


def _sysv_objects() -> dict[str, str]:
    """Every SysV shared memory segment, message queue and semaphore set of the host,
    but the other test processes' own (see `host_ipc_key`)."""
    others = _sibling_keys()
    found = {}
    for kind in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{kind}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields and int(fields[0]) not in others and not _of_another_run(int(fields[0])):
                    found[f"{kind} {fields[1]}"] = f"key {int(fields[0]):#x}"
    return found


_libc = ctypes.CDLL(None, use_errno=True)


def _remove_sysv(name: str) -> None:
    kind, ident = name.split()
    ipc_rmid = 0
    if kind == "sem":
        _libc.semctl(int(ident), 0, ipc_rmid)
    else:
        getattr(_libc, f"{kind}ctl")(int(ident), ipc_rmid, None)


def _temp_files() -> set[str]:
    """What is in the run's temporary directory, but pytest's own tmp_path tree."""
    return {name for name in os.listdir(TEST_TMP) if not name.startswith("pytest-of-")}


_shared_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def shared(pool: Pool) -> Pool:
    """Mark a pool that outlives one test (module-scoped): its zygote and its idle
    workers are not what a test left. A worker still busy, and anything a call
    started, still are."""
    _shared_pools.add(pool)
    return pool


def _idle_in_shared_pools() -> set[int]:
    pids = set()
    for pool in list(_shared_pools):
        template = pool._template
        pids.add(template.pid)
        for spares in template.spares.values():
            with spares.mutex:
                pids |= {h.host_pid for h in spares.queue if isinstance(h, WorkerHandle)}
        with template._prepared_lock:
            pids |= {h.host_pid for idle in template.prepared.values() for h in idle}
        with pool._lock:
            pids |= {w.host_pid for idle in pool._warm.values() for w in idle}
    return pids


_shared_processes: set[int] = set()


def shared_process(pid: int) -> None:
    """Mark a process that outlives one test (a module's Temporal worker): it and the
    processes it starts (its pool's) are not what a test left. Once it has gone, what
    it leaves behind is, and so is anything a test's own processes start."""
    _shared_processes.add(pid)


def _in_shared_processes() -> set[int]:
    pids = set()
    for pid in list(_shared_processes):
        try:
            top = psutil.Process(pid)
            pids |= {pid} | {p.pid for p in top.children(recursive=True)}
        except psutil.Error:
            _shared_processes.discard(pid)
    return pids


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail any test that leaves a process alive, a SysV IPC object on the host, or a
    file in the temporary directory outside pytest's own per-test directories."""
    before = set(_running_descendants())
    ipc_before = _sysv_objects()
    files_before = _temp_files()
    yield
    deadline = time.monotonic() + SURVIVOR_GRACE_S
    while True:
        _reap_orphans()
        kept = before | _idle_in_shared_pools() | _in_shared_processes()
        left = {pid: cmd for pid, cmd in _running_descendants().items() if pid not in kept}
        # A zygote removes its directory as it exits: give it the same grace.
        files = _temp_files() - files_before
        if (not left and not files) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    ipc = {name: key for name, key in _sysv_objects().items() if name not in ipc_before}
    for name in ipc:
        _remove_sysv(name)
    for name in files:
        shutil.rmtree(os.path.join(TEST_TMP, name), ignore_errors=True)
    if left:
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        _reap_orphans()
        pytest.fail(f"the test left processes alive: {left}")
    if ipc:
        pytest.fail(f"the test left SysV IPC objects on the host: {ipc}")
    if files:
        pytest.fail(f"the test left files in the temporary directory: {sorted(files)}")


FILE_LAYERS = {
    # name: (layers off, layers that must be on)
    "jail and Landlock": ((), ("bind_mounts", "landlock")),
    "jail alone": (("landlock",), ("bind_mounts",)),
    "Landlock alone": (("bind_mounts",), ("landlock",)),
}
"""The file layers together, then each alone: an attack must fail under every one."""


def pool_without(
    off: Collection[str],
    wanted: Collection[str] = (),
    policy: LimitsPolicy | None = None,
    *,
    registry: Registry | None = None,
    size: int = 1,
) -> Pool:
    """A pool with the layers `off` turned off, whose `wanted` layers must be active
    here (else the test is skipped, saying why)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)  # what depends on the one off
        pool = Pool(policy, registry=registry, size=size, disable=off)
    for layer in wanted:
        if not pool.layers[layer].active:
            pool.close()
            pytest.skip(f"{layer} is unavailable here: {pool.layers[layer].detail}")
    return pool


@pytest.fixture
def registry() -> Registry:
    registry = Registry.default()
    registry.load(HOSTILE)
    return registry


def pid_namespaces_available() -> bool:
    """As root, this process can make them; as a normal user, a zygote can, inside a
    user namespace of its own (`sandbox._userns`)."""
    if os.geteuid() == 0:
        return _linux.PidNamespaces().available
    from sandbox import _probes, _userns

    return _probes.in_child(lambda: _userns.probe(True)) is None


@pytest.fixture(params=["pid-namespace", "subreaper"])
def process_tree(request: pytest.FixtureRequest) -> str:
    if request.param == "pid-namespace" and not pid_namespaces_available():
        pytest.skip("PID namespaces are not available on this machine")
    return request.param


@pytest.fixture
def pool(registry: Registry) -> Iterator[Pool]:
    with Pool(registry=registry, size=2) as p:
        yield p


def sleepers(marker: str) -> list[int]:
    """Processes running `sleep <marker>`, anywhere on the machine, that can still run.
    One exiting, a zombie or one with SIGKILL pending is on its way out: a call answers
    once its kill is certain and the deaths are reaped after (the leftover guard still
    sees every one gone by the test's end)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) == 2 and cmd[0].endswith("sleep") and cmd[1] == marker and can_run(proc.pid):
            found.append(proc.pid)
    return found


def can_run(pid: int) -> bool:
    """Whether `pid` may still run an instruction of its own: not exiting already
    (PF_EXITING, a zombie) and no SIGKILL pending (it never returns to its code)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        with open(f"/proc/{pid}/stat") as f:
            flags = int(f.read().rpartition(")")[2].split()[6])
    except (OSError, ValueError, IndexError):
        return False  # gone
    pending = int(fields.get("SigPnd", "0"), 16) | int(fields.get("ShdPnd", "0"), 16)
    return not (flags & 0x4 or pending & (1 << 8) or fields.get("State", "")[:1] in "ZX")


def unique_marker() -> str:
    """A sleep length no other process uses: how a test finds its grandchildren."""
    return f"{3000 + os.getpid() % 1000}.{time.monotonic_ns() % 10**9}"


def agent_cli(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`sandboxed-agent ARGS` as a script runs it: no terminal (nobody to ask), a data
    home of the test's, a dummy key, none of the caller's endpoint settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=base | {"XDG_DATA_HOME": str(home), "OPENAI_API_KEY": "sk-test"} | (env or {}),
    )


class AgentMain:
    """`sandboxed-agent ARGS` as `agent.cli.main` runs it, in this process: no
    interpreter to start nor SDK to import (seconds of CPU a command), for a test of
    what a command does rather than of the program around it. Each command gets what
    a program of `agent_cli`'s gets: the project as its directory, none of the caller's
    endpoint settings (`env` added), `stdin` as its input, and no secret known yet
    (`agent.scrubbing` keeps those it is told of for the process's life). What it
    prints is read at file descriptors 1 and 2: the pool's processes' output too."""

    def __init__(self, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capfd, self.monkeypatch = capfd, monkeypatch

    def __call__(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        import io

        from agent import scrubbing
        from agent.cli import main

        patch = self.monkeypatch
        for name in [k for k in os.environ if k.startswith(("OPENAI_", "PYTHONPATH"))]:
            patch.delenv(name)
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        patch.chdir(ROOT)
        patch.setattr(sys, "stdin", io.StringIO(stdin))
        patch.setattr(scrubbing, "_secrets", set())
        self.capfd.readouterr()
        status = main(list(args))
        out, err = self.capfd.readouterr()
        return subprocess.CompletedProcess(["sandboxed-agent", *args], status, out, err)


@pytest.fixture
def agent_main(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> AgentMain:
    return AgentMain(capfd, monkeypatch)


LAYERS_WARNING = re.compile(
    r"sandboxed-agent: warning: sandbox layers unavailable here: "
    rf"(?:{'|'.join(LAYER_NAMES)})(?:, (?:{'|'.join(LAYER_NAMES)}))* "
    r"\(see: sandboxed-agent doctor\)"
)
"""The CLI's warning, once per pool, that this host lacks layers: a normal user without
a delegated cgroup subtree gets it for the three cgroup layers (see the README)."""


def without_layers_warning(output: str) -> str:
    """`output` without the one line `LAYERS_WARNING` (if there): what a test of
    something else sees of stderr wherever it runs. A second such line stays."""
    lines = output.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if LAYERS_WARNING.fullmatch(line.rstrip("\r\n")):
            del lines[i]
            break
    return "".join(lines)
