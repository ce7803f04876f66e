"""`sandboxed-agent tool NAME` asks before a tool that needs approval, as `run` does:
on a terminal (a real pty) with the canonical prompt, and without one it denies unless
`--approve NAME` or `--yes`. Whether the call ran is read from its effect: `remember`
stores a fact that `recall` then finds, or does not."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACT = "the vault code is 4711"


@pytest.fixture
def policy(tmp_path: Path) -> Iterator[Path]:
    data = Path(tempfile.mkdtemp(prefix="sandboxed-agent-approval-"))
    data.chmod(0o711)  # workers of other uids pass through to data_dir
    path = tmp_path / "policy.toml"
    path.write_text(
        'load_tools = ["tools.memory"]\n\n'
        f'[tools.remember]\nrequires_approval = true\ndata_dir = "{data / "memory"}"\n\n'
        f'[tools.recall]\ndata_dir = "{data / "memory"}"\n'
    )
    yield path
    shutil.rmtree(data)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}


def tool(policy: Path, name: str, args: dict[str, object] | str, *flags: str) -> list[str]:
    text = args if isinstance(args, str) else json.dumps(args)
    return ["tool", name, "--args", text, "--policy", str(policy), *flags]


def piped(argv: list[str]) -> tuple[int, dict[str, object], str]:
    """No terminal at all: stdin from /dev/null, stdout and stderr pipes."""
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def remembered(policy: Path) -> bool:
    status, result, _ = piped(tool(policy, "recall", {"query": "vault code", "k": 5}))
    assert status == 0, result
    return FACT in str(result["output"])


def on_terminal(argv: list[str], reply: bytes | None) -> tuple[int, dict[str, object], str]:
    """stdin and stderr on a pty (a person at a terminal), stdout a pipe for the JSON.
    `reply` is typed when the prompt appears."""
    main, replica = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *argv],
        stdin=replica,
        stdout=subprocess.PIPE,
        stderr=replica,
        cwd=ROOT,
        env=env(),
        start_new_session=True,
    )
    os.close(replica)
    shown = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the program closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if reply is not None and b"Allow? [y]es" in shown:
                os.write(main, reply)
                reply = None
        out = proc.stdout.read() if proc.stdout else b""
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        os.close(main)
    return status, json.loads(out), shown.decode()


def test_without_a_terminal_it_is_denied_and_does_not_run(policy: Path) -> None:
    status, result, err = piped(tool(policy, "remember", {"fact": FACT}))
    assert status == 1, err
    assert result["ok"] is False and result["error"]["kind"] == "denied"
    assert "denied_no_tty" in result["error"]["message"]
    assert "--approve remember" in result["error"]["message"]
    assert not remembered(policy)


@pytest.mark.parametrize("flag", [["--approve", "remember"], ["--yes"]], ids=["approve", "yes"])
def test_approved_in_advance_it_runs(policy: Path, flag: list[str]) -> None:
    status, result, err = piped(tool(policy, "remember", {"fact": FACT}, *flag))
    assert status == 0, err
    assert result["ok"] is True
    assert remembered(policy)


def test_approving_another_tool_does_not_approve_this_one(policy: Path) -> None:
    status, result, _ = piped(tool(policy, "remember", {"fact": FACT}, "--approve", "recall"))
    assert status == 1 and result["error"]["kind"] == "denied"
    assert not remembered(policy)


def test_a_typo_in_approve_is_a_usage_error(policy: Path) -> None:
    status, result, err = piped(tool(policy, "remember", {"fact": FACT}, "--approve", "remembr"))
    assert status == 2 and result["error"]["kind"] == "bad_arguments"
    assert "did you mean 'remember'" in err
    assert not remembered(policy)


def test_a_repeated_key_in_args_is_refused_before_anyone_is_asked(policy: Path) -> None:
    smuggled = '{"fact": "harmless",\n "fact": "' + FACT + '"\r}'
    status, result, shown = on_terminal(tool(policy, "remember", smuggled), b"y\n")
    assert status == 1 and "Allow?" not in shown
    assert result["error"]["kind"] == "bad_arguments"
    assert 'the key "fact" appears more than once' in result["error"]["message"]
    assert not remembered(policy)


def test_on_a_terminal_the_person_is_asked_and_no_means_no(policy: Path) -> None:
    hostile = FACT + "\x1b]0;pwned\x07\u202e"
    status, result, shown = on_terminal(tool(policy, "remember", {"fact": hostile}), b"n\n")
    assert status == 1
    assert result["error"]["kind"] == "denied" and "denied_tty" in result["error"]["message"]
    # A person or a script ran the command: no model asked.
    assert "This command (sandboxed-agent tool) wants to run remember with these" in shown
    assert "model" not in shown.lower()
    assert 'fact = "the vault code is 4711\\u001b]0;pwned\\u0007\\u202e"' in shown
    assert "\x1b" not in shown and "\u202e" not in shown
    assert not remembered(policy)


def test_on_a_terminal_yes_runs_the_call_that_was_shown(policy: Path) -> None:
    status, result, shown = on_terminal(tool(policy, "remember", {"fact": FACT}), b"y\n")
    assert status == 0, shown
    assert result["ok"] is True
    assert f'fact = "{FACT}"' in shown
    assert remembered(policy)


def test_a_tool_without_approval_is_not_asked_about(policy: Path) -> None:
    status, result, shown = on_terminal(tool(policy, "recall", {"query": "x", "k": 1}), None)
    assert status == 0 and result["ok"] is True
    assert "Allow?" not in shown
