"""The demo replays honestly: each live tool result is checked against the recording,
a difference is said plainly and ends the replay with exit 1 and no answer, and on a
terminal the turns, a spinner while tools run, and wrapped, escaped lines are shown."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMain, without_layers_warning

from agent.demo import TRANSCRIPT, run_demo
from agent.demo_view import DemoView, columns, wrap
from agent.loop import ToolOutcome
from agent.recording import Recorded, Transcript, differs
from agent.replay import ScriptedModelServer, fail
from agent.terminal import safe
from policies import parse_policy
from sandbox import Pool
from tools import Registry

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "policies" / "demo.toml"
HOSTILE = str(Path(__file__).with_name("hostile_tools.py"))
RECORDED_ANSWER = json.loads(TRANSCRIPT.read_text())["turns"][-1]["content"]


def demo_policy_with(tmp_path: Path, text: str) -> Path:
    """The demo's policy with `text` laid over it (a tool made to fail)."""
    path = tmp_path / "policy.toml"
    path.write_text(f'extends = "{DEMO}"\n{text}')
    return path


@pytest.fixture(autouse=True)
def no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_an_unreadable_orders_database_stops_the_replay_with_exit_1(
    tmp_path: Path, capsys: Any
) -> None:
    """The sandbox bug of a fresh clone: the order lookups fail. The demo says which
    call, what was recorded and what happened, and never shows the recorded answer."""
    gone = tmp_path / "no-such-dir" / "orders.db"
    policy = demo_policy_with(
        tmp_path, f'[tools.get_order_status]\nsettings = {{ orders_db = "{gone}" }}\n'
    )
    out = io.StringIO()
    assert run_demo(policy, out) == 1
    shown = out.getvalue()
    said = next(line for line in shown.splitlines() if line.startswith("DIFFERS"))
    assert said.startswith("DIFFERS   get_order_status {")  # which call
    assert ': recorded, it returned {"order_id":"12345","status":"delivered"' in said
    assert "live, it failed with tool_error: OperationalError: unable to open database" in shown
    assert "No answer is shown" in shown
    assert RECORDED_ANSWER not in shown and "2025-05-10" not in shown
    assert "\nassistant" not in shown
    assert "track_shipment" not in shown  # the recorded turns after the difference never ran
    assert "differ from the recording; the replay stopped there" in capsys.readouterr().err


def test_a_document_that_cannot_be_read_stops_the_replay(tmp_path: Path) -> None:
    empty = tmp_path / "docs"
    empty.mkdir()
    empty.chmod(0o755)
    policy = demo_policy_with(tmp_path, f'[tools.read_file]\nroot = "{empty}"\n')
    out = io.StringIO()
    assert run_demo(policy, out) == 1
    shown = out.getvalue()
    assert 'policy.txt"}: recorded, it returned Returns accepted' in shown
    assert "live, it failed with tool_error" in shown and RECORDED_ANSWER not in shown


@pytest.fixture
def pool() -> Any:
    registry = Registry.default()
    registry.load("tools.demo")
    registry.load(HOSTILE)
    text = DEMO.read_text() + "\n[tools.slow_stamp]\ntimeout_s = 2\n"
    with Pool(parse_policy(text, "demo.toml", DEMO.parent), registry=registry) as p:
        yield p


def live(pool: Pool, tool: str, args: dict[str, Any]) -> ToolOutcome:
    result = pool.call(tool, args)
    return ToolOutcome("call_1", tool, json.dumps(args), result, "not_required", executed=True)


def recorded(tool: str, path: str | None = None) -> Recorded:
    for turn in Transcript.load(TRANSCRIPT).turns:
        for c in turn.tool_calls:
            if c.tool == tool and (path is None or c.args.get("path") == path):
                return c.recorded
    raise AssertionError(tool)


def test_the_hung_tool_must_be_killed_by_the_sandbox_at_its_deadline(pool: Pool) -> None:
    hung = recorded("track_shipment")
    assert differs(hung, live(pool, "track_shipment", {"order_id": "12345"})) is None
    # Another tool's own deadline, killed by the sandbox: the same in substance.
    assert differs(hung, live(pool, "slow_stamp", {"seconds": 30})) is None
    # It answered instead of hanging: a result where the recording has a timeout.
    said = differs(hung, live(pool, "slow_stamp", {"seconds": 0}))
    assert said and said.startswith("live, it returned {")
    # A tool that says it timed out, in its exception, is not a timeout.
    said = differs(hung, live(pool, "raise_error", {"message": "did not finish within 2 s"}))
    assert said == "live, it failed with tool_error: RuntimeError: did not finish within 2 s"


def test_the_path_escape_must_be_refused_for_leaving_the_root(pool: Pool) -> None:
    escape = recorded("read_file", "../../../etc/passwd")
    refused = live(pool, "read_file", {"path": "../../../etc/passwd"})
    assert differs(escape, refused) is None
    missing = live(pool, "read_file", {"path": "nope.txt"})  # a tool_error, for another reason
    said = differs(escape, missing)
    assert said and said.startswith("live, it failed with tool_error for another reason: ")
    crashed = live(pool, "raise_error", {"message": "leaves the document root"})
    assert "for another reason" in (differs(escape, crashed) or "")


