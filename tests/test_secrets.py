"""No secret at rest: an endpoint that echoes the Authorization header back (in error
bodies, in answers, in tool arguments, in its model name) never gets the API key into
a file under the data directory, the eval report, stdout or stderr; and the state
files are private."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMain

from agent.checkpoints import RunStore
from agent.replay import ScriptedModelServer, Step, fail, say

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-hostile-echo-0123456789abcdef"
"""Also the shape (`Bearer KEY`) the header arrives in."""


def echo(server: ScriptedModelServer) -> str:
    """The Authorization header of the request being answered."""
    headers = {k.lower(): v for k, v in server.headers[-1].items()}
    return headers.get("authorization", "")


def tool_call(arguments: dict[str, Any], content: str) -> Step:
    calls = [{"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": ""}}]
    calls[0]["function"]["arguments"] = json.dumps(arguments)  # type: ignore[index]
    message = {"role": "assistant", "content": content, "tool_calls": calls}
    return Step(message=message, finish_reason="tool_calls")


Hostile = Callable[[ScriptedModelServer, int], Step]
"""(server, how many requests so far) -> the next answer, built from the echoed header."""

HOSTILE: dict[str, Hostile] = {
    "answer": lambda s, n: (
        tool_call({"expression": "1 + 1"}, f"thinking; you sent {echo(s)}")
        if n == 1
        else say(f"2. By the way your header was {echo(s)}, key {echo(s)[7:]}")
    ),
    "tool arguments": lambda s, n: (
        tool_call({"expression": f"1 + 1 # {echo(s)}"}, "") if n == 1 else say(f"done {echo(s)}")
    ),
    "error body": lambda s, n: fail(400, f"invalid request, header was {echo(s)}"),
    "401 body": lambda s, n: fail(401, f"bad key {echo(s)}"),
    "not json": lambda s, n: Step(raw=f"<html>{echo(s)}</html>".encode()),
    "no choices": lambda s, n: Step(
        raw=json.dumps({"error": {"message": f"echo {echo(s)}"}}).encode()
    ),
    "model name": lambda s, n: Step(
        raw=json.dumps(
            {
                "model": echo(s),
                "choices": [
                    {
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": echo(s),
                    }
                ],
            }
        ).encode()
    ),
    "unicode escaped": lambda s, n: Step(
        raw=(
            '{"choices": [{"message": {"role": "assistant", "content": "'
            + "".join(f"\\u{ord(c):04x}" for c in echo(s))
            + '"}, "finish_reason": "stop"}]}'
        ).encode()
    ),
}


@pytest.fixture
def hostile_server(request: pytest.FixtureRequest) -> Iterator[ScriptedModelServer]:
    behave: Hostile = HOSTILE[request.param]
    holder: list[ScriptedModelServer] = []

    def script(req: dict[str, Any]) -> Step:
        return behave(holder[0], len(holder[0].requests))

    with ScriptedModelServer(script) as server:
        holder.append(server)
        yield server


def cli(*args: str, home: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`sandboxed-agent ARGS` as a program, the key in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=env | {"OPENAI_API_KEY": KEY, "XDG_DATA_HOME": str(home)},
    )


def files_holding_the_key(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and KEY.encode() in path.read_bytes():
                found.append(str(path))
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("hostile_server", list(HOSTILE), indirect=True)
def test_an_echoed_key_is_written_and_printed_nowhere(
    hostile_server: ScriptedModelServer, tmp_path: Path, agent_main: AgentMain
) -> None:
    """`run` and `chat` in this process (`conftest.AgentMain`): sixteen programs cost
    seconds of CPU each; the eval report and the state files below are programs'."""
    home = tmp_path / "data"
    env = {"OPENAI_API_KEY": KEY, "XDG_DATA_HOME": str(home)}
    trace = tmp_path / "trace.jsonl"
    url = hostile_server.base_url
    run = agent_main("run", "what is 1 + 1?", "--base-url", url, "--trace", str(trace), env=env)
    chat = agent_main("chat", "--session", "s1", "--base-url", url, env=env, stdin="hello\nagain\n")
    # The endpoint did get the key, and did echo it ...
    assert echo(hostile_server) == f"Bearer {KEY}"
    assert "Traceback" not in run.stderr + chat.stderr
    # ... and it is nowhere: not printed, not in the checkpoints, sessions or trace.
    for proc in (run, chat):
        assert KEY not in proc.stdout and KEY not in proc.stderr
    if "(401)" not in run.stderr:  # that message never shows the body
        assert "[redacted]" in run.stdout + run.stderr + trace.read_text()
    assert (home / "sandboxed-agent" / "runs.db").exists()
    assert (home / "sandboxed-agent" / "sessions.db").exists()
    assert files_holding_the_key(home, tmp_path) == []


def test_an_echoed_key_stays_out_of_the_eval_report(tmp_path: Path) -> None:
    holder: list[ScriptedModelServer] = []

    def script(request: dict[str, Any]) -> Step:
        header = echo(holder[0])
        if request.get("model") == "j":  # the judge
            return say(json.dumps({"score": 0.5, "reason": f"saw {header}"}))
        return say(f"The answer is 2 ({header})")

    suite = tmp_path / "suite.toml"
    suite.write_text(
        'name = "echo"\nruns = 1\n[[cases]]\nname = "sum"\ntask = "1 + 1?"\n'
        'expect = { contains = ["2"] }\nrubric = "Answers 2."\n'
    )
    out = tmp_path / "out"
    with ScriptedModelServer(script) as server:
        holder.append(server)
        url = server.base_url
        proc = cli(
            "eval", str(suite), "--base-url", url, "--judge-model", "j", "--out", str(out),
            home=tmp_path / "data",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert echo(server) == f"Bearer {KEY}"
    report = json.loads((out / "report.json").read_text())
    run = report["cases"][0]["results"][0]
    assert "[redacted]" in run["answer"] and "[redacted]" in run["judge_reason"]
    assert KEY not in proc.stdout + proc.stderr
    assert files_holding_the_key(out, tmp_path / "data") == []


def test_state_files_are_private_and_their_side_files_too(tmp_path: Path) -> None:
    with ScriptedModelServer([say("hi"), say("hi again")]) as server:
        url = server.base_url
        run = cli("run", "hello", "--base-url", url, home=tmp_path / "data")
        chat = cli("chat", "--session", "s", "--base-url", url, home=tmp_path / "data", stdin="x\n")
    assert run.returncode == 0 and chat.returncode == 0, run.stderr + chat.stderr
    state = tmp_path / "data" / "sandboxed-agent"
    assert mode(state) == 0o700
    for name in ("runs.db", "sessions.db"):
        assert mode(state / name) == 0o600, name
        # SQLite gives its WAL and SHM files the database's mode; make them appear.
        with sqlite3.connect(state / name) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE probe (x)")
            sides = [state / f"{name}-wal", state / f"{name}-shm"]
            assert all(p.exists() for p in sides)
            assert [mode(p) for p in sides] == [0o600, 0o600]
        db.close()


def test_a_state_file_an_older_version_left_readable_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    RunStore(path)
    path.chmod(0o644)
    RunStore(path)
    assert mode(path) == 0o600


def test_an_empty_state_file_is_an_empty_store(tmp_path: Path) -> None:
    """A file created just before a crash, before its tables: not corrupt, just new."""
    path = tmp_path / "runs.db"
    path.touch(0o600)
    store = RunStore(path)
    assert store.runs() == []
