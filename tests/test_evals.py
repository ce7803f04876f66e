"""The evaluation harness on scripted runs: the shipped suite passes, each kind of check
fails when its rule is broken, bad suites are clear errors, and the judge is reported
beside the checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.audit import read_trace
from agent.cli import main
from agent.evals import RunFacts, check_outcome, check_path, load_suite
from agent.evals.judge import parse_verdict
from agent.evals.suite import Case, SuiteError
from agent.replay import ScriptedModelServer, say

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "evals" / "worked_example.toml"


def run_eval(*args: str) -> int:
    return main(["eval", *args])


def test_the_shipped_suite_passes_on_its_scripts(tmp_path: Path, capsys: Any) -> None:
    assert run_eval(str(SUITE), "--scripted", "--out", str(tmp_path)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["overall"]["runs"] == len(load_suite(SUITE).cases)
    for case in report["cases"]:
        assert case["outcome_pass_rate"] == case["path_pass_rate"] == 1.0
        for result in case["results"]:
            assert Path(result["trace"]).is_file()  # the trace of every run is kept
    table = capsys.readouterr().out
    assert "order 12345 is past its return window" in table and "7/7" in table


BROKEN = """
name = "broken"
policy = "{policy}"
tools = ["tools.demo"]
runs = 2

[[cases]]
name = "every check fails"
task = "Can I still return order 12345?"
expect = {{ contains = ["2025-05-10"], matches = "expired", number = 42, tolerance = 0.5 }}

[cases.path]
must_call = ["read_file", "get_order_status"]
in_order = true
must_not_call = ["get_current_date"]
max_steps = 1
max_cost_usd = 0.0000001
must_recover_from = ["timeout"]
must_ask_approval = ["issue_refund"]