def test_a_result_differs_in_substance_only(pool: Pool) -> None:
    order = recorded("get_order_status")
    assert differs(order, live(pool, "get_order_status", {"order_id": "12345"})) is None
    other = differs(order, live(pool, "get_order_status", {"order_id": "67890"}))
    assert other and other.startswith("live, it returned something else: ")
    denied = ToolOutcome("c", "x", "{}", live(pool, "get_current_date", {}).result, "repeat_note")
    assert differs(recorded("get_current_date"), denied) == "live, it was not run (repeat_note)"


def read_pty(main: int, proc: subprocess.Popen[bytes]) -> bytes:
    """Everything written to the terminal, read as it comes (a full pty would block)."""
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(60)
    return shown


WIDTH = 60


def demo_on_a_pty(width: int | None) -> tuple[int, subprocess.Popen[bytes]]:
    """The demo started on a new terminal `width` columns wide (None: its size never
    set), without an endpoint; returns the terminal's main side and the process."""
    main, replica = os.openpty()
    if width is not None:
        fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 40, width, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo"],
        stdin=subprocess.DEVNULL,
        stdout=replica,
        stderr=replica,
        cwd=ROOT,
        env=env,
    )
    os.close(replica)
    return main, proc


def test_on_a_terminal_turns_spinner_and_wrapping_show_as_they_happen() -> None:
    main, proc = demo_on_a_pty(WIDTH)
    try:
        shown = read_pty(main, proc).decode()
    finally:
        os.close(main)
    assert proc.returncode == 0, shown
    # The model's turn, then the spinner while the hung tool runs, then its outcome.
    turn = shown.index("model     [recorded] asks for track_shipment")
    outcome = shown.index("tool      track_shipment")
    frames = re.findall(r"\r([|/\\-]) running track_shipment \((\d+\.\d) s\)", shown[turn:outcome])
    assert len({frame for frame, _ in frames}) >= 2, shown[turn:outcome]  # it turned
    assert [float(s) for _, s in frames] == sorted(float(s) for _, s in frames)
    assert "assistant [recorded] No, I'm sorry" in shown
    assert "Every tool result matched the recording." in shown
    assert "\x1b" not in shown  # nothing written holds an escape sequence
    # The demo's own lines, not the one warning a host without every layer adds.
    own = without_layers_warning(shown)
    lines = [piece for line in own.split("\r\n") for piece in line.split("\r")]
    too_wide = [line for line in lines if columns(line) > WIDTH]
    assert not too_wide, too_wide
    answer_lines = shown[shown.index("assistant [recorded]") :].split("\r\n")
    assert len(answer_lines[0]) <= WIDTH and answer_lines[1].startswith(" " * 10)


def test_text_from_tools_never_reaches_the_terminal_as_control_codes() -> None:
    main, replica = os.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    hostile = (
        "ok\x1b]52;c;aGVsbG8=\x07 \x1b[2J\x1b]0;owned\x07 \u202etxt.exe\r\nforged line \x9b31m"
    )
    with os.fdopen(replica, "w", closefd=True) as terminal:
        view = DemoView(terminal)
        assert view.tty
        view.say("tool", hostile)
    shown = os.read(main, 65536)
    os.close(main)
    assert b"\x1b" not in shown and b"\x07" not in shown and "\u202e".encode() not in shown
    assert b"\\x1b]52;c;aGVsbG8=\\x07" in shown and b"\\u202e" in shown and b"\\x9b" in shown
    assert shown.count(b"\n") == 1  # one line, whatever the text held


@pytest.mark.parametrize("width", [12, 25, 60])
def test_wrapped_lines_fit_the_width_with_wide_characters(width: int) -> None:
    text = safe("order 12345: 配達済み、返品期限は2025-05-10でした " + "x" * 70 + " done")
    lines = wrap(text, width, "assistant ")
    assert all(columns(line) <= width for line in lines), lines
    assert "".join(line.strip() for line in lines).replace(" ", "") == (
        "assistant" + text.replace(" ", "")
    )


def test_ctrl_c_ends_the_demo_with_130_and_a_sizeless_terminal_wraps_at_80() -> None:
    """A pty whose size was never set reports 0 columns: every line was cut into pieces
    of two characters. A Ctrl-C while the hung tool ran exited 1, as a replay that
    differed does, not 130."""
    main, proc = demo_on_a_pty(None)  # its size left 0x0, as a bare pty (`script`, CI) has it
    shown = b""
    try:
        while b"running track_shipment" not in shown:
            chunk = os.read(main, 65536)
            assert chunk, shown
            shown += chunk
        proc.send_signal(signal.SIGINT)
        shown += read_pty(main, proc)
    finally:
        os.close(main)
        proc.kill()
        proc.wait(60)
    assert proc.returncode == 130, shown
    first = shown.decode().split("\r\n")[0]
    assert first.startswith("REPLAY of a recorded") and 60 < columns(first) <= 80, first


def test_a_live_demo_asks_for_the_model_named(agent_main: AgentMain) -> None:
    """Live, the demo asked for gpt-4o-mini whatever served: Ollama and vLLM answered 404
    and nothing said how to name another. Without an endpoint, `--model` means nothing."""
    done = agent_main("demo", "--model", "llama3.1")
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.startswith("sandboxed-agent: --model names a live endpoint's model, and")
    with ScriptedModelServer([fail(404, "model 'llama3.1' not found")]) as server:
        env = {"OPENAI_BASE_URL": server.base_url}
        done = agent_main("demo", "--model", "llama3.1", env=env)
        asked = [request["model"] for request in server.requests]
    assert done.returncode == 1, done
    assert asked == ["llama3.1"]
    assert f"against {server.base_url}, model llama3.1." in done.stdout
