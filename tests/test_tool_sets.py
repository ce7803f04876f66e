"""Which tools a run offers, and names of tools a person gives: typos are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import agent_cli as cli

from agent.audit import read_trace
from agent.replay import ScriptedModelServer, call, say
from policies import load_policy, parse_policy
from sandbox.errors import PolicyError

ROOT = Path(__file__).resolve().parent.parent
SUPPORT_TOOLS = {
    "calculate",
    "read_file",
    "get_order_status",
    "get_current_date",
    "check_return_eligibility",
    "issue_refund",
}
MEMORY_TOOLS = {"remember", "recall", "forget"}
DEMO_OFFER = SUPPORT_TOOLS - {"issue_refund"}
"""What the demo policy sends a return question's every model call (`tools_sent =
"all"`): the support tools, not the hung carrier tool, less the one it offers only
when asked for (`offer_when`: a refund). Which of them a call may call is narrowed in
the request (`first_when`, `after`, `then`)."""


def offered(server: ScriptedModelServer) -> set[str]:
    """The tools the first model call was sent (what the model sees)."""
    return {t["function"]["name"] for t in server.requests[0]["tools"]}


def tool_calls(trace: Path) -> list[tuple[str, str | None]]:
    return [(e["tool"], e["error_kind"]) for e in read_trace(trace) if e["event"] == "tool_call"]


FORGET = [call(("forget", {"memory_id": 1})), say("Done.")]


@pytest.mark.parametrize(
    "policy", [[], ["--policy", "policies/demo.toml"]], ids=["built-in", "demo policy"]
)
def test_the_worked_example_offers_no_memory_tool(tmp_path: Path, policy: list[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    with ScriptedModelServer(FORGET) as server:
        proc = cli(
            "run",
            "Can I still return order 12345?",
            *policy,
            "--base-url",
            server.base_url,
            "--trace",
            str(trace),
            home=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    assert offered(server) == (DEMO_OFFER if policy else SUPPORT_TOOLS)
    assert tool_calls(trace) == [("forget", "unknown_tool")]


def test_the_demo_offers_no_memory_tool(tmp_path: Path) -> None:
    with ScriptedModelServer(FORGET) as server:
        proc = cli("demo", home=tmp_path, env={"OPENAI_BASE_URL": server.base_url})
    # A live model is offered the demo policy's tools alone, not the hung carrier tool.
    assert offered(server) == DEMO_OFFER
    assert "forget" in proc.stdout and "unknown_tool" in proc.stdout, proc.stdout


def test_the_worked_example_suite_offers_no_memory_tool(tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f'name = "s"\npolicy = "{ROOT / "policies" / "demo.toml"}"\n'
        '[[cases]]\nname = "c"\ntask = "t"\n'
        '[[cases.script]]\ncalls = [{ tool = "forget", args = { memory_id = 1 } }]\n'
        '[[cases.script]]\nanswer = "Done."\n'
    )
    out = tmp_path / "out"
    proc = cli("eval", str(suite), "--scripted", "--out", str(out), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (trace,) = out.rglob("*.jsonl")
    assert tool_calls(trace) == [("forget", "unknown_tool")]


@pytest.mark.parametrize("how", ["--tools", "load_tools"])
def test_forget_asked_for_is_denied_without_a_terminal(tmp_path: Path, how: str) -> None:
    if how == "--tools":
        asked = ["--tools", "tools.memory"]
    else:
        (tmp_path / "p.toml").write_text('load_tools = ["tools.memory"]\n')
        asked = ["--policy", str(tmp_path / "p.toml")]
    trace = tmp_path / "trace.jsonl"
    with ScriptedModelServer(FORGET) as server:
        proc = cli(
            "run",
            "Forget it.",
            *asked,
            "--base-url",
            server.base_url,
            "--trace",
            str(trace),
            home=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    assert offered(server) == SUPPORT_TOOLS | MEMORY_TOOLS
    assert tool_calls(trace) == [("forget", "denied")]


def test_naming_a_memory_tool_not_offered_says_how_to_ask_for_it(tmp_path: Path) -> None:
    proc = cli(
        "run", "x", "--approve", "forget", "--base-url", "http://127.0.0.1:9/v1", home=tmp_path
    )
    assert proc.returncode == 2
    assert "there is no tool named 'forget'; it is offered only when asked for: " in proc.stderr
    assert "--tools tools.memory" in proc.stderr
    (tmp_path / "p.toml").write_text('[tools.recall.settings]\nmemory_namespace = "bob"\n')
    proc = cli("policy", "show", "--policy", str(tmp_path / "p.toml"), home=tmp_path)
    assert proc.returncode == 2
    assert "p.toml: [tools.recall]: there is no tool named 'recall'; it is offered" in proc.stderr
    shown = cli(
        "policy",
        "show",
        "--policy",
        str(tmp_path / "p.toml"),
        "--tools",
        "tools.memory",
        home=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr


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


def test_load_tools_add_up_across_files_each_relative_to_its_own(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "base.toml").write_text('load_tools = ["mine.py"]\n')
    (tmp_path / "team" / "mine.py").write_text(
        "from tools import tool\n\n@tool\ndef shout(text: str) -> str:\n"
        '    """Say it loud.\n\n    Args:\n        text: What to say.\n    """\n'
        "    return text.upper()\n"
    )
    mine = tmp_path / "p.toml"
    mine.write_text('extends = "team/base.toml"\nload_tools = ["tools.memory", "mine.py"]\n')
    assert load_policy(mine).load_tools == [
        str(tmp_path / "team" / "mine.py"),
        "tools.memory",
        str(tmp_path / "mine.py"),
    ]
    (tmp_path / "mine.py").write_text(
        (tmp_path / "team" / "mine.py").read_text().replace("shout", "whisper")
    )
    listing = cli("tools", "--policy", str(mine), home=tmp_path)  # run from another cwd
    assert listing.returncode == 0, listing.stderr
    for name in ("shout(text)", "whisper(text)", "forget(memory_id)"):
        assert name in listing.stdout
    with pytest.raises(PolicyError, match="load_tools: must be a list of module names"):
        parse_policy('load_tools = "tools.memory"\n', "p.toml", tmp_path)
    (tmp_path / "bad.toml").write_text('load_tools = ["no_such_module_here"]\n')
    bad = cli("tools", "--policy", str(tmp_path / "bad.toml"), home=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'bad.toml'}: load_tools: no_such_module_here" in bad.stderr


def test_the_worked_example_suite_offers_only_the_support_tools(tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f'name = "s"\npolicy = "{ROOT / "evals" / "worked_example_policy.toml"}"\n'
        'tools = ["tools.demo"]\n'
        '[[cases]]\nname = "c"\ntask = "Where is order 12345?"\n'
        '[[cases.script]]\ncalls = [{ tool = "track_shipment", args = { order_id = "12345" } }]\n'
        '[[cases.script]]\nanswer = "I cannot track it."\n'
    )
    out = tmp_path / "out"
    proc = cli("eval", str(suite), "--scripted", "--out", str(out), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (trace,) = out.rglob("*.jsonl")
    # Loaded (the demo policy configures it) but not offered: refused, never run.
    (event,) = [e for e in read_trace(trace) if e["event"] == "tool_call"]
    assert (event["tool"], event["error_kind"], event["worker_pid"]) == (
        "track_shipment",
        "unknown_tool",
        None,
    )
    assert "available tools: calculate, check_return_eligibility" in event["error_message"]
    assert "track_shipment" not in event["error_message"].split("available tools:")[1]


def test_offer_chooses_the_tools_a_run_offers(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    script = [call(("get_order_status", {"order_id": "12345"})), say("I cannot look it up.")]
    with ScriptedModelServer(script) as server:
        proc = cli(
            "run",
            "Where is order 12345?",
            "--offer",
            "get_current_date",
            "--offer",
            "calculate",
            "--base-url",
            server.base_url,
            "--trace",
            str(trace),
            home=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    assert offered(server) == {"get_current_date", "calculate"}
    assert tool_calls(trace) == [("get_order_status", "unknown_tool")]
    # A name that is no tool is a usage error, from the flag and from a policy.
    proc = cli(
        "run",
        "x",
        "--offer",
        "get_order_stats",
        "--base-url",
        "http://127.0.0.1:9/v1",
        home=tmp_path,
    )
    assert proc.returncode == 2
    said = "--offer get_order_stats: there is no tool named 'get_order_stats'; did you mean"
    assert said in proc.stderr
    (tmp_path / "p.toml").write_text('[run]\noffer = ["get_order_stats"]\n')
    proc = cli("policy", "show", "--policy", str(tmp_path / "p.toml"), home=tmp_path)
    assert proc.returncode == 2
    assert "p.toml: [run] offer: there is no tool named 'get_order_stats'" in proc.stderr
