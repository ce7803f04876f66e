"""`run`, `chat` and `trace` as a user runs them, against the scripted server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import without_layers_warning

from agent.replay import ScriptedModelServer, call, fail, say

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-cli-test-secret-9876543210"


def cli(*args: str, env: dict[str, str] | None = None, stdin: str = "", home: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    if home is not None:
        base["XDG_DATA_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=base | (env or {}),
    )


def test_run_prints_the_answer_and_writes_a_trace(tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    script = [call(("get_order_status", {"order_id": "67890"})), say("Delivered 2025-05-01.")]
    with ScriptedModelServer(script) as server:
        proc = cli(
            "run",
            "When was 67890 delivered?",
            "--base-url",
            server.base_url,
            "--trace",
            str(trace),
            env={"OPENAI_API_KEY": KEY},
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Delivered 2025-05-01."
    headers = {k.lower(): v for k, v in server.headers[0].items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in trace.read_text()
    shown = cli("trace", str(trace))
    assert shown.returncode == 0
    assert "tool get_order_status" in shown.stdout and "run ended (answer)" in shown.stdout
    # A field more (another version's) still reads; a cut event is named, not drawn.
    lines = trace.read_text().splitlines()
    lines[0] = lines[0][:-1] + ', "from_a_later_version": 1}'
    trace.write_text("\n".join(lines) + "\n")
    assert cli("trace", str(trace)).returncode == 0
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"event": "run_started"}\n{"event": "model_call", "step": "one"}\n')
    shown = cli("trace", str(cut))
    assert shown.returncode == 2 and shown.stdout == ""
    assert "cut.jsonl: event 1 (run_started): task: field required" in shown.stderr


def test_a_guardrail_ending_the_run_exits_1_with_one_line() -> None:
    with ScriptedModelServer(lambda r: call(("calculate", {"expression": "1+1"}))) as server:
        proc = cli("run", "loop", "--base-url", server.base_url, "--max-iterations", "5")
    assert proc.returncode == 1
    assert proc.stdout == ""
    # Asked for the answer with tools off, it called again: the run stops, saying so.
    assert without_layers_warning(proc.stderr).count("\n") == 1, proc.stderr
    assert "repeated a call" in proc.stderr and "still called calculate" in proc.stderr


def test_an_unreachable_endpoint_is_one_line_not_a_traceback() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli("run", "hello", "--base-url", f"http://127.0.0.1:{port}/v1")
    assert proc.returncode == 1
    assert "cannot reach the model" in proc.stderr and "Traceback" not in proc.stderr


def test_no_endpoint_at_all_is_a_usage_error() -> None:
    proc = cli("run", "hello")
    assert proc.returncode == 2
    assert "no model endpoint" in proc.stderr


def test_bad_flags_are_usage_errors() -> None:
    proc = cli(
        "run", "x", "--max-iterations", "0", env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    )
    assert proc.returncode == 2
    assert "--max-iterations: input should be greater than or equal to 1" in proc.stderr
    missing = cli("trace", "/no/such.jsonl")
    assert missing.returncode == 2 and "trace file not found" in missing.stderr
    # A namespace no memory call could use is refused before the run, not by the model's
    # first remember (a tool_error it reads, the run exit 0) nor, empty, passed over.
    for namespace in ("", "a\x1bb"):
        bad = cli("run", "x", "--memory-namespace", namespace)
        assert bad.returncode == 2 and "a memory namespace is 1 to 200" in bad.stderr


def test_chat_keeps_the_conversation_across_runs_with_a_session(tmp_path: Path) -> None:
    with ScriptedModelServer([say("Hi, Ada."), say("Your name is Ada.")]) as server:
        first = cli(
            "chat",
            "--session",
            "s1",
            "--base-url",
            server.base_url,
            stdin="My name is Ada.\n",
            home=tmp_path,
        )
        second = cli(
            "chat",
            "--session",
            "s1",
            "--base-url",
            server.base_url,
            stdin="What is my name?\n",
            home=tmp_path,
        )
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert second.stdout.strip() == "Your name is Ada."
    remembered = [m["content"] for m in server.requests[1]["messages"]]
    assert "My name is Ada." in remembered and "Hi, Ada." in remembered


def test_a_corrupt_session_file_is_an_error_and_left_untouched(tmp_path: Path) -> None:
    store = tmp_path / "sandboxed-agent" / "sessions.db"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"this is not sqlite" * 100)
    before = store.read_bytes()
    with ScriptedModelServer([say("never")]) as server:
        proc = cli(
            "chat", "--session", "s1", "--base-url", server.base_url, stdin="hi\n", home=tmp_path
        )
    assert proc.returncode == 1
    assert "not a usable session file" in proc.stderr and "Traceback" not in proc.stderr
    assert store.read_bytes() == before


def test_a_session_file_from_another_version_is_refused(tmp_path: Path) -> None:
    import sqlite3
    from contextlib import closing

    store = tmp_path / "sandboxed-agent" / "sessions.db"
    store.parent.mkdir(parents=True)
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    with ScriptedModelServer([say("never")]) as server:
        proc = cli(
            "chat", "--session", "s1", "--base-url", server.base_url, stdin="hi\n", home=tmp_path
        )
    assert proc.returncode == 1
    assert "schema version 99" in proc.stderr


def test_a_429_with_retry_after_through_the_cli() -> None:
    with ScriptedModelServer([fail(429, headers={"Retry-After": "0"}), say("ok")]) as server:
        proc = cli("run", "hi", "--base-url", server.base_url)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok"


def test_on_a_terminal_run_shows_progress_on_stderr() -> None:
    import pty

    script = [call(("get_current_date", {})), say("It is 2025-05-11.", delay_s=0.5)]
    main, replica = pty.openpty()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    with ScriptedModelServer(script) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "run", "date?", "--base-url", server.base_url],
            stdout=subprocess.PIPE,
            stderr=replica,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=base,
        )
    os.close(replica)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert proc.returncode == 0 and proc.stdout.strip() == "It is 2025-05-11."
    text = shown.decode(errors="replace")
    assert "model thinking (step 2" in text
    assert "get_current_date {} -> ok: " in text
