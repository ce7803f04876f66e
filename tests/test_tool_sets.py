"""Which tools a run offers, and names of tools a person gives: typos are usage errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        stdin=subprocess.DEVNULL,  # no terminal: nobody to ask
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env | {"XDG_DATA_HOME": str(home), "OPENAI_API_KEY": "sk-test"},
    )


@pytest.mark.parametrize("command", [["run", "Refund order 12345"], ["chat"]])
def test_an_unknown_tool_in_approve_is_a_usage_error(tmp_path: Path, command: list[str]) -> None:
    # The endpoint is never reached: the check comes first.
    proc = cli(
        *command, "--approve", "issue_refnd", "--base-url", "http://127.0.0.1:9/v1", home=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "sandboxed-agent: --approve issue_refnd: there is no tool named 'issue_refnd'; "
        "did you mean 'issue_refund'? (known tools: "
    )
    assert "calculate" in lines[0] and "Traceback" not in proc.stderr


def test_an_approve_far_from_any_tool_lists_the_known_ones(tmp_path: Path) -> None:
    proc = cli("run", "x", "--approve", "zzz", "--base-url", "http://127.0.0.1:9/v1", home=tmp_path)
    assert proc.returncode == 2
    assert "there is no tool named 'zzz' (known tools: " in proc.stderr
    assert "did you mean" not in proc.stderr


def test_an_unknown_tool_in_a_suite_case_approve_is_a_usage_error(tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(
        'name = "s"\n[[cases]]\nname = "c"\ntask = "t"\napprove = ["issue_refnd"]\n'
        '[[cases.script]]\nanswer = "a"\n'
    )
    proc = cli("eval", str(suite), "--scripted", "--out", str(tmp_path / "out"), home=tmp_path)
    assert proc.returncode == 2
    assert "case 'c': approve issue_refnd: there is no tool named 'issue_refnd'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
