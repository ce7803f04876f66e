"""`python -m agent.evals.scripted`: one scripted model for a whole suite, as the README
runs Temporal workers against it, serves a run through either API: Chat Completions'
`messages` (tests/test_temporal_workflow.py) and the Responses API's `input` items
(where a turn's calls are items of their own) reach the same step of the same case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.evals.scripted import suite_script
from agent.evals.suite import load_suite
from agent.replay import ScriptedModelServer

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "evals" / "worked_example.toml"


def run(base_url: str, api: str, task: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    policy = str(ROOT / "evals" / "worked_example_policy.toml")
    args = ["run", task, "--base-url", base_url, "--api", api, "--policy", policy]
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--tools", "tools.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env | {"XDG_DATA_HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )


def test_the_suite_server_plays_a_case_through_the_responses_api(tmp_path: Path) -> None:
    # The case's first turn is three calls at once: three function_call items in a row,
    # one model turn, or the next request would be given the wrong step.
    task = "Can I still return order 12345?"
    with ScriptedModelServer(suite_script(load_suite(SUITE))) as server:
        responses = run(server.base_url, "responses", task, tmp_path)
        stranger = run(server.base_url, "responses", "Not a task of the suite.", tmp_path)
    assert server.routes == ["/v1/responses"] * 3
    assert responses.returncode == 0, responses.stderr
    assert "window closed on 2025-05-10" in responses.stdout
    assert stranger.returncode == 1 and "no case of this suite has this task" in stranger.stderr
