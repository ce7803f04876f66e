"""The evaluation harness on scripted runs: the shipped suite passes, each kind of check
fails when its rule is broken, bad suites are clear errors, and the judge is reported
beside the checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
        "path: the calls were not in the order read_file → get_order_status",
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
    call = {"tool": "track_shipment", "error_kind": "timeout", "approval": "not_required"}
    assert check_path(case, facts(calls=[call])) == []
    stuck = facts(calls=[call], reason="max_iterations", answer=None)
    assert "did not answer (max_iterations)" in check_path(case, stuck)[0]


CASE = 'name = "s"\n[[cases]]\nname = "a"\ntask = "t"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "s"\n', "cases: Field required"),
        (CASE + "expekt = {}\n", "case 'a': expekt: unknown key (accepted: name, task"),
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
