"""`[tools.NAME] after = [...]`: a tool runs only once the tools it names have answered
in the run; against the scripted loopback server through the real `openai` client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.approval import Approver
from agent.audit import Trace, read_trace
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, call, say
from policies import parse_policy
from sandbox import Pool
from tools import Registry

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
[defaults.settings]
today = "2025-05-11"

[tools.check_return_eligibility]
after = ["get_order_status", "get_current_date"]

[run]
model = "scripted"
max_retries = 0
max_iterations = 8
"""
ELIGIBLE = ("check_return_eligibility", {"order_id": "12345"})


def test_a_tool_runs_only_after_the_tools_its_policy_names_answered(tmp_path: Path) -> None:
    script = [
        # In the same turn as a lookup, and beside a lookup that fails: not yet.
        call(ELIGIBLE, ("get_order_status", {"order_id": "99999"})),
        call(("get_order_status", {"order_id": "12345"}), ELIGIBLE),
        call(ELIGIBLE),  # the order has answered, the date not yet
        call(("get_current_date", {})),
        call(ELIGIBLE),  # now it runs: the refused calls were not counted as repeats
        say("The window closed on 2025-05-10."),
    ]
    policy = parse_policy(POLICY, "test.toml", tmp_path)
    with (
        Pool(policy, registry=Registry.default()) as pool,
        ScriptedModelServer(script) as server,
    ):
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        trace = Trace(tmp_path / "t.jsonl")
        try:
            result = Agent(pool, policy, model, approver=Approver(), trace=trace).run("Return?")
        finally:
            trace.close()
    assert result.ok and result.answer == "The window closed on 2025-05-10."
    tools = [e for e in read_trace(tmp_path / "t.jsonl") if e["event"] == "tool_call"]
    seen = [(e["tool"], e["approval"], e.get("error_kind")) for e in tools]
    assert seen == [
        ("check_return_eligibility", "not_yet", "denied"),
        ("get_order_status", "not_required", "tool_error"),
        ("get_order_status", "not_required", None),
        ("check_return_eligibility", "not_yet", "denied"),
        ("check_return_eligibility", "not_yet", "denied"),
        ("get_current_date", "not_required", None),
        ("check_return_eligibility", "not_required", None),
    ]
    assert tools[-1]["output"] == "Return window expired on 2025-05-10"
    # The model is told which tools are still missing, and only those.
    told = [m["content"] for m in server.requests[2]["messages"] if m["role"] == "tool"]
    assert told[-1].endswith(
        "not run yet: check_return_eligibility runs only after get_order_status and "
        "get_current_date answered in this run. Call get_order_status and "
        "get_current_date first; then call check_return_eligibility again if it is "
        "still needed."
    )
    later = server.requests[3]["messages"][-1]["content"]
    assert "runs only after get_current_date answered in this run" in later
    # And told up front, in the tool's description; other tools' are unchanged.
    offered = {t["function"]["name"]: t["function"] for t in server.requests[0]["tools"]}
    assert offered["check_return_eligibility"]["description"].endswith(
        "Call it only after get_order_status and get_current_date answered."
    )
    assert "Call it only after" not in offered["get_order_status"]["description"]


def test_after_must_name_a_tool_that_exists(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[tools.issue_refund]\nafter = ["get_order_statu"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "x", "--policy", str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env | {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    said = proc.stderr.strip()
    assert "[tools.issue_refund] after: there is no tool named 'get_order_statu'" in said
    assert "did you mean 'get_order_status'" in said