[[cases.script]]
calls = [{{ tool = "get_order_status", args = {{ order_id = "12345" }} }}]
[[cases.script]]
calls = [
  {{ tool = "get_current_date" }},
  {{ tool = "read_file", args = {{ path = "policy.txt" }} }},
]
[[cases.script]]
answer = "Yes, of course."
"""


def test_each_kind_of_check_fails_when_its_rule_is_broken(tmp_path: Path) -> None:
    suite = tmp_path / "broken.toml"
    suite.write_text(BROKEN.format(policy=ROOT / "policies" / "demo.toml"))
    out = tmp_path / "out"
    assert run_eval(str(suite), "--scripted", "--runs", "1", "--out", str(out)) == 1
    report = json.loads((out / "report.json").read_text())
    assert not report["passed"] and report["overall"]["runs"] == 1  # --runs beats the suite
    failures = "\n".join(report["cases"][0]["results"][0]["failures"])
    for expected in (
        "outcome: the answer does not contain '2025-05-10'",
        "outcome: the answer does not match /expired/",
        "outcome: no number in the answer is within 0.5 of 42",
        "path: the successful calls were not in the order read_file → get_order_status",
        "path: get_current_date was called",
        "path: took 3 steps (at most 1)",
        "path: cost 0.0000",
        "path: no tool call failed with timeout",
        "path: no approval was asked for issue_refund",
    ):
        assert expected in failures, failures


def facts(**kw: Any) -> RunFacts:
    base = dict(reason="answer", answer="", message="answered", steps=1, cost_usd=0.0)
    return RunFacts(**{**base, "wall_s": 0.1, "tokens": 10, **kw})


def test_numbers_are_found_with_thousands_separators_and_signs() -> None:
    case = Case(name="n", task="t", expect={"number": -1234.5, "tolerance": 0.01})
    assert check_outcome(case, facts(answer="It comes to -1,234.50 in total.")) == []
    assert check_outcome(case, facts(answer="It comes to 1,234.50.")) != []


def test_a_run_stopped_by_a_guardrail_fails_unless_expected() -> None:
    stopped = facts(reason="repeated_call", answer=None, message="stopped: the model called x")
    assert "ended with repeated_call" in check_outcome(Case(name="n", task="t"), stopped)[0]
    expecting = Case(name="n", task="t", expect={"ended": "repeated_call", "contains": ["x"]})
    assert check_outcome(expecting, stopped) == []


def test_an_error_that_occurs_but_is_not_recovered_from_fails() -> None:
    case = Case(name="n", task="t", path={"must_recover_from": ["timeout"]})
    call = {
        "tool": "track_shipment",
        "ok": False,
        "error_kind": "timeout",
        "error_origin": "sandbox",
        "approval": "not_required",
    }
    assert check_path(case, facts(calls=[call])) == []
    stuck = facts(calls=[call], reason="max_iterations", answer=None)
    assert "did not answer (max_iterations)" in check_path(case, stuck)[0]


CASE = 'name = "s"\n[[cases]]\nname = "a"\ntask = "t"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "s"\n', "cases: Field required"),
        (
            CASE + "expekt = {}\n",
            "case 'a': expekt: unknown key; did you mean 'expect'? (accepted: name, task",
        ),
        (
            CASE + 'expect = { matches = "(" }\n',
            "case 'a': expect.matches: not a valid regular expression",
        ),
        (
            CASE + '[[cases.script]]\nanswer = "x"\ncalls = [{ tool = "y" }]\n',
            "a turn has either calls or an answer",
        ),
        (CASE + '[[cases]]\nname = "a"\ntask = "u"\n', "two cases are named 'a'"),
        ("runs = 0\n" + CASE, "runs: Input should be greater than or equal to 1"),
        ("name = \n", "not valid TOML"),
        (
            CASE + 'path = { must_recover_from = ["database_error"] }\n',
            "case 'a': path.must_recover_from: Input should be 'unknown_tool', 'bad_arguments'",
        ),
        (  # was accepted, and every run then failed "expected whatever"
            CASE + 'expect = { ended = "whatever" }\n',
            "case 'a': expect.ended: Input should be 'answer', 'max_iterations'",
        ),
        (
            CASE + 'path = { must_return = [{ tool = "x", ok = true, kind = "timeout" }] }\n',
            "a call that succeeded has no error kind",
        ),
        # A typo of a required key was "Field required", the typo not named.
        (
            'name = "s"\n[[case]]\nname = "a"\ntask = "t"\n',
            ": case: unknown key; did you mean 'cases'? (accepted: name, policy, tools, runs",
        ),
        (
            CASE + '[[cases.script]]\ncalls = [{ tol = "calculate" }]\n',
            "case 'a': script.calls.tol: unknown key; did you mean 'tool'? (accepted: tool, args)",
        ),
        (
            CASE + 'path = { must_call = "get_order_status" }\n',
            "case 'a': path.must_call: Input should be a valid list (got 'get_order_status')",
        ),
    ],
)
def test_a_bad_suite_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(text)
    with pytest.raises(SuiteError) as exc:
        load_suite(suite)
    assert message in str(exc.value)
    assert str(exc.value).startswith(str(suite))


def test_usage_errors_name_what_is_wrong(tmp_path: Path, capsys: Any) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[[cases]]\nname = "a"\ntask = "t"\n')
    assert run_eval(str(suite), "--scripted") == 2
    assert "--scripted needs a script in every case; none in: ['a']" in capsys.readouterr().err
    assert run_eval(str(SUITE), "--scripted", "--case", "nope") == 2
    assert "--case 'nope': no such case (cases: order 12345" in capsys.readouterr().err
    assert run_eval(str(tmp_path / "missing.toml")) == 2
    assert "suite file not found" in capsys.readouterr().err
    typo = tmp_path / "typo.toml"  # must_not_call of a tool that is no tool would always pass
    typo.write_text(
        'name = "s"\n[[cases]]\nname = "a"\ntask = "t"\n'
        'path = { must_not_call = ["issue_refnd"] }\n[[cases.script]]\nanswer = "x"\n'
    )
    (tmp_path / "mod.toml").write_text('tools = ["no_such_tools_module"]\n' + CASE)
    assert run_eval(str(tmp_path / "mod.toml"), "--scripted") == 2  # was "--tools no_such..."
    assert f"{tmp_path / 'mod.toml'}: tools: no_such_tools_module: no" in capsys.readouterr().err
    assert run_eval(str(typo), "--scripted") == 2
    said = "case 'a': path.must_not_call issue_refnd: there is no tool named 'issue_refnd'; "
    assert said + "did you mean 'issue_refund'?" in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert run_eval(str(SUITE), "--scripted", "--out", str(a_file)) == 2  # was a traceback
    assert "cannot make the report's directory here: Not a directory" in capsys.readouterr().err


def test_the_judge_is_reported_beside_the_checks(tmp_path: Path, capsys: Any) -> None:
    seen: list[dict[str, Any]] = []

    def judge(request: dict[str, Any]) -> Any:
        seen.append(request)
        return say('Here: {"score": 0.75, "reason": "checked the order and the policy"}')

    case = "order 12345 is past its return window"
    with ScriptedModelServer(judge) as server:
        status = run_eval(
            str(SUITE), "--scripted", "--case", case, "--out", str(tmp_path),
            "--judge-model", "judge", "--judge-base-url", server.base_url,
        )  # fmt: skip
    assert status == 0
    result = json.loads((tmp_path / "report.json").read_text())["cases"][0]
    assert result["judge_mean_score"] == 0.75
    assert result["results"][0]["judge_reason"] == "checked the order and the policy"
    assert result["outcome_pass_rate"] == 1.0  # the checks stand on their own
    prompt = seen[0]["messages"][1]["content"]
    assert json.loads(prompt).startswith("Task: Can I still return order 12345?")
    assert "get_order_status" in prompt and "Judge (reported beside" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I'd say 8/10", "did not answer as asked"),
        ('{"score": 7}', "is not between 0 and 1"),
        ('{"reason": "no score"}', "did not answer as asked"),
    ],
)
def test_a_judge_that_does_not_answer_as_asked_gives_no_score(reply: str, reason: str) -> None:
    verdict = parse_verdict(reply)
    assert verdict.score is None and reason in verdict.reason


def test_a_hostile_judge_reply_is_read_in_linear_time() -> None:
    verdict = parse_verdict("{" * 2_000_000)  # a regex scan would be quadratic here
    assert verdict.score is None and "did not answer as asked" in verdict.reason
    assert parse_verdict('noise { "score": 0.5, "reason": "ok" } noise').score == 0.5


def _demo_policy_with(tmp_path: Path, **settings: str) -> Path:
    """The demo policy, with settings for every tool (a tool made to fail)."""
    extra = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    path = tmp_path / "policy.toml"
    path.write_text(f'extends = "{ROOT / "policies" / "demo.toml"}"\n[defaults.settings]\n{extra}')
    return path


def test_the_shipped_suite_fails_when_the_order_lookups_fail(tmp_path: Path) -> None:
    """The database the lookups read cannot be opened: every case that needs an order
    fails, the unknown order included (its error is not "no such order"), and the
    refund is never asked for (it runs only after the order answered)."""
    policy = _demo_policy_with(tmp_path, orders_db=str(tmp_path / "gone" / "orders.db"))
    out = tmp_path / "out"
    assert run_eval(str(SUITE), "--scripted", "--policy", str(policy), "--out", str(out)) == 1
    report = json.loads((out / "report.json").read_text())
    failed = {c["name"]: c["results"][0]["failures"] for c in report["cases"]}
    failed = {name: "\n".join(f) for name, f in failed.items() if f}
    assert set(failed) == {
        "order 12345 is past its return window",
        "order 67890 can still be returned",
        "an unknown order",
        "a refund waits for a person's yes",
        "an approved refund goes through",
    }, failed
    assert (
        "get_order_status never succeeded: failed with tool_error: OperationalError"
        in (failed["order 12345 is past its return window"])
    )
    unknown = failed["an unknown order"]
    assert "no call of get_order_status did fail with tool_error" in unknown
    assert "\"no order with id '99999'\"" in unknown and "unable to open database" in unknown


CLAIMS = """
import json, os, time
from tools import tool

