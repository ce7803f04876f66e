"""A command for tests/test_launch.py to run under `sandbox.launch`: it reports, one
line each, what it could do, so the tests can check every layer from inside."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def attempt(what, action):
    try:
        value = action()
    except BaseException as exc:  # what the sandbox refused, and how
        return {what: f"refused: {type(exc).__name__}"}
    return {what: value if isinstance(value, (str, int, bool)) else "done"}


def status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1]
    return ""


def connect(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(10).decode()


def report(allowed: str, secret: str, port: int) -> None:
    found: dict[str, object] = {"stdin": sys.stdin.readline().strip()}
    found |= attempt("allowed", lambda: Path(allowed).read_text())
    found |= attempt("secret", lambda: Path(secret).read_text())
    found |= attempt("shadow", lambda: Path("/etc/shadow").read_text())
    found |= attempt("ssh", lambda: os.listdir(os.path.expanduser("~root/.ssh")))
    found |= attempt("connect", lambda: connect(port))
    found |= attempt("write_root", lambda: Path("/launch-was-here").write_text("x"))
    found |= {
        "uid": os.getuid(),
        "pid": os.getpid(),
        "cap_eff": status_field("CapEff"),
        "no_new_privs": status_field("NoNewPrivs"),
        "seccomp": status_field("Seccomp"),
        "env": sorted(os.environ),
        "home_is_cwd": os.environ.get("HOME") == os.getcwd(),
    }
    print(json.dumps(found), flush=True)


def limits() -> None:
    found = attempt("big_allocation", lambda: len(bytearray(512 * 2**20)))
    children = []
    try:
        for _ in range(64):
            pid = os.fork()
            if pid == 0:
                os.read(os.open("/dev/zero", os.O_RDONLY), 1)
                import time

                time.sleep(60)
                os._exit(0)
            children.append(pid)
        found["forks"] = len(children)
    except OSError:
        found["forks"] = len(children)
    print(json.dumps(found), flush=True)
    while True:  # burn CPU until cpu_s stops us
        pass


if __name__ == "__main__":
    if sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        limits()
