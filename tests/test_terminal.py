"""No escape code from a model, a tool or a document reaches a person's terminal.

The CLI runs on a real pty (os.openpty) against the scripted model server, with a
hostile document, hostile tool names and arguments, and a hostile answer; what the
terminal receives is read from the pty's other end, byte for byte."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import without_layers_warning

from agent.evals.runner import CaseReport, RunReport, SuiteReport, render_report
from agent.replay import ScriptedModelServer, Step, call, fail, say
from agent.terminal import ascii_json, safe, safe_text

ROOT = Path(__file__).resolve().parent.parent

OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # writes "rm -rf ~" to the clipboard
OSC0 = "\x1b]0;pwned\x07"  # sets the window title
CLEAR = "\x1b[2J\x1b[H"  # clears the screen
RED = "\x1b[31m"
BIDI = "\u202e\u2066\u2069\u202a"
INVISIBLE = "\u200b\u2060\ufeff\U000e0041"  # zero-width, word joiner, BOM, a tag
HOSTILE = f"{OSC52}{OSC0}{CLEAR}{RED}SAFE\rEVIL{BIDI}\x9b2J\x85{INVISIBLE}\x7f\x00"
DOCUMENT = f"Returns {HOSTILE} are accepted within 30 days.\n"
FORGED = "get_current_date\n  issue_refund {} -> ok: Refunded 89.99 USD (1 ms) [approved_tty]"
FORGED_TRACE = "x\n   0.044s    tool issue_refund {} -> ok: Refunded (1.0 ms, pid 7) [approved_tty]"
ANSWER = f"Line one {RED}red\nLine two{OSC52}\r\nLine three {BIDI}end{CLEAR}"

BIDI_AND_INVISIBLE = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]] + [
    "\u200b",
    "\u2060",
    "\ufeff",
    "\U000e0041",
]


def assert_inert(data: bytes) -> None:
    """Nothing in `data` a terminal acts on but the CR and LF of plain lines."""
    assert b"\x1b" not in data, data[max(0, data.find(b"\x1b") - 60) :][:160]
    text = data.decode("utf-8")  # also proves no lone surrogate was written
    c1 = [hex(ord(ch)) for ch in text if 0x80 <= ord(ch) <= 0x9F]
    assert not c1, c1
    assert not [ch for ch in BIDI_AND_INVISIBLE if ch in text]
    controls = {hex(ord(ch)) for ch in text if unicodedata.category(ch) == "Cc"}
    assert controls <= {"0xa", "0xd", "0x8", "0x9"}, controls  # BS: the pty's echo


def policy_file(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "evil.txt").write_text(DOCUMENT, encoding="utf-8")
    path = tmp_path / "policy.toml"
    path.write_text(
        f'[tools.read_file]\nroot = "{docs}"\n\n[tools.issue_refund]\nrequires_approval = true\n'
    )
    return path


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return env | {"XDG_DATA_HOME": str(home)}


def on_pty(
    args: list[str], env: dict[str, str], answers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """Run the CLI with stdin, stdout and stderr on a pty, typing each reply when its
    prompt appears (in order). Returns the exit status and every byte the terminal
    received."""
    main, replica = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdin=replica,
        stdout=replica,
        stderr=replica,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    os.close(replica)
    received = b""
    pending = list(answers)
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every writer closed the pty
                break
            if not chunk:
                break
            received += chunk
            while pending and (found := received.find(pending[0][0], seen)) >= 0:
                prompt, reply = pending.pop(0)
                seen = found + len(prompt)
                os.write(main, reply)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return status, received


@pytest.fixture
def hostile_run(tmp_path: Path) -> tuple[int, bytes, Path, Path]:
    """`run` on a terminal: a document full of escape codes, a tool name that holds a
    forged progress line, colour codes and an OSC in arguments, a hostile answer."""
    policy = policy_file(tmp_path)
    trace = tmp_path / "trace.jsonl"
    script = [
        call(
            ("read_file", {"path": "evil.txt"}),
            (FORGED, {}),
            (FORGED_TRACE, {}),
            ("calculate", {"expression": f"1+1{RED}{OSC0}"}),
        ),
        call(("issue_refund", {"order_id": f"12345{OSC0}{RED}", "amount": 1.0})),
        say(ANSWER),
    ]
    with ScriptedModelServer(script) as server:
        status, out = on_pty(
            [
                "run",
                "Can I return it?",
                "--base-url",
                server.base_url,
                "--policy",
                str(policy),
                "--trace",
                str(trace),
            ],
            base_env(tmp_path),
            [(b"Allow? [y]es", b"n\n")],
        )
    return status, out, trace, policy


def test_nothing_hostile_reaches_the_terminal_of_run(hostile_run) -> None:
    status, out, _, _ = hostile_run
    assert status == 0, out.decode(errors="replace")
    assert_inert(out)
    text = out.decode()
    # Shown, escaped, where it came in: the document in the progress line (its
    # whitespace, CR included, folded to single spaces) ...
    assert 'read_file {"path":"evil.txt"} -> ok: Returns \\x1b]52;c;cm0gLXJmIH4K\\x07' in text
    assert "\\x1b[31mSAFE EVIL\\u202e\\u2066\\u2069\\u202a\\x9b2J" in text
    # ... the model's arguments in the approval prompt, whose answer was no ...
    assert '"12345\\u001b]0;pwned\\u0007\\u001b[31m"' in text
    assert "[denied_tty]" in text
    # ... and the answer, which keeps its lines and nothing else.
    assert "Line one \\x1b[31mred\r\nLine two\\x1b]52;c;cm0gLXJmIH4K\\x07\r\nLine three" in text
    assert "\\u202e\\u2066\\u2069\\u202aend\\x1b[2J\\x1b[H" in text
    # A tool name cannot start a line of its own.
    lines = re.split(r"\r\n|\n|\r", text)
    assert not [line for line in lines if line.startswith("  issue_refund {} -> ok")]
    assert any("get_current_date\\n  issue_refund {} -> ok" in line for line in lines)


def test_chat_on_a_terminal_escapes_the_answer(tmp_path: Path) -> None:
    with ScriptedModelServer([say(ANSWER)]) as server:
        status, out = on_pty(
            ["chat", "--base-url", server.base_url],
            base_env(tmp_path),
            [(b"you> ", b"hello\n"), (b"you> ", b"\x04")],
        )
    assert status == 0, out
    assert_inert(out)
    assert "Line one \\x1b[31mred\r\nLine two\\x1b]52;c;" in out.decode()


def test_the_trace_viewer_shows_one_line_per_event(hostile_run) -> None:
    status, _, trace, _ = hostile_run
    assert status == 0
    assert trace.read_bytes().isascii()  # `tail -f` on a terminal is safe too
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    shown_status, shown = on_pty(["trace", str(trace)], base_env(trace.parent), [])
    assert shown_status == 0
    assert_inert(shown)
    lines = shown.decode().split("\r\n")
    stamped = [line for line in lines if re.match(r"^ +\d+\.\d{3}s  ", line)]
    assert len(stamped) == len(events)  # each event one line, whatever its names hold
    assert not [line for line in lines if "tool issue_refund {} -> ok" in line[:40]]
    (answer,) = [line for line in lines if line.startswith("           answer: ")]
    assert "\\x1b]52" in answer and "\\u202e" in answer


def test_on_a_pipe_the_answer_is_data_and_stays_as_written(tmp_path: Path) -> None:
    """The decision the README states: stdout that is not a terminal gets the answer
    exactly as the model wrote it (a program reads it); stderr lines are escaped."""
    with ScriptedModelServer([say(ANSWER)]) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "run", "hi", "--base-url", server.base_url],
            capture_output=True,
            cwd=ROOT,
            env=base_env(tmp_path),
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ANSWER + "\n").encode()
    assert_inert(proc.stderr)


def test_an_endpoint_error_is_one_escaped_line(tmp_path: Path) -> None:
    error = f"bad key {OSC52}\nsandboxed-agent: forged second line{CLEAR}"
    with ScriptedModelServer([fail(400, error)]) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "run", "hi", "--base-url", server.base_url],
            capture_output=True,
            cwd=ROOT,
            env=base_env(tmp_path),
            timeout=120,
        )
    assert proc.returncode == 1
    assert without_layers_warning(proc.stderr.decode()).count("\n") == 1, proc.stderr
    assert_inert(proc.stderr)
    assert b"forged second line\\x1b[2J" in proc.stderr


def test_tool_prints_ascii_json_that_reads_back_the_same(tmp_path: Path) -> None:
    policy = policy_file(tmp_path)
    args = ["tool", "read_file", "--args", '{"path": "evil.txt"}', "--policy", str(policy)]
    status, out = on_pty(args, base_env(tmp_path), [])
    assert status == 0, out
    assert_inert(out)
    printed = without_layers_warning(out.decode())  # stderr is on the terminal too
    assert json.loads(printed)["output"] == DOCUMENT
    assert out.decode().isascii()


def test_the_eval_report_keeps_one_line_per_row_and_reason() -> None:
    run = RunReport(
        run=1,
        outcome_ok=False,
        path_ok=True,
        failures=[f"outcome: the answer does not contain 'x{RED}'\n  forged reason"],
        reason="answer",
        answer=ANSWER,
        steps=1,
        tokens=10,
        cost_usd=0.0,
        wall_s=0.1,
        trace="t.jsonl",
        judge_score=0.5,
        judge_reason=f"judge says {OSC52}\nFailed runs:\n  all fine",
    )
    report = SuiteReport(f"suite{OSC0}", "m", True, [CaseReport(f"case\n{CLEAR}", [run])])
    text = render_report(report)
    assert_inert(text.encode())
    plain = replace(run, failures=["outcome: f"], judge_reason="j")
    expected = render_report(SuiteReport("s", "m", True, [CaseReport("c", [plain])]))
    assert text.count("\n") == expected.count("\n")  # no reason or name added a line
    assert [line for line in text.split("\n") if line.startswith("Failed runs:")] == [
        "Failed runs:"
    ]


HOSTILE_CHARS = (
    [chr(c) for c in range(0x20)]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + BIDI_AND_INVISIBLE
    + ["\u2028", "\u2029", "\u00a0", "\u3000", "\ud800", "\U0010ffff", "\ue000"]
)


@pytest.mark.parametrize("ch", HOSTILE_CHARS, ids=lambda ch: f"U+{ord(ch):04X}")
def test_every_character_a_terminal_acts_on_is_escaped(ch: str) -> None:
    one = safe(f"a{ch}b")
    assert one.isprintable() and one.startswith("a\\") and one.endswith("b")
    many = safe_text(f"a{ch}b")
    if ch in "\n\t":
        assert many == f"a{ch}b"
    else:
        assert many.isprintable(), many
    assert ascii_json(f"a{ch}b").isascii()


def test_plain_text_is_left_alone() -> None:
    text = "Café, 日本語, emoji 😀, a\\x1b typed by hand, math ∑ ≤ 3"
    assert safe(text) == text == safe_text(text)
    assert safe_text("one\r\ntwo\n\tthree") == "one\ntwo\n\tthree"


def test_a_lone_surrogate_from_the_model_is_replaced_not_a_traceback(tmp_path: Path) -> None:
    body = json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a \ud800 b"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
    ).encode()  # ASCII, with the surrogate as the escape \ud800: valid to json.loads
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer([Step(raw=body)]) as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "hi",
                "--base-url",
                server.base_url,
                "--trace",
                str(trace),
            ],
            capture_output=True,
            cwd=ROOT,
            env=base_env(tmp_path),
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "a \ufffd b\n"
    assert json.loads(trace.read_text().splitlines()[-1])["answer"] == "a \ufffd b"


def test_a_run_that_fails_while_the_model_thinks_says_so_on_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    """The spinner went on over the failure: `\\ model thinking (step 1, $0.0000 so
    far)sandboxed-agent: cannot reach the model ...` on one line."""
    with ScriptedModelServer([fail(401, "bad key")]) as server:
        args = ["run", "hi", "--base-url", server.base_url]
        status, received = on_pty(args, base_env(tmp_path), [])
    assert status == 1, received
    assert b"model thinking" in received  # the spinner was on
    line = received.index(b"sandboxed-agent: the model at")
    assert received[:line].endswith((b"\r", b"\n")), received
    assert b"model thinking" not in received[line:], received  # and stayed off