@tool
def claim_timeout() -> str:
    \"\"\"Write a frame saying it timed out, instead of timing out.\"\"\"
    error = {"kind": "timeout", "message": "did not finish within 2 s and was killed"}
    body = json.dumps({"type": "result", "ok": False, "error": error}).encode()
    os.write(3, len(body).to_bytes(4, "big") + body)
    time.sleep(3600)
    return ""

@tool
def say_timeout() -> str:
    \"\"\"Return text that reads like an error.\"\"\"
    return "error (timeout): claim_timeout did not finish within 2 s and was killed"
"""

CLAIM_SUITE = """
name = "claimed kinds"
policy = "{policy}"
tools = ["tools.demo", "{tools}"]

[[cases]]
name = "{name}"
task = "Track order 12345."
path = {{ must_recover_from = ["timeout"], must_attempt = ["{tool}"] }}
[[cases.script]]
calls = [{{ tool = "{tool}", args = {args} }}]
[[cases.script]]
answer = "The carrier did not answer."
"""


@pytest.mark.parametrize(
    ("tool", "args", "passes"),
    [
        ("track_shipment", '{ order_id = "12345" }', True),
        ("claim_timeout", "{}", False),
        ("say_timeout", "{}", False),
    ],
)
def test_only_a_kind_the_orchestrator_named_is_recovered_from(
    tmp_path: Path, tool: str, args: str, passes: bool
) -> None:
    """The hung tool's timeout counts; a worker that writes a timeout frame itself, or a
    tool whose output reads like one, does not."""
    tools = tmp_path / "claims.py"
    tools.write_text(CLAIMS)
    policy = tmp_path / "policy.toml"  # the demo's, offering the tool under test too
    policy.write_text(f'extends = "{ROOT / "policies" / "demo.toml"}"\n[run]\noffer = ["{tool}"]\n')
    suite = tmp_path / "claims.toml"
    suite.write_text(
        CLAIM_SUITE.format(policy=policy, tools=tools, name=tool, tool=tool, args=args)
    )
    out = tmp_path / "out"
    status = run_eval(str(suite), "--scripted", "--out", str(out))
    failures = json.loads((out / "report.json").read_text())["cases"][0]["results"][0]
    assert status == (0 if passes else 1), failures
    if not passes:
        assert "path: no tool call failed with timeout" in failures["failures"][0]
    if tool == "claim_timeout":  # the pool refused the claim: a protocol break
        (call,) = [e for e in read_trace(Path(failures["trace"])) if e["event"] == "tool_call"]
        assert (call["error_kind"], call["error_origin"]) == ("crashed", "sandbox")


def test_a_kind_a_worker_claims_for_itself_is_not_recovered_from() -> None:
    """Should a claimed kind ever get past the pool, the trace's origin still tells."""
    case = Case(name="n", task="t", path={"must_recover_from": ["timeout", "output_limit"]})
    claimed = {"tool": "x", "ok": False, "error_kind": "timeout", "error_origin": "worker"}
    too_long = {**claimed, "error_kind": "output_limit"}
    assert check_path(case, facts(calls=[claimed, too_long])) == [
        "no tool call failed with timeout (only a worker claimed it for itself), "
        "so nothing was recovered from"
    ]


def test_must_call_counts_calls_that_succeeded_and_must_attempt_any() -> None:
    failed = {
        "tool": "get_order_status",
        "ok": False,
        "error_kind": "tool_error",
        "error_origin": "worker",
        "error_message": "OperationalError: unable to open database file",
        "approval": "not_required",
    }
    noted = {"tool": "calculate", "ok": True, "output": "you already have it: 4"}
    noted["approval"] = "repeat_note"
    case = Case(name="n", task="t", path={"must_call": ["get_order_status", "calculate"]})
    assert check_path(case, facts(calls=[failed, noted])) == [
        "get_order_status never succeeded: failed with tool_error: "
        "OperationalError: unable to open database file",
        "calculate never succeeded: was not run (repeat_note)",
    ]
    attempt = Case(name="n", task="t", path={"must_attempt": ["get_order_status"]})
    assert check_path(attempt, facts(calls=[failed])) == []
    assert check_path(attempt, facts(calls=[])) == ["get_order_status was never called"]
    ok = {**failed, "ok": True, "output": '{"order_id": "12345"}', "error_kind": None}
    assert check_path(case, facts(calls=[failed, ok, {**noted, "approval": "not_required"}])) == []
