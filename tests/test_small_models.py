"""What small local models get wrong, and what the agent does about it, against a
scripted OpenAI-compatible server on 127.0.0.1 through the real `openai` client: tool
calls written as text, arguments a little off, runs that would not stop by themselves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.approval import Approver
from agent.audit import Trace, read_trace, render_timeline
from agent.loop import Agent, RunResult
from agent.model import ModelClient
from agent.repair import bind_leniently
from agent.replay import ScriptedModelServer, Step, call, fail, say
from policies import Policy, RunPolicy, parse_policy
from sandbox import Pool
from tools import ArgumentError, Registry

DOCS = Path(__file__).resolve().parent.parent / "tools" / "data" / "docs"

POLICY = f"""
[defaults.settings]
today = "2025-05-11"

[tools.read_file]
root = "{DOCS}"

[run]
model = "scripted"
max_retries = 0
request_timeout_s = 30
"""


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    # One per test: a pool keeps spare workers, which the no-leftovers check would count.
    policy = parse_policy(POLICY, "test.toml", tmp_path)
    with Pool(policy, registry=Registry.default()) as pool:
        yield pool


class Run:
    """Agent runs against scripts, through one loopback server; what the server was sent
    in the last run, and its trace."""

    def __init__(self, pool: Pool, server: ScriptedModelServer, tmp_path: Path) -> None:
        self.pool = pool
        self.server = server
        self.trace_path = tmp_path / "trace.jsonl"
        self.requests: list[dict[str, Any]] = []

    def __call__(
        self,
        script: list[Step] | Any,
        task: str = "Can I still return order 12345?",
        approver: Approver | None = None,
        **run: Any,
    ) -> RunResult:
        policy: Policy = self.pool.policy  # type: ignore[assignment]
        if run:
            policy = policy.model_copy(
                update={"run": RunPolicy(**{**policy.run.model_dump(), **run})}
            )
        self.server.play(script)
        model = ModelClient(model="scripted", base_url=self.server.base_url, api_key=None)
        self.trace_path.unlink(missing_ok=True)  # each run's own trace
        trace = Trace(self.trace_path)
        try:
            agent = Agent(self.pool, policy, model, approver=approver or Approver(), trace=trace)
            return agent.run(task)
        finally:
            trace.close()
            self.requests = list(self.server.requests)

    @property
    def events(self) -> list[dict[str, Any]]:
        return read_trace(self.trace_path)

    def tool_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "tool_call"]

    def model_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "model_call"]


@pytest.fixture
def run(pool: Pool, tmp_path: Path) -> Iterator[Run]:
    with ScriptedModelServer([]) as server:
        yield Run(pool, server, tmp_path)


def text(content: str) -> Step:
    """The model writes its turn as content, as a server without a tool parser sends it."""
    return say(content)


LOOKUP = '{"name": "get_order_status", "arguments": {"order_id": "12345"}}'
SHAPES = {
    "fenced_json": f"I will look the order up.\n```json\n{LOOKUP}\n```",
    "tool_call_tags": f"<tool_call>\n{LOOKUP}\n</tool_call>",
    "mistral": f"[TOOL_CALLS] [{LOOKUP}]",
    "llama": '<|python_tag|>{"name": "get_order_status", "parameters": {"order_id": "12345"}}',
    "bare_json": LOOKUP,
}


def test_a_call_written_as_text_runs_and_the_trace_says_so(run: Run) -> None:
    for shape in SHAPES:
        check_one_shape(run, shape)


def check_one_shape(run: Run, shape: str) -> None:
    result = run([text(SHAPES[shape]), say("Delivered on 2025-04-10.")])
    assert result.ok and result.answer == "Delivered on 2025-04-10."
    (tool,) = run.tool_events()
    assert tool["tool"] == "get_order_status" and tool["ok"]
    assert "2025-04-10" in tool["output"]
    first = run.model_events()[0]
    assert first["text_calls"] == shape and first["tool_calls"] == 1
    assert f"calls read from text ({shape})" in render_timeline(run.events)
    # Sent back as a real call with its answer: the blob is not in the conversation twice.
    sent = run.requests[1]["messages"]
    assistant, answer = sent[-2], sent[-1]
    assert assistant["tool_calls"][0]["function"]["name"] == "get_order_status"
    assert answer["role"] == "tool" and answer["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert "get_order_status" not in (assistant.get("content") or "")
    if shape == "fenced_json":
        assert assistant["content"] == "I will look the order up."


def test_a_call_with_a_trailing_comma_is_read_and_the_repair_named(run: Run) -> None:
    sloppy = '```json\n{"name": "get_order_status", "arguments": {"order_id": "12345",},}\n```'
    result = run([text(sloppy), say("Delivered on 2025-04-10.")])
    assert result.ok
    (tool,) = run.tool_events()
    assert tool["ok"] and tool["arguments"] == '{"order_id":"12345"}'
    first = run.model_events()[0]
    assert (first["text_calls"], first["text_call_repairs"]) == ("fenced_json", ["trailing_commas"])


def test_several_calls_in_one_answer_run_as_one_turn(run: Run) -> None:
    blocks = [
        '```json\n{"name": "get_order_status", "arguments": {"order_id": "12345"}}\n```',
        '```json\n{"name": "read_file", "arguments": {"path": "policy.txt"}}\n```',
        '```json\n{"name": "get_current_date", "arguments": {}}\n```',
    ]
    result = run([text("\n".join(blocks)), say("No: the window closed on 2025-05-10.")])
    assert result.ok
    assert [e["tool"] for e in run.tool_events()] == [
        "get_order_status",
        "read_file",
        "get_current_date",
    ]
    ids = [c["id"] for c in run.requests[1]["messages"][-4]["tool_calls"]]
    assert len(set(ids)) == 3
    assert [m["tool_call_id"] for m in run.requests[1]["messages"][-3:]] == ids


NOT_CALLS = {
    # An answer that quotes JSON data, not a call.
    "quoted-data": 'The order:\n```json\n{"order_id": "12345", "status": "delivered"}\n```',
    # The call shape, but a tool nobody offered: the answer, not a call.
    "unknown-tool": '```json\n{"name": "delete_all_orders", "arguments": {}}\n```',
    "extra-key": '{"name": "get_order_status", "arguments": {"order_id": "1"}, "note": "x"}',
    # Two names in one object: which one was meant cannot be told.
    "two-names": '{"name": "get_current_date", "name": "issue_refund", "arguments": {}}',
    # Code in another language that happens to hold a call's shape.
    "python-fence": '```python\n{"name": "get_current_date", "arguments": {}}\n```',
    "deep-list": "[" * 50_000,
    "deep-tag": "<tool_call>" + "{" * 30_000,
    "huge": "x" * 200_000 + LOOKUP,
}


def test_text_that_is_not_a_call_of_an_offered_tool_is_the_answer(run: Run) -> None:
    for name, content in NOT_CALLS.items():
        result = run([text(content)])
        assert result.ok and result.answer == content, name
        assert run.tool_events() == [], name
        assert run.model_events()[0]["text_calls"] is None, name


def test_text_calls_are_validated_and_approved_like_any_other(run: Run) -> None:
    # A repeated key is refused, never read as its last value; a refund still asks.
    refund = '{"name": "issue_refund", "arguments": {"order_id": "12345", %s}}'
    twice = refund % '"amount": 1.0, "amount": 89.99'
    not_finite = refund % '"amount": 1e400'
    once = "<tool_call>" + refund % '"amount": 89.99' + "</tool_call>"
    result = run([text(twice), text(not_finite), text(once), say("It needs approval.")])
    assert result.ok
    first, second, third = run.tool_events()
    assert first["error_kind"] == "bad_arguments" and "more than once" in first["error_message"]
    assert second["error_kind"] == "bad_arguments" and "too large" in second["error_message"]
    assert third["error_kind"] == "denied" and third["approval"] == "denied_no_tty"
    assert all(e["worker_pid"] is None for e in (first, second, third))


def test_a_flood_of_text_calls_is_capped_per_turn(run: Run) -> None:
    flood = "\n".join(
        f'<tool_call>{{"name": "calculate", "arguments": {{"expression": "{i} + 1"}}}}</tool_call>'
        for i in range(200)
    )
    # 64 read (at most): within the loop's ceiling of 4 x max_calls_per_turn, which
    # ends the run (dd86472), so the cap per turn answers the rest.
    result = run([text(flood), say("done")], max_calls_per_turn=16)
    assert result.ok
    events = run.tool_events()
    assert len(events) == 64
    ran = [e for e in events if e["worker_pid"] is not None]
    assert len(ran) == 16
    assert all(e["approval"] == "call_limit" for e in events[16:])


SLIPS = {
    # the model's arguments text: (what validates, the repairs named)
    '{"order_id": "12345",}': ('{"order_id":"12345"}', ["trailing_commas"]),
    '"{\\"order_id\\": \\"12345\\"}"': ('{"order_id":"12345"}', ["stringified_arguments"]),
    '{"arguments": {"order_id": 12345}}': (
        '{"order_id":"12345"}',
        ["arguments_wrapper", "number_as_string"],
    ),
    '{"name": "get_order_status", "parameters": {"order_id": "12345"}}': (
        '{"order_id":"12345"}',
        ["arguments_wrapper"],
    ),
    '"{\\"arguments\\": {\\"order_id\\": \\"12345\\",}}"': (
        '{"order_id":"12345"}',
        ["stringified_arguments", "trailing_commas", "arguments_wrapper"],
    ),
    # A comma inside a string is the value's own, not a slip.
    '{"order_id": "12,}"}': ('{"order_id":"12,}"}', []),
}


def test_small_slips_in_arguments_are_repaired_and_named() -> None:
    spec = Registry.default().get("get_order_status")
    for raw, (canonical, repairs) in SLIPS.items():
        bound = bind_leniently(spec, raw)
        assert (bound.canonical, list(bound.repairs)) == (canonical, repairs), raw
        assert bound.model_arguments == (raw if repairs else None)


REFUSED = {
    # A repeated key stays repeated through the unwrapping, and is refused.
    '{"arguments": {"order_id": "12345", "amount": 1.0, "amount": 89.99}}': "more than once",
    # Fixing the comma leaves a value the schema refuses: that is what the model hears.
    '{"order_id": "12345", "amount": "all of it",}': "amount: expected a number, got a string",
    # Another tool's call shape is not this tool's arguments.
    '{"name": "get_current_date", "arguments": {"order_id": "12345", "amount": 1}}': "order_id",
    '{"arguments": {"order_id": "12345", "amount": NaN}}': "not a JSON number",
    '"' + "[" * 5_000 + '"': "must be a JSON object",
    '{"arguments": ' * 3_000 + "{}" + "}" * 3_000: "not valid JSON",
}


def test_a_repair_never_makes_the_schema_accept_what_it_refuses() -> None:
    registry = Registry.default()
    for raw, message in REFUSED.items():
        with pytest.raises(ArgumentError, match=message):
            bind_leniently(registry.get("issue_refund"), raw)


def arguments_tool(arguments: str) -> str:
    """A tool whose own parameter is called arguments.

    Args:
        arguments: Any text.
    """
    return arguments


def test_a_parameter_named_arguments_is_never_unwrapped() -> None:
    registry = Registry()
    spec = registry.add(arguments_tool)
    with pytest.raises(ArgumentError, match="valid string"):
        bind_leniently(spec, '{"arguments": {"x": 1}}')


def test_repaired_calls_run_as_validated_are_approved_as_shown_and_counted(run: Run) -> None:
    prompts: list[str] = []
    approver = Approver(interactive=True, ask=lambda prompt: prompts.append(prompt) or "y")
    script = [
        Step(
            message={
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "a",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"path": "policy.txt",}'},
                    },
                    {
                        "id": "b",
                        "type": "function",
                        "function": {
                            "name": "issue_refund",
                            "arguments": '{"arguments": {"order_id": 12345, "amount": 89.99}}',
                        },
                    },
                ],
            },
            finish_reason="tool_calls",
        ),
        say("Refunded."),
    ]
    result = run(script, task="Refund order 12345.", approver=approver)
    assert result.ok
    read, refund = run.tool_events()
    assert read["ok"] and "30 days" in read["output"] and read["repairs"] == ["trailing_commas"]
    assert refund["repairs"] == ["arguments_wrapper", "number_as_string"]
    assert refund["arguments"] == '{"amount":89.99,"order_id":"12345"}'
    assert refund["model_arguments"] == '{"arguments": {"order_id": 12345, "amount": 89.99}}'
    assert refund["output"] == "Refunded 89.99 USD for order 12345"
    # The person saw what ran, and the hash they approved is the one that ran.
    assert 'order_id = "12345"' in prompts[0] and refund["arguments_sha256"][:16] in prompts[0]
    assert refund["approved_sha256"] == refund["arguments_sha256"]
    assert "[repaired: arguments_wrapper, number_as_string]" in render_timeline(run.events)


def steered(run: Run) -> list[str | None]:
    return [e["steered"] for e in run.model_events()]


def test_a_repeated_call_steers_the_next_call_to_an_answer(run: Run) -> None:
    date = call(("get_current_date", {}))
    result = run([date, date, say("Today is 2025-05-11.")], task="What is the date?")
    assert result.ok and result.answer == "Today is 2025-05-11."
    assert steered(run) == [None, None, "repeated_call"]
    assert [e["approval"] for e in run.tool_events()] == ["not_required", "repeat_note"]
    first, _, third = run.requests
    assert "tool_choice" not in first
    assert third["tool_choice"] == "none" and third["tools"]
    ask = third["messages"][-1]
    assert ask["role"] == "user" and "Do not call any more tools" in ask["content"]
    assert ask["content"].endswith("The question was: What is the date?")
    # The instruction was for that call only: the conversation kept has no trace of it.
    assert not any("Do not call" in str(m.get("content")) for m in result.messages)
    assert "steered to answer (repeated_call)" in render_timeline(run.events)


def test_the_last_step_is_steered_to_an_answer(run: Run) -> None:
    script = [
        call(("calculate", {"expression": "89.99 / 3"})),
        call(("calculate", {"expression": "89.99 / 4"})),
        say("About 30.00 each."),
    ]
    result = run(script, task="What did each item cost?", max_iterations=3)
    assert result.ok and result.answer == "About 30.00 each."
    assert steered(run) == [None, None, "max_iterations"]
    assert [r.get("tool_choice") for r in run.requests] == [None, None, "none"]
    # With no tool result to answer from, the only step is an ordinary one.
    run([say("Hello.")], task="Hi", max_iterations=1)
    assert steered(run) == [None] and "tool_choice" not in run.requests[0]


def test_a_model_that_calls_tools_after_the_steer_is_stopped(run: Run) -> None:
    # The server ignores tool_choice and the model writes one more call as text.
    again = text('```json\n{"name": "calculate", "arguments": {"expression": "1 + 2"}}\n```')
    script = [call(("calculate", {"expression": "1 + 1"})), again, say("never sent")]
    result = run(script, task="Add.", max_iterations=2)
    assert result.reason == "max_iterations" and result.answer is None
    assert "at the last step, the model still called calculate" in result.message
    assert "2 model calls" in result.message
    assert len(run.requests) == 2 and steered(run) == [None, "max_iterations"]
    assert len(run.tool_events()) == 1  # the call after the steer never ran
    # The conversation kept ends with answered calls, so a later turn can go on from it.
    assert result.messages[-1]["role"] == "tool"


def test_a_denial_tells_the_model_what_approval_means(run: Run) -> None:
    refund = call(("issue_refund", {"order_id": "12345", "amount": 89.99}))
    result = run([refund, say("A staff member must approve the refund.")], task="Refund it.")
    assert result.ok
    (event,) = run.tool_events()
    assert (event["error_kind"], event["approval"]) == ("denied", "denied_no_tty")
    told = run.requests[1]["messages"][-1]["content"]
    assert "needs a person's approval" in told and "Nothing was done" in told
    assert "staff member must approve" in told
    assert "tty" not in told.lower()  # the code stays in the trace, not in the answer


def test_a_document_that_does_not_exist_is_answered_with_those_that_do(pool: Pool) -> None:
    result = pool.call("read_file", {"path": "return_policy.txt"})
    assert result.error is not None and result.error.kind == "tool_error"
    assert "'return_policy.txt' does not exist" in result.error.message
    assert "the documents there: 'policy.txt'" in result.error.message


def test_built_in_tools_say_when_to_use_them_and_show_no_value_to_copy() -> None:
    registry = Registry.default()
    registry.load("tools.memory")
    for spec in registry:
        assert "Use it" in spec.description, spec.name
        params = spec.parameters["properties"]
        for name, schema in params.items():
            text = schema.get("description", "")
            assert text, f"{spec.name}.{name} has no description"
            # An example value ("12345", "(89.99 * 3) / 2") ends up in answers.
            assert not re.search(r'e\.g\.|for example|"', text), f"{spec.name}.{name}: {text}"


def test_max_output_tokens_is_sent_only_when_set() -> None:
    with ScriptedModelServer([say("a"), say("b")]) as server:
        for limit in (None, 512):
            model = ModelClient(
                model="m", base_url=server.base_url, api_key=None, max_output_tokens=limit
            )
            model.complete([{"role": "user", "content": "hi"}], [], timeout_s=10)
    first, second = server.requests
    assert "max_tokens" not in first and second["max_tokens"] == 512


def test_copies_of_a_call_in_one_turn_are_noted_and_steered_not_stopped(run: Run) -> None:
    flood = call(*[("get_current_date", {})] * 5)
    result = run([flood, say("Today is 2025-05-11.")], task="What is the date?")
    assert result.ok and result.answer == "Today is 2025-05-11."
    approvals = [e["approval"] for e in run.tool_events()]
    assert approvals == ["not_required"] + ["copy_note"] * 4
    assert steered(run) == [None, "repeated_call"]
    # One lookup twice beside another: each runs once, both answered, and not steered.
    order = ("get_order_status", {"order_id": "12345"})
    twice = call(order, ("read_file", {"path": "policy.txt"}), order)
    result = run([twice, call(("get_current_date", {})), say("No.")])
    assert result.ok and steered(run) == [None, None, None]
    assert [e["approval"] for e in run.tool_events()][:3] == [
        "not_required",
        "not_required",
        "copy_note",
    ]
    assert "same call of get_order_status" in run.requests[1]["messages"][-1]["content"]


def test_the_first_answer_is_reviewed_once_and_may_look_more_up(run: Run) -> None:
    script = [
        call(("get_order_status", {"order_id": "12345"})),
        say("Yes, you can return it."),  # from one lookup of three: the draft
        call(("read_file", {"path": "policy.txt"}), ("get_current_date", {})),
        say("No: the window closed on 2025-05-10."),  # not reviewed again
    ]
    result = run(script, review_answer=True)
    assert result.ok and result.answer == "No: the window closed on 2025-05-10."
    assert len(run.requests) == 4
    review = run.requests[2]
    draft, ask = review["messages"][-2:]
    assert draft == {"role": "assistant", "content": "Yes, you can return it."}
    assert ask["role"] == "user" and "Before this answer goes to the user" in ask["content"]
    assert "tool_choice" not in review and review["tools"]  # tools on: it may look more up
    assert [e["reviewed"] for e in run.model_events()] == [
        None,
        None,
        "Yes, you can return it.",
        None,
    ]
    # The reply took the draft's place: the conversation kept holds neither it nor the ask.
    kept = [str(m.get("content")) for m in result.messages]
    assert "Yes, you can return it." not in kept and not any("Before this" in m for m in kept)
    assert [t["tool"] for t in run.tool_events()][-2:] == ["read_file", "get_current_date"]


def test_a_review_that_cannot_be_had_leaves_the_draft_standing(run: Run) -> None:
    lookup = call(("get_order_status", {"order_id": "12345"}))
    result = run([lookup, say("Delivered."), fail(500)], review_answer=True)
    assert result.ok and result.answer == "Delivered."
    assert result.messages[-1] == {"role": "assistant", "content": "Delivered."}
    # Not reviewed: off (the default), or with no room left in the step budget.
    assert run([lookup, say("Delivered.")]).answer == "Delivered."
    assert len(run.requests) == 2
    assert run([lookup, say("Delivered.")], review_answer=True, max_iterations=3).ok
    assert len(run.requests) == 2


def test_an_answer_that_turns_a_tools_verdict_round_is_steered_once(run: Run) -> None:
    lookup = call(("get_order_status", {"order_id": "12345"}))
    eligible = call(("check_return_eligibility", {"order_id": "12345"}))
    wrong = say("Yes, you can still return it. Its window closed on 2025-05-10.")
    result = run([lookup, eligible, wrong, say("No: its window closed on 2025-05-10.")])
    assert result.ok and result.answer == "No: its window closed on 2025-05-10."
    assert steered(run) == [None, None, None, "contradiction"]
    last = run.requests[3]
    assert last["tool_choice"] == "none"
    draft, ask = last["messages"][-2:]
    assert draft["content"] == wrong.message["content"]  # type: ignore[index]
    assert ask["content"].startswith(
        'Your answer begins with "Yes", but a tool result says:\nNo: order 12345 can no '
        "longer be returned"
    )
    assert 'agrees with the tool results. Begin it with "No".' in ask["content"]
    kept = [str(m.get("content")) for m in result.messages]
    assert not any("Your answer begins" in m or "Yes, you can" in m for m in kept)
    # Once: a second contradiction stands. An answer that agrees, or has no verdict, or
    # a run whose tools gave none, is not steered.
    assert run([lookup, eligible, say("Yes."), say("Yes, really.")]).answer == "Yes, really."
    assert len(run.requests) == 4
    for agreed in ("No, it closed on 2025-05-10.", "It closed on 2025-05-10."):
        assert run([lookup, eligible, say(agreed)]).answer == agreed
        assert len(run.requests) == 3
    assert run([lookup, say("Yes, it was delivered.")]).answer == "Yes, it was delivered."
