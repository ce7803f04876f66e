"""The isolation peers: a new interpreter in a fresh sandbox for every call.

Each runs the same trivial Python call, `python -S -c 'print(i)'`, under its own tool:
none (`subprocess`), bubblewrap, firejail, and Anthropic's sandbox-runtime (`srt`). A
tool that is not installed, or cannot make its sandbox here, is reported missing with
the reason. `bench/setup.sh` installs them where a package manager can.

The hung-tool run starts the same `hang` as ours (SIGTERM ignored, optionally a
setsid grandchild), waits for it to say it runs, then gives it the deadline and
SIGKILLs the peer's own process, as `subprocess.run(timeout=)` does. The deadline is
counted from the moment the tool runs, not from the start: these peers' start-up alone
can take longer than 100 ms.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

from .bench_tools import echo
from .peers import Missing, Peer
from .stats import MARKER

READY_TIMEOUT_S = 60.0
"""Longest wait for a hung tool to say it runs (sandbox-runtime alone takes ~0.5 s)."""
GONE_WAIT_S = 0.5
"""How long what a killed peer started may take to die before it counts as a survivor."""

_HANG = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if {grandchild}:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", "{marker}"])
        os._exit(0)
    os.waitpid(pid, 0)
print("running", flush=True)
time.sleep(3600)
"""


class Command(Peer):
    """A new `python -S -c CODE` per call, run as the tool's prefix says."""

    name = "subprocess python -c"
    reused = False
    binary: str | None = None
    install = ""
    slow = 1
    """How many times fewer samples it gets than the others (sandbox-runtime: ~0.5 s)."""

    def __init__(self, workers: int = 1) -> None:
        if self.binary is not None and shutil.which(self.binary) is None:
            raise Missing(f"{self.binary} is not installed ({self.install})")
        self._left: list[psutil.Process] = []
        probe = subprocess.run(
            self.argv("print(0)"), env=self.env(), capture_output=True, text=True
        )
        if probe.returncode != 0 or probe.stdout.strip() != "0":
            self.close()
            last = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
            raise Missing(f"{self.binary} cannot run its sandbox here: {last[:200]}")

    def prefix(self) -> list[str]:
        return []

    def argv(self, code: str) -> list[str]:
        return [*self.prefix(), sys.executable, "-S", "-c", code]

    def env(self) -> dict[str, str] | None:
        return None

    def call(self, fn: Callable[[int], int], i: int) -> Any:
        assert fn is echo, "an isolation peer runs the trivial call only"
        out = subprocess.run(
            self.argv(f"print({i})"),
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout)

    def call_with_timeout(self, grandchild: bool, timeout: float) -> float:
        """Returns when the deadline was (the tool said it runs, plus `timeout`)."""
        code = _HANG.format(grandchild=grandchild, marker=MARKER)
        proc = subprocess.Popen(
            self.argv(code), env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
            line = proc.stdout.readline() if ready else b""
            assert line == b"running\n", (self.name, line)
            deadline = time.perf_counter() + timeout
            tree = psutil.Process(proc.pid).children(recursive=True)
            # A sleep to the deadline, not Popen.wait(timeout), which polls up to 50 ms
            # apart: the kill itself is what is measured.
            time.sleep(max(0.0, deadline - time.perf_counter()))
            assert proc.poll() is None, f"{self.name}: the hung tool exited"
            proc.kill()  # what subprocess.run(timeout=) does: its own child only
            proc.wait()
            self._left = [p for p in tree if _running(p)]
            return deadline
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def survivors(self) -> list[psutil.Process]:
        """What the last kill left running of the tree the tool ran in (the marked
        grandchild included, if it is still in that tree) after `GONE_WAIT_S`, killed
        now that it is counted."""
        left, self._left = self._left, []
        alive = outliving(left, GONE_WAIT_S)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        return alive


class Bubblewrap(Command):
    """What Codex CLI and sandbox-runtime build on."""

    name = "bubblewrap"
    binary = "bwrap"
    install = "apt-get install bubblewrap"

    def prefix(self) -> list[str]:
        # The host's tree read-only, as Codex's full-read mode: bwrap's root is empty.
        return [
            "bwrap",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--",
        ]


class Firejail(Command):
    name = "firejail"
    binary = "firejail"
    install = "apt-get install firejail"

    def prefix(self) -> list[str]:
        return ["firejail", "--quiet", "--net=none", "--noprofile", "--"]


class SandboxRuntime(Command):
    """Anthropic's sandbox-runtime: bubblewrap, seccomp and socat proxies, from node."""

    name = "sandbox-runtime (srt)"
    binary = "srt"
    install = "npm install -g @anthropic-ai/sandbox-runtime; it needs ripgrep and socat"
    slow = 20

    def __init__(self, workers: int = 1) -> None:
        # No network and no writes beyond its defaults; its settings in a file of ours.
        self._dir = tempfile.mkdtemp(prefix="bench-srt-")
        self._settings = os.path.join(self._dir, "srt-settings.json")
        settings = {
            "network": {"allowedDomains": [], "deniedDomains": []},
            "filesystem": {"denyRead": [], "allowWrite": [], "denyWrite": []},
        }
        with open(self._settings, "w") as f:
            json.dump(settings, f)
        super().__init__(workers)

    def argv(self, code: str) -> list[str]:
        # srt joins its arguments into one shell line unescaped: give it one, escaped.
        return ["srt", "-s", self._settings, "-c", shlex.join(super().argv(code))]

    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": self._dir}  # its proxies' sockets go there

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


PEERS: list[type[Command]] = [Command, Bubblewrap, Firejail, SandboxRuntime]


def outliving(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """Those of `procs` still running (not even a zombie) after up to `grace` s."""
    end = time.monotonic() + grace
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= end:
            return alive
        time.sleep(0.005)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
