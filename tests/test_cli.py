"""The `sandboxed-agent` contract, run as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOSTILE, AgentMain

from sandbox import _cgroups
from sandbox.layers import LAYER_NAMES

ROOT = Path(__file__).resolve().parent.parent


def cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def one_json(proc: subprocess.CompletedProcess[str]) -> dict:
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert set(result) == {"tool", "ok", "output", "error", "duration_ms"}
    return result


def test_a_successful_call() -> None:
    proc = cli("tool", "calculate", "--args", '{"expression": "(89.99 * 3) / 2"}')
    assert proc.returncode == 0, proc.stderr
    result = one_json(proc)
    assert (
        result["ok"] is True
        and result["output"] == "134.99 (rounded to 2 decimals; exactly 134.985)"
        and result["error"] is None
    )
    assert result["duration_ms"] > 0


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (["tool", "nope"], "unknown_tool"),
        (["tool", "calculate", "--args", '{"expr": "1"}'], "bad_arguments"),
        (["tool", "read_file", "--args", '{"path": "../../etc/passwd"}'], "tool_error"),
        (["tool", "sleep_forever", "--tools", HOSTILE, "--timeout", "0.5"], "timeout"),
        (["tool", "memory_bomb", "--tools", HOSTILE, "--memory-mb", "64"], "memory_limit"),
    ],
)
def test_failed_calls_exit_1_with_the_error_kind(args: list[str], kind: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 1, proc.stderr
    result = one_json(proc)
    assert result["ok"] is False and result["output"] is None
    assert result["error"]["kind"] == kind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tool", "calculate", "--args", "{bad"], "--args is not valid JSON"),
        (["tool", "calculate", "--args", "[1]"], "--args must be a JSON object"),
        (["tool", "calculate", "--policy", "/no/such.toml"], "policy file not found"),
        (["tool", "calculate", "--tools", "/no/such.py"], "tools file not found"),
        (["tool", "calculate", "--timeout", "0"], "--timeout: input should be greater than 0"),
        (["tool", "calculate", "--timeout", "soon"], "invalid float value"),
        (["tool"], "required: name"),
        (["fly"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(args: list[str], message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    if args[0] == "tool":  # `tool` prints its one JSON object even then
        result = one_json(proc)
        assert result["ok"] is False and result["output"] is None
        assert result["error"]["kind"] == "bad_arguments"
        assert message in result["error"]["message"]
    else:
        assert proc.stdout == ""
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["run", "hi", "--base-url", "localhost:8000/v1"], {}, "--base-url 'localhost:8000/v1'"),
        (["run", "hi"], {"OPENAI_BASE_URL": "http//x"}, "OPENAI_BASE_URL 'http//x'"),
        (["demo"], {"OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL 'ftp://x'"),
    ],
)
def test_an_endpoint_that_is_no_http_url_is_a_usage_error(
    args: list[str], env: dict[str, str], said: str, agent_main: AgentMain
) -> None:
    # It was a run that failed at its first model call, and offered a resume.
    proc = agent_main(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"sandboxed-agent: {said} is not an http:// or https:// URL with a host "
        "(for example http://localhost:11434/v1)"
    ]


@pytest.mark.parametrize("name", ["", "a\x1bb"])
def test_chat_refuses_a_session_name_it_could_not_keep(name: str, agent_main: AgentMain) -> None:
    # An empty one (an unset variable) was taken for no --session: nothing was kept.
    proc = agent_main("chat", "--session", name, stdin="hi\n")
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"argument --session: {name!r} is not a session name" in proc.stderr


def test_a_policy_with_an_unknown_tool_table_is_a_usage_error(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("[tools.calculater]\ntimeout_s = 1\n")
    proc = cli("tool", "calculate", "--policy", str(policy))
    assert proc.returncode == 2
    assert "no tool named 'calculater'" in proc.stderr


def test_a_tools_file_without_a_tool_says_to_decorate_them(tmp_path: Path) -> None:
    # A new user's first tools file: plain functions, no @tool. Saying only "there is no
    # tool named 'fetch'" (from the policy, or unknown_tool) sent them looking elsewhere.
    source = tmp_path / "plain.py"
    source.write_text("def fetch(url: str) -> str:\n    return url\n")
    policy = tmp_path / "p.toml"
    policy.write_text("[tools.fetch]\ntimeout_s = 1\n")
    for args in (["tool", "fetch"], ["tools"], ["tool", "fetch", "--policy", str(policy)]):
        proc = cli(*args, "--tools", str(source))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"--tools {source}: defines no tool" in line and "@tool" in line


def test_user_tools_from_a_file_run_in_the_sandbox(tmp_path: Path) -> None:
    source = tmp_path / "mine.py"
    source.write_text(
        "import os\nfrom tools import tool\n\n@tool\ndef whoami() -> dict:\n"
        '    """Where it runs."""\n'
        "    return {'cwd': os.getcwd(), 'key': os.environ.get('OPENAI_API_KEY')}\n"
    )
    proc = cli("tool", "whoami", "--tools", str(source), env={"OPENAI_API_KEY": "sk-cli-secret"})
    result = one_json(proc)
    out = json.loads(result["output"])
    assert out["key"] is None
    assert out["cwd"] != str(ROOT)


def test_tools_lists_schemas() -> None:
    proc = cli("tools", "--json")
    assert proc.returncode == 0
    names = [t["function"]["name"] for t in json.loads(proc.stdout)]
    assert names == sorted(names) and "read_file" in names
    text = cli("tools")
    assert "calculate(expression)" in text.stdout
    # Each description is a whole sentence, not its docstring's first line cut mid-way.
    assert "plus the return window), and whether that day has passed." in text.stdout


def test_the_demo_runs_the_worked_example() -> None:
    proc = cli("demo", timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "its window closed on 2025-05-10" in out
    assert "timeout: track_shipment did not finish within 2 s" in out
    assert "REPLAY" in out
    assert "Two failures are part of the recording, on purpose" in out  # said before them
    assert "processes left behind by tools: 0" in out
    assert "leaves the document root" in out
    assert "Every tool result matched the recording." in out and "DIFFERS" not in out
    assert "assistant [recorded] No, I'm sorry" in out  # marked as what it is


def test_doctor_reports_every_layer_and_verifies_from_inside_a_worker() -> None:
    proc = cli("doctor")
    assert proc.returncode == 0, proc.stderr
    for layer in LAYER_NAMES:
        assert layer in proc.stdout
    assert "read /etc/shadow" in proc.stdout and "connect to 1.1.1.1:53" in proc.stdout
    assert "CONNECT 1.1.1.1:53 via the proxy" in proc.stdout  # a worker with an allowlist
    if "UNAVAILABLE" not in proc.stdout:
        states = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
        active = len(LAYER_NAMES) - states.count("standby")
        assert f"{active} of {len(LAYER_NAMES)} layers active" in proc.stdout
        assert "ALLOWED" not in proc.stdout
    if "capabilities" in proc.stdout and "UNAVAILABLE" not in proc.stdout:
        caps = next(line for line in proc.stdout.splitlines() if line.startswith("  capabilities "))
        assert caps.split()[-1] == "0000000000000000", caps  # none kept, ever


def test_doctor_says_where_tools_would_not_run_for_want_of_a_signal_wall(
    tmp_path: Path,
) -> None:
    """It still reports every layer and what a worker could do, then says what the
    pool would: the one line naming what is off, what to turn on, how to accept."""
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[layers]\npid_namespace = false\nlandlock = false\nunprivileged_uid = false\n"
    )
    proc = cli("doctor", "--policy", str(policy))
    assert proc.returncode == 1, proc.stderr
    said = next(line for line in proc.stdout.splitlines() if line.startswith("Tools will not"))
    assert said.startswith("Tools will not run here: no layer walls signals (pid_namespace off, ")
    assert "accept_unwalled_signals = true" in said and "uid 0 with no file layer" not in said
    assert "read /etc/shadow" in proc.stdout  # the probe ran all the same


def test_strict_isolation_from_the_command_line() -> None:
    doctor = cli("doctor").stdout
    proc = cli("tool", "calculate", "--args", '{"expression": "2+3"}', "--isolation", "strict")
    if "UNAVAILABLE" in doctor:
        assert proc.returncode == 1 and "isolation is strict" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert one_json(proc)["output"] == "5"


def test_strict_isolation_with_a_layer_missing_still_prints_one_json_object() -> None:
    # A cgroup subtree named that does not exist: the pool uses no other (see
    # sandbox/_cgroups.py), so the cgroup layers are really missing, for root as for a user.
    args = [sys.executable, "-m", "agent", "tool", "calculate", "--args", '{"expression": "1"}']
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env[_cgroups.ROOT_ENV] = f"/sandboxed-agent-test-nowhere-{os.getpid()}"
    proc = subprocess.run(
        [*args, "--isolation", "strict"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    result = one_json(proc)
    assert result["ok"] is False and result["tool"] == "calculate"
    assert result["error"]["kind"] == "crashed"
    assert (
        "isolation is strict and these layers are missing: cgroup_pids"
        in (result["error"]["message"])
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", ["a\udc80b", "caf\udce9.txt", "\ud800", "x/\udfff/y"])
@pytest.mark.parametrize("how", ["escaped", "raw"])
def test_read_file_refuses_a_path_that_is_not_unicode(tmp_path: Path, path: str, how: str) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(f"[tools.read_file]\nroot = {str(tmp_path)!r}\n")
    if how == "escaped":  # a JSON escape: valid JSON text, not valid Unicode
        args = json.dumps({"path": path})
    else:  # the bytes themselves on the command line (undecodable ones only)
        if not all(0xDC80 <= ord(c) <= 0xDCFF or ord(c) < 0x80 for c in path):
            pytest.skip("only bytes 0x80-0xff arrive as surrogates")
        args = '{"path": "' + path + '"}'
    proc = cli("tool", "read_file", "--args", args, "--policy", str(policy))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    result = one_json(proc)
    assert result["ok"] is False
    assert result["error"]["kind"] == "bad_arguments"
    assert "lone surrogate" in result["error"]["message"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["trace", "/tmp"], "/tmp is a directory; give a trace file"),
        (
            ["run", "hello", "--trace", "/tmp", "--base-url", "http://127.0.0.1:9/v1"],
            "--trace /tmp: cannot write there",
        ),
        (
            [
                "run",
                "hello",
                "--trace",
                "/nonexistent-dir/t.jsonl",
                "--base-url",
                "http://127.0.0.1:9/v1",
            ],
            "--trace /nonexistent-dir/t.jsonl: cannot write there",
        ),
        (["runs", "--limit", "-3"], "-3 is not a positive whole number"),
        (
            ["tool", "calculate", "--arg", '{"expression": "1"}'],
            'unrecognized arguments: --arg {"expression": "1"} (see: sandboxed-agent tool --help)',
        ),
        (["policy", "show", "--q"], "see: sandboxed-agent policy show --help"),
        (["doctor", "--policy", "/nonexistent-policy.toml"], "policy file not found"),
        (["run", "--base-url", "http://127.0.0.1:9/v1"], 'no task: run "TASK", or run --resume'),
        (["run", " ", "--base-url", "http://127.0.0.1:9/v1"], "an empty task: run"),
    ],
)
def test_mistakes_a_new_user_made_are_one_line_and_exit_2(args: list[str], said: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Path("/nonexistent-dir").exists()
