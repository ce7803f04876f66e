"""Ctrl-C stops `eval`: the report of the runs that finished is written, and the run it
cut short is not counted as a failure of the agent (it was once, and the suite went on)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import HOSTILE, ROOT

SUITE = """
name = "stopped"
policy = "p.toml"

[[cases]]
name = "quick"
task = "What is 1 + 1?"
[[cases.script]]
calls = [{ tool = "calculate", args = { expression = "1 + 1" } }]
[[cases.script]]
answer = "2"

[[cases]]
name = "hangs"
task = "Sleep."
[[cases.script]]
calls = [{ tool = "sleep_forever", args = {} }]
[[cases.script]]
answer = "Woke up."
"""

# SIGINT as a terminal sends it, whatever the test runner's own disposition is.
MAIN = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from agent.cli import main; sys.exit(main())"
)


def test_ctrl_c_stops_the_suite_and_keeps_the_runs_that_finished(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        f'load_tools = ["{HOSTILE}"]\n[tools.sleep_forever]\ntimeout_s = 300\n'
    )
    (tmp_path / "suite.toml").write_text(SUITE)
    out = tmp_path / "out"
    argv = ["eval", str(tmp_path / "suite.toml"), "--scripted", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "pass  quick #1" in proc.stderr.readline()
        # The second case's model has asked for the hung tool: its run is under way.
        hung = out / "traces" / "02-hangs-1.jsonl"
        deadline = time.monotonic() + 120
        while '"model_call"' not in (hung.read_text() if hung.exists() else ""):
            assert time.monotonic() < deadline, "the hung case never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "interrupted; the report holds the 1 run(s) that finished" in stderr
    assert "Traceback" not in stderr
    assert "interrupted: the runs that finished before Ctrl-C" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and report["passed"] is False
    assert [(c["name"], c["runs"]) for c in report["cases"]] == [("quick", 1)]
    assert report["cases"][0]["outcome_pass_rate"] == 1.0
