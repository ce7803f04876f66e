"""The agent loop against a scripted OpenAI-compatible server on 127.0.0.1, through the
real `openai` client: every guardrail shown acting, and the trace of each run checked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.approval import Approver
from agent.audit import Trace, read_trace, render_timeline
from agent.guardrails import Budget, RunStopped
from agent.loop import Agent, RunResult
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, fail, say
from policies import RunPolicy, parse_policy
from sandbox import Pool
from tools import Registry

DOCS = Path(__file__).resolve().parent.parent / "tools" / "data" / "docs"
SECRET = "sk-agent-test-secret-0123456789"

BASE_POLICY = f"""
[defaults.settings]
today = "2025-05-11"

[tools.read_file]
root = "{DOCS}"

[tools.slow_stamp]
timeout_s = 30

[tools.check_return_eligibility]
requires_approval = true

[run]
model = "scripted"
max_retries = 2
request_timeout_s = 30

[run.prices.scripted]
input_per_million = 1000.0
output_per_million = 2000.0
"""


class Harness:
    def __init__(self, registry: Registry, tmp_path: Path) -> None:
        self.registry = registry
        self.tmp_path = tmp_path
        self.server: ScriptedModelServer | None = None
        self.trace_path = tmp_path / "trace.jsonl"

    def run(
        self,
        script: list[Step] | Any,
        task: str = "Can I still return order 12345?",
        run_table: str = "",
        approver: Approver | None = None,
    ) -> RunResult:
        text = BASE_POLICY.replace("[run]\n", "[run]\n" + run_table + "\n")
        policy = parse_policy(text, "test.toml", self.tmp_path)
        with ScriptedModelServer(script) as server, Pool(policy, registry=self.registry) as pool:
            self.server = server
            model = ModelClient(
                model=policy.run.model,
                base_url=server.base_url,
                api_key=SECRET,
                timeout_s=policy.run.request_timeout_s,
                max_retries=policy.run.max_retries,
            )
            trace = Trace(self.trace_path, secrets=[SECRET])
            try:
                agent = Agent(pool, policy, model, approver=approver or Approver(), trace=trace)
                return agent.run(task)
            finally:
                trace.close()

    @property
    def events(self) -> list[dict[str, Any]]:
        return read_trace(self.trace_path)

    def tool_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "tool_call"]

    def sent_tool_messages(self, request: int) -> list[dict[str, Any]]:
        assert self.server is not None
        return [m for m in self.server.requests[request]["messages"] if m["role"] == "tool"]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    from conftest import HOSTILE

    registry = Registry.default()
    registry.load(HOSTILE)
    yield Harness(registry, tmp_path)


def test_a_multi_step_run_reaches_the_right_answer(harness: Harness) -> None:
    result = harness.run(
        [
            call(
                ("get_order_status", {"order_id": "12345"}), ("read_file", {"path": "policy.txt"})
            ),
            call(("get_current_date", {})),
            say("No: delivered 2025-04-10, the 30-day window closed on 2025-05-10."),
        ]
    )
    assert result.ok and result.reason == "answer"
    assert "2025-05-10" in result.answer
    assert result.steps == 3
    # Each tool message answers its call, in the order of the calls.
    second = harness.server.requests[1]["messages"]
    asked = [c["id"] for c in second[-3]["tool_calls"]]
    answered = [m["tool_call_id"] for m in second[-2:]]
    assert asked == answered
    assert "2025-04-10" in second[-2]["content"] and "30 days" in second[-1]["content"]
    # The trace: start, three model calls, three tool calls, the end; no secret.
    kinds = [e["event"] for e in harness.events]
    assert kinds == [
        "run_started",
        "model_call",
        "tool_call",
        "tool_call",
        "model_call",
        "tool_call",
        "model_call",
        "run_ended",
    ]
    assert harness.events[-1]["answer"] == result.answer
    assert SECRET not in harness.trace_path.read_text()
    assert "run ended (answer)" in render_timeline(harness.events)


def test_parallel_tool_calls_run_at_once_in_separate_workers(harness: Harness) -> None:
    result = harness.run(
        [call(("slow_stamp", {"seconds": 2.0}), ("slow_stamp", {"seconds": 1.0})), say("done")]
    )
    assert result.ok
    first, second = (json.loads(m["content"]) for m in harness.sent_tool_messages(1))
    # Each answer is its own call's, in the order of the calls (2 s, then 1 s) ...
    assert first["end"] - first["start"] >= 2.0 > second["end"] - second["start"] >= 1.0
    # ... from two workers (pids from the trace: inside, each worker is pid 1) ...
    workers = {e["worker_pid"] for e in harness.events if e["event"] == "tool_call"}
    assert len(workers) == 2
    assert first["start"] < second["end"] and second["start"] < first["end"]  # ... at once


def test_malformed_arguments_are_fed_back_and_the_model_retries(harness: Harness) -> None:
    result = harness.run(
        [
            call(("get_order_status", '{"order_id": "12345"')),
            call(("get_order_status", {"orderid": "12345"})),
            call(("get_order_status", {"order_id": "12345"})),
            say("It was delivered on 2025-04-10."),
        ]
    )
    assert result.ok
    kinds = [e["error_kind"] for e in harness.tool_events()]
    assert kinds == ["bad_arguments", "bad_arguments", None]
    first = harness.sent_tool_messages(1)[0]["content"]
    assert "not valid JSON" in first
    second = harness.sent_tool_messages(2)[-1]["content"]
    assert "order_id: Field required" in second and "orderid: unexpected argument" in second


def test_a_made_up_tool_gets_the_list_of_real_ones(harness: Harness) -> None:
    result = harness.run([call(("refund_order", {"order_id": "12345"})), say("I cannot refund.")])
    assert result.ok
    message = harness.sent_tool_messages(1)[0]["content"]
    assert "unknown_tool" in message and "get_order_status" in message


def test_endless_repetition_gets_a_note_then_stops_the_run(harness: Harness) -> None:
    same = lambda request: call(("get_current_date", {}))  # noqa: E731
    result = harness.run(same)
    assert result.reason == "repeated_call"
    assert result.steps == 3
    # The repeat is not run; the next call asks for the answer with tools off, and a
    # model that calls again anyway ends the run (tests/test_small_models.py).
    approvals = [e["approval"] for e in harness.tool_events()]
    assert approvals == ["not_required", "repeat_note"]
    assert harness.server.requests[2]["tool_choice"] == "none"
    note = harness.sent_tool_messages(2)[-1]["content"]
    assert "already called get_current_date" in note and "2025-05-11" in note
    assert harness.events[-1]["reason"] == "repeated_call"


def test_a_huge_tool_result_is_cut_in_the_context_and_kept_whole_in_the_trace(
    harness: Harness,
) -> None:
    result = harness.run(
        [call(("huge_return", {"chars": 15_000})), say("That was long.")],
        run_table="max_result_chars = 500",
    )
    assert result.ok
    sent = harness.sent_tool_messages(1)[0]["content"]
    assert len(sent) == 500
    assert "[truncated: " in sent and "of 15000 characters cut]" in sent
    event = harness.tool_events()[0]
    assert len(event["output"]) == 15_000 and event["sent_chars"] == 500


def test_a_length_finish_is_reported(harness: Harness) -> None:
    result = harness.run([say("The answer is", finish_reason="length")])
    assert result.reason == "length"
    assert "cut off" in result.message


def test_a_content_filter_finish_is_reported(harness: Harness) -> None:
    result = harness.run([say("", finish_reason="content_filter")])
    assert result.reason == "content_filter"


def test_a_429_is_retried_then_succeeds(harness: Harness) -> None:
    result = harness.run([fail(429, "slow down", headers={"Retry-After": "0"}), say("Fine now.")])
    assert result.ok and result.answer == "Fine now."
    assert len(harness.server.requests) == 2


def test_500s_until_retries_run_out_end_the_run_in_one_line(harness: Harness) -> None:
    result = harness.run(lambda request: fail(500, "the GPU caught fire"))
    assert result.reason == "model_error"
    assert result.message.startswith("the model at http://127.0.0.1")
    assert "HTTP 500: the GPU caught fire" in result.message
    assert "\n" not in result.message
    assert len(harness.server.requests) == 3  # the first try and two retries


def test_a_401_is_not_retried_and_says_what_to_check(harness: Harness) -> None:
    result = harness.run([fail(401, "bad key"), say("never")])
    assert result.reason == "model_error"
    assert "OPENAI_API_KEY" in result.message
    assert SECRET not in result.message
    assert len(harness.server.requests) == 1


def test_a_slow_model_hits_the_wall_budget(harness: Harness) -> None:
    slow = say("too late", delay_s=5)
    result = harness.run([call(("get_current_date", {})), slow], run_table="max_wall_s = 1.5")
    assert result.reason == "max_wall_time"
    assert "max_wall_s" in result.message


def test_the_cost_budget_stops_the_run_before_the_next_model_call(harness: Harness) -> None:
    expensive = {"prompt_tokens": 1000, "completion_tokens": 500}  # $1 + $1 at these prices
    result = harness.run(
        [call(("get_current_date", {}), usage=expensive), say("never reached")],
        run_table="max_cost_usd = 1.5",
    )
    assert result.reason == "max_cost"
    assert len(harness.server.requests) == 1
    assert result.cost_usd == pytest.approx(2.0)
    model_call = next(e for e in harness.events if e["event"] == "model_call")
    assert model_call["cost_usd"] == pytest.approx(2.0)


def test_input_tokens_and_output_tokens_are_counted_too(harness: Harness) -> None:
    usage = {"input_tokens": 100, "output_tokens": 50}
    result = harness.run([say("ok", usage=usage)])
    assert result.cost_usd == pytest.approx(0.2)


def test_max_iterations_ends_with_a_step_limit_answer(harness: Harness) -> None:
    counter = iter(range(100))
    result = harness.run(
        lambda request: call(("calculate", {"expression": f"{next(counter)} + 1"})),
        run_table="max_iterations = 3",
    )
    assert result.reason == "max_iterations"
    assert "3 model calls" in result.message
    # One step is one call, in the line a person reads (was "1 model calls").
    budget = Budget(RunPolicy(max_iterations=1), steps=1)
    with pytest.raises(RunStopped, match=r"stopped after 1 model call \(max_iterations = 1\)"):
        budget.before_model_call()


def test_approval_is_denied_without_a_tty_and_the_model_is_told(harness: Harness) -> None:
    result = harness.run(
        [call(("check_return_eligibility", {"order_id": "12345"})), say("I could not check.")]
    )
    assert result.ok
    event = harness.tool_events()[0]
    assert event["error_kind"] == "denied" and event["approval"] == "denied_no_tty"
    assert event["worker_pid"] is None  # it never ran
    assert "denied" in harness.sent_tool_messages(1)[0]["content"]
    # The timeline says so in words, not as a missing pid ("pid None").
    line = next(x for x in render_timeline(harness.events).splitlines() if "tool " in x)
    assert "no worker)" in line and "None" not in line


def test_approve_flag_and_an_interactive_yes_let_the_call_run(harness: Harness) -> None:
    script = [call(("check_return_eligibility", {"order_id": "12345"})), say("Expired.")]
    harness.run(script, approver=Approver(approve={"check_return_eligibility"}))
    assert harness.tool_events()[-1]["output"].startswith("No: order 12345 can no longer")
    asked: list[str] = []
    tty = Approver(interactive=True, ask=lambda prompt: asked.append(prompt) or "a")
    harness.run(script, approver=tty)
    assert harness.tool_events()[-1]["approval"] == "approved_always"
    assert 'order_id = "12345"' in asked[0]


def raw_completion(message: object, finish_reason: str = "stop") -> Step:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    return Step(raw=json.dumps(body).encode())


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (Step(raw=b"<html>502 Bad Gateway</html>"), "not JSON: '<html>502 Bad Gateway</html>'"),
        (Step(raw=b'{"choices": []}'), "returned no choices"),
        (
            Step(raw=b'{"error": {"message": "model overloaded"}}'),
            "no choices (model 'scripted'): model overloaded",
        ),
        (raw_completion(None), "a choice without a message"),
        (Step(raw=b"[" * 100_000), "not JSON"),
        # Not an object at all: it was "returned no choices", as if the model had failed.
        (Step(raw=b"[1, 2]"), "answered with JSON that is not a chat completion (a list): is"),
        (Step(raw=b"null"), "not a chat completion (null): is http://127.0.0.1:"),
    ],
)
def test_a_broken_endpoint_ends_the_run_in_one_line(
    harness: Harness, step: Step, message: str
) -> None:
    result = harness.run([step])
    assert result.reason == "model_error"
    assert message in result.message and "\n" not in result.message


def test_malformed_tool_calls_are_answered_not_crashed_on(harness: Harness) -> None:
    nonsense = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": 7, "function": "calc"},
            "junk",
            {"id": "same", "function": {"name": "get_current_date", "arguments": {}}},
            {"id": "same", "function": {"name": "get_current_date", "arguments": None}},
        ],
    }
    result = harness.run([raw_completion(nonsense, "tool_calls"), say("recovered")])
    assert result.ok and result.answer == "recovered"
    sent = harness.server.requests[1]["messages"]
    # The two date calls are one call twice in a turn: it ran once, the copy was noted.
    assert "tool_choice" not in harness.server.requests[1]
    ids = [c["id"] for c in sent[-5]["tool_calls"]]
    assert len(set(ids)) == 4
    assert [m["tool_call_id"] for m in sent[-4:]] == ids
    assert "unknown_tool" in sent[-4]["content"] and "2025-05-11" in sent[-2]["content"]
    assert "same call of get_current_date" in sent[-1]["content"]


def test_content_parts_become_the_answer_text(harness: Harness) -> None:
    parts = {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
    }
    result = harness.run([raw_completion(parts)])
    assert result.answer == "Hello there"


def test_an_unknown_model_404_names_the_model(harness: Harness) -> None:
    result = harness.run([fail(404, "model not found"), say("never")])
    assert result.reason == "model_error"
    assert "does not know model 'scripted'" in result.message
    assert len(harness.server.requests) == 1  # not retried
