"""`[tools.NAME] after = [...]`: a tool runs only once the tools it names have answered
in the run, and is offered only then; `offer_when`: an action offered only when the
user's message asks for it; `[run] call_tools_first`. Against the scripted loopback
server through the real `openai` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import shared

from agent.approval import Approver
from agent.audit import Trace, read_trace
from agent.loop import Agent, RunResult
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, fail, say
from policies import Policy, RunPolicy, parse_policy
from sandbox import Pool
from tools import Registry

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
[defaults.settings]
today = "2025-05-11"

[tools.check_return_eligibility]
after = ["get_order_status", "get_current_date"]

[tools.issue_refund]
after = ["get_order_status"]
offer_when = ["refund", "money back"]

[run]
model = "scripted"
max_retries = 0
max_iterations = 8
"""
ELIGIBLE = ("check_return_eligibility", {"order_id": "12345"})
REFUND = ("issue_refund", {"order_id": "12345", "amount": 89.99})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pool, ScriptedModelServer]]:
    policy = parse_policy(POLICY, "test.toml", tmp_path_factory.mktemp("order"))
    with (
        Pool(policy, registry=Registry.default()) as pool,
        ScriptedModelServer([]) as server,
    ):
        yield shared(pool), server


def run(
    setup: tuple[Pool, ScriptedModelServer],
    script: list[Step],
    trace_path: Path,
    task: str = "Return?",
    **changes: Any,
) -> RunResult:
    pool, server = setup
    policy: Policy = pool.policy  # type: ignore[assignment]
    if changes:
        policy = policy.model_copy(
            update={"run": RunPolicy(**{**policy.run.model_dump(), **changes})}
        )
    server.play(script)
    model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
    trace = Trace(trace_path)
    try:
        return Agent(pool, policy, model, approver=Approver(), trace=trace).run(task)
    finally:
        trace.close()


def offered(request: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in request.get("tools") or []}


def test_a_tool_runs_only_after_the_tools_its_policy_names_answered(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    script = [
        # In the same turn as a lookup, and beside a lookup that fails: not yet.
        call(ELIGIBLE, ("get_order_status", {"order_id": "99999"})),
        call(("get_order_status", {"order_id": "12345"}), ELIGIBLE),
        call(ELIGIBLE),  # the order has answered, the date not yet
        call(("get_current_date", {})),
        call(ELIGIBLE),  # now it runs: the refused calls were not counted as repeats
        say("The window closed on 2025-05-10."),
    ]
    result = run(setup, script, tmp_path / "t.jsonl")
    server = setup[1]
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
    assert tools[-1]["output"].startswith("No: order 12345 can no longer be returned")
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
    # Offered only once both have answered: the model called it before that from what
    # it knew (a scripted model here; a real one from an earlier turn), and was refused.
    seen_offered = ["check_return_eligibility" in offered(r) for r in server.requests]
    assert seen_offered == [False, False, False, False, True, True]


def test_an_action_is_offered_only_when_the_user_asks_for_it(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    server = setup[1]
    lookup = ("get_order_status", {"order_id": "12345"})
    # Not asked for: never offered, and a call of it anyway is not run.
    result = run(
        setup,
        [call(lookup), call(REFUND), say("You can return it.")],
        tmp_path / "a.jsonl",
        task="Can I still return order 12345?",
    )
    assert result.ok
    assert not any("issue_refund" in offered(r) for r in server.requests)
    refused = [e for e in read_trace(tmp_path / "a.jsonl") if e["event"] == "tool_call"][-1]
    assert (refused["tool"], refused["approval"], refused["error_kind"]) == (
        "issue_refund",
        "not_offered",
        "denied",
    )
    told = server.requests[2]["messages"][-1]["content"]
    assert "offered only when the user's message asks for it" in told and "'refund'" in told
    # Asked for, in any case and any form of the word: offered once the order answered.
    result = run(
        setup,
        [call(lookup), call(REFUND), say("A person must approve it.")],
        tmp_path / "b.jsonl",
        task="I want a REFUND for order 12345",
    )
    assert result.ok
    assert ["issue_refund" in offered(r) for r in server.requests] == [False, True, True]
    asked = [e for e in read_trace(tmp_path / "b.jsonl") if e["event"] == "tool_call"][-1]
    assert asked["tool"] == "issue_refund" and asked["approval"].startswith("denied")
    # A word that only contains it is no mention ("prefund"), nor is another message's.
    run(setup, [say("No.")], tmp_path / "c.jsonl", task="Is my prefunded order here?")
    assert "issue_refund" not in offered(server.requests[0])


def test_call_tools_first_requires_a_tool_on_the_first_call_only(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    server = setup[1]
    script = [call(("get_current_date", {})), say("It is 2025-05-11.")]
    assert run(setup, script, tmp_path / "a.jsonl", task="Date?", call_tools_first=True).ok
    assert [r.get("tool_choice") for r in server.requests] == ["required", None]
    # A server that ignores it and answers in words: the answer stands.
    result = run(setup, [say("Hi!")], tmp_path / "b.jsonl", task="Hi", call_tools_first=True)
    assert result.ok and result.answer == "Hi!"
    # Off (the default): never sent.
    run(setup, [call(("get_current_date", {})), say("Today.")], tmp_path / "c.jsonl", task="D?")
    assert [r.get("tool_choice") for r in server.requests] == [None, None]


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


def test_a_server_that_refuses_a_tool_choice_is_asked_again_without_it(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    server = setup[1]

    def refuses_tool_choice(request: dict[str, Any]) -> Step:
        # As a server without "required" (or any tool_choice) answers: HTTP 400 naming it.
        if request.get("tool_choice"):
            return fail(400, f"Unsupported tool_choice: {request['tool_choice']!r}")
        if not request.get("tools"):
            return say("It is 2025-05-11.")
        return call(("get_current_date", {}))

    result = run(
        setup,
        refuses_tool_choice,  # type: ignore[arg-type]
        tmp_path / "t.jsonl",
        task="What is the date?",
        call_tools_first=True,
        max_iterations=2,
    )
    assert result.ok and result.answer == "It is 2025-05-11."
    sent = [(r.get("tool_choice"), bool(r.get("tools"))) for r in server.requests]
    # "required" refused once, then the server's own choice; the last step's "none"
    # refused once, then the same call without tools.
    assert sent == [("required", True), (None, True), ("none", True), (None, False)]
    calls = [e for e in read_trace(tmp_path / "t.jsonl") if e["event"] == "model_call"]
    assert [c["tool_choice_refused"] for c in calls] == ["required", "none"]
    shown = subprocess.run(
        [sys.executable, "-m", "agent", "trace", str(tmp_path / "t.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    assert "tool_choice required refused by the server: not sent" in shown
    # Another 400 is the run's error, as before: nothing is retried without the choice.
    result = run(
        setup,
        [fail(400, "context length exceeded")],
        tmp_path / "u.jsonl",
        task="Date?",
        call_tools_first=True,
    )
    assert result.reason == "model_error" and "HTTP 400" in result.message
    assert [r.get("tool_choice") for r in server.requests] == ["required"]


def test_then_asks_for_the_tools_a_result_calls_for_alone_and_required(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    pool, server = setup
    base: Policy = pool.policy  # type: ignore[assignment]
    then = (
        '\n[tools.get_order_status]\nthen = ["read_file", "get_current_date"]\n'
        'then_when = ["return", "refund"]\n'
    )
    policy = parse_policy(POLICY + then, "then.toml", tmp_path)
    policy = policy.model_copy(
        update={"run": base.run.model_copy(update={"call_tools_first": True})}
    )

    def go(script: list[Step], task: str, name: str) -> RunResult:
        server.play(script)
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        trace = Trace(tmp_path / name)
        try:
            return Agent(pool, policy, model, approver=Approver(), trace=trace).run(task)
        finally:
            trace.close()

    lookup = ("get_order_status", {"order_id": "12345"})
    script = [
        call(lookup),
        call(("read_file", {"path": "nope.txt"})),  # it fails: called, not asked again
        call(("get_current_date", {})),
        say("No: its window closed on 2025-05-10."),
    ]
    result = go(script, "Can I still RETURN order 12345?", "a.jsonl")
    assert result.ok
    sent = [(sorted(offered(r)), r.get("tool_choice")) for r in server.requests]
    everything = sorted(offered(server.requests[0]))
    assert sent[0] == (everything, "required")  # call_tools_first
    assert sent[1] == (["get_current_date", "read_file"], "required")
    assert sent[2] == (["get_current_date"], "required")
    assert sent[3][1] is None and "check_return_eligibility" in sent[3][0]
    calls = [e for e in read_trace(tmp_path / "a.jsonl") if e["event"] == "model_call"]
    assert [c["follow_ups"] for c in calls] == [
        [],
        ["get_current_date", "read_file"],  # in the run's order of tools
        ["get_current_date"],
        [],
    ]
    # A question that mentions none of `then_when`: the lookup is not followed up.
    result = go([call(lookup), say("It cost 89.99.")], "What did order 12345 cost?", "b.jsonl")
    assert result.ok
    assert [r.get("tool_choice") for r in server.requests] == ["required", None]
    assert {"calculate", "read_file", "get_current_date"} <= offered(server.requests[1])
    # Nor is a lookup that failed (an unknown order): nothing was found to follow up.
    unknown = ("get_order_status", {"order_id": "99999"})
    go([call(unknown), say("No order 99999.")], "Can I return order 99999?", "c.jsonl")
    assert [r.get("tool_choice") for r in server.requests] == ["required", None]


def test_parallel_tool_calls_is_sent_as_the_policy_says(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    from agent.runner import model_client

    pool, server = setup
    base: Policy = pool.policy  # type: ignore[assignment]
    for value, sent in ((False, [False, False]), (None, ["absent", "absent"])):
        policy = base.model_copy(
            update={"run": base.run.model_copy(update={"parallel_tool_calls": value})}
        )
        server.play([call(("get_current_date", {})), say("Today.")])
        model = model_client(policy, server.base_url)
        trace = Trace(tmp_path / f"{value}.jsonl")
        try:
            assert Agent(pool, policy, model, approver=Approver(), trace=trace).run("D?").ok
        finally:
            trace.close()
        assert [r.get("parallel_tool_calls", "absent") for r in server.requests] == sent


def test_calculate_refuses_what_is_not_arithmetic_and_says_what_it_takes(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # What the small model sent: Python with a tool in it, a date, a bare number.
    python = "get_order_status(order_id='12345')['total'] / 3"
    script = [
        call(
            ("calculate", {"expression": python}),
            ("calculate", {"expression": "2025-05-11 - '2025-04-10' + 30"}),
            ("calculate", {"expression": "24"}),
        ),
        call(("calculate", {"expression": "89.99 / 3"})),
        say("About 30.00 each."),
    ]
    result = run(setup, script, tmp_path / "t.jsonl", task="Each of 3 items of 89.99?")
    assert result.ok
    told = [m["content"] for m in setup[1].requests[1]["messages"] if m["role"] == "tool"]
    accepted = "calculate takes one arithmetic expression: numbers with + - * / // % **"
    assert all(accepted in said for said in told)
    assert "'get_order_status' (a Subscript) is not allowed" in told[0]
    assert "cannot call functions or tools" in told[0]
    assert "'2025-05-11' is a date, and with dates (YYYY-MM-DD) it takes three" in told[1]
    assert "nothing to calculate: '24' is a single number" in told[2]
    # And an amount split comes with its cents, which the model cut to 29.99 before.
    done = setup[1].requests[2]["messages"][-1]["content"]
    assert done == "30.00 (rounded to 2 decimals; exactly 29.9966666666667)"


def test_a_required_call_as_a_json_schema_admits_one_call_and_nothing_else(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    from agent.runner import model_client

    pool, server = setup
    base: Policy = pool.policy  # type: ignore[assignment]
    changes = {"call_tools_first": True, "required_as": "json_schema"}
    policy = base.model_copy(update={"run": base.run.model_copy(update=changes)})

    def constrained(refuse: bool) -> Any:
        def answer(request: dict[str, Any]) -> Step:
            if request.get("response_format") and refuse:
                return fail(400, "response_format json_schema is not supported with tools")
            if request.get("response_format") or request.get("tool_choice") == "required":
                # What the schema makes a server write: the call as JSON, alone.
                return say('{"name": "get_current_date", "arguments": {}}')
            return say("It is 2025-05-11.")

        return answer

    for refuse in (False, True):
        server.play(constrained(refuse))
        trace = Trace(tmp_path / f"{refuse}.jsonl")
        try:
            agent = Agent(pool, policy, model_client(policy, server.base_url), trace=trace)
            result = agent.run("What is the date?")
        finally:
            trace.close()
        assert result.ok and result.answer == "It is 2025-05-11."
        first = server.requests[0]
        assert "tool_choice" not in first
        schema = first["response_format"]["json_schema"]["schema"]
        names = {c["properties"]["name"]["const"] for c in schema["anyOf"]}
        assert names == offered(first)
        calc = next(c for c in schema["anyOf"] if c["properties"]["name"]["const"] == "calculate")
        assert calc["properties"]["arguments"]["required"] == ["expression"]
        events = read_trace(tmp_path / f"{refuse}.jsonl")
        ran = [e["tool"] for e in events if e["event"] == "tool_call" and e["ok"]]
        assert ran == ["get_current_date"]
        calls = [e for e in events if e["event"] == "model_call"]
        assert calls[0]["text_calls"] is not None  # read from the content, as JSON
        if refuse:  # refused: "required" instead, said in the trace
            assert server.requests[1].get("tool_choice") == "required"
            assert "response_format" not in server.requests[1]
            assert calls[0]["tool_choice_refused"] == "json_schema"
        else:
            assert calls[0]["tool_choice_refused"] is None


def test_a_call_refused_as_not_offered_stays_refused_on_resume(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # A turn with a hidden tool beside one that waits for a person: the run is stopped
    # at the prompt (Ctrl-C), before the turn's refusals were checkpointed. A resume
    # must not run the hidden call: it was never offered at that step.
    from agent.checkpoints import RunStore

    pool, server = setup
    policy = parse_policy(
        POLICY + '\n[tools.get_current_date]\noffer_when = ["date"]\n', "hid.toml", tmp_path
    )
    lookup = ("get_order_status", {"order_id": "12345"})
    hidden = ("get_current_date", {})
    store = RunStore(tmp_path / "runs.db")

    def stop(prompt: str) -> str:
        raise KeyboardInterrupt

    server.play([call(lookup), call(REFUND, hidden)])
    model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
    trace = Trace(tmp_path / "t.jsonl")
    try:
        approver = Approver(interactive=True, ask=stop)
        agent = Agent(pool, policy, model, approver=approver, trace=trace, store=store)
        first = agent.run("I want a refund for order 12345")
        assert first.reason == "interrupted" and first.run_id
        assert not any("get_current_date" in offered(r) for r in server.requests)
        server.play([say("A person must approve it.")])
        agent = Agent(pool, policy, model, approver=Approver(), trace=trace, store=store)
        assert agent.resume(store.load(first.run_id)).ok
    finally:
        trace.close()
    ran = [e["tool"] for e in read_trace(tmp_path / "t.jsonl") if e["event"] == "tool_call"]
    assert "get_current_date" not in ran  # it ran on resume (not_required, ok) before
    told = [m["content"] for m in server.requests[0]["messages"] if m["role"] == "tool"]
    assert "get_current_date is offered only when the user's message asks for it" in told[-1]


def test_a_tool_that_decides_steers_the_next_call_to_the_answer(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    pool, server = setup
    text = POLICY.replace('after = ["get_order_status", "get_current_date"]', "decides = true")
    policy = parse_policy(text, "decides.toml", tmp_path)

    def go(script: list[Step], name: str) -> list[dict[str, Any]]:
        server.play(script)
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        trace = Trace(tmp_path / name)
        try:
            assert Agent(pool, policy, model, approver=Approver(), trace=trace).run("Return?").ok
        finally:
            trace.close()
        return [e for e in read_trace(tmp_path / name) if e["event"] == "model_call"]

    lookup = ("get_order_status", {"order_id": "12345"})
    calls = go([call(lookup), call(ELIGIBLE), say("No: it closed on 2025-05-10.")], "a.jsonl")
    assert [c["steered"] for c in calls] == [None, None, "decided"]
    assert [r.get("tool_choice") for r in server.requests] == [None, None, "none"]
    steer = server.requests[2]["messages"][-1]["content"]
    assert "Do not call any more tools" in steer
    assert 'A tool result decides it: begin your answer with "No", as it does, then' in steer
    # A verdict that failed (no such order) decides nothing: the run goes on as before.
    unknown = ("check_return_eligibility", {"order_id": "99999"})
    calls = go([call(unknown), say("I could not find order 99999.")], "b.jsonl")
    assert [c["steered"] for c in calls] == [None, None]


def test_a_note_for_a_failed_lookup_does_not_count_as_its_answer_on_resume(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # The lookup fails, and its copy in the same turn is answered with a note (ok,
    # though nothing ran); the run stops on a model error. On resume the note must not
    # count as the lookup's answer: what must follow it stays refused (`after`).
    from agent.checkpoints import RunStore

    pool, server = setup
    policy: Policy = pool.policy  # type: ignore[assignment]
    store = RunStore(tmp_path / "runs.db")
    unknown = ("get_order_status", {"order_id": "99999"})
    server.play([call(unknown, unknown), call(("get_current_date", {})), fail(401, "no")])
    model = ModelClient(model="scripted", base_url=server.base_url, api_key=None, max_retries=0)
    trace = Trace(tmp_path / "t.jsonl")
    try:
        first = Agent(pool, policy, model, approver=Approver(), trace=trace, store=store).run(
            "Can I return order 99999?"
        )
        assert first.reason == "model_error" and first.run_id
        server.play([call(("check_return_eligibility", {"order_id": "99999"})), say("No.")])
        agent = Agent(pool, policy, model, approver=Approver(), trace=trace, store=store)
        assert agent.resume(store.load(first.run_id)).ok
    finally:
        trace.close()
    calls = [e for e in read_trace(tmp_path / "t.jsonl") if e["event"] == "tool_call"]
    assert [(e["tool"], e["approval"]) for e in calls] == [
        ("get_order_status", "not_required"),
        ("get_order_status", "copy_note"),
        ("get_current_date", "not_required"),
        ("check_return_eligibility", "not_yet"),
    ]


def test_tools_sent_all_keeps_the_tool_list_and_narrows_by_choice(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # llama.cpp renders the tools at the prompt's start: a list that changed between
    # calls made it read the whole prompt again. With tools_sent = "all" every call of
    # a run sends the same list, and says in tool_choice / the schema which it may call.
    from agent.runner import model_client

    pool, server = setup
    text = POLICY.replace(
        'after = ["get_order_status", "get_current_date"]',
        'after = ["get_order_status", "get_current_date"]\ndecides = true',
    )
    then = '\n[tools.get_order_status]\nthen = ["get_current_date"]\nthen_when = ["return"]\n'
    base = parse_policy(text + then, "all.toml", tmp_path)

    def go(
        script: Any, name: str, task: str = "Can I still return order 12345?", **changes: Any
    ) -> list[dict[str, Any]]:
        changes = {"call_tools_first": True, "tools_sent": "all", **changes}
        policy = base.model_copy(update={"run": base.run.model_copy(update=changes)})
        server.play(script)
        trace = Trace(tmp_path / name)
        try:
            agent = Agent(pool, policy, model_client(policy, server.base_url), trace=trace)
            assert agent.run(task).ok
        finally:
            trace.close()
        return [e for e in read_trace(tmp_path / name) if e["event"] == "tool_call"]

    def json_call(name: str, args: dict[str, Any]) -> Step:
        return say(json.dumps({"name": name, "arguments": args}))  # as the schema makes it

    support = {"calculate", "read_file", "get_order_status", "get_current_date"}
    ran = go(
        [
            json_call("get_order_status", {"order_id": "12345"}),
            json_call("read_file", {"path": "policy.txt"}),  # in the list, not offered now
            json_call("get_current_date", {}),
            call(
                ELIGIBLE,
                usage={"prompt_tokens": 90, "prompt_tokens_details": {"cached_tokens": 80}},
            ),
            say("No: its window closed on 2025-05-10."),
        ],
        "schema.jsonl",
        required_as="json_schema",
    )
    sent = server.requests
    everything = support | {"check_return_eligibility"}  # not issue_refund: not asked for
    assert [offered(r) for r in sent] == [everything] * 5
    assert all(r["tools"] == sent[0]["tools"] for r in sent)
    admitted = [
        {
            c["properties"]["name"]["const"]
            for c in r["response_format"]["json_schema"]["schema"]["anyOf"]
        }
        if "response_format" in r
        else None
        for r in sent
    ]
    assert admitted == [support, {"get_current_date"}, {"get_current_date"}, None, None]
    assert [r.get("tool_choice") for r in sent] == [None, None, None, None, "none"]
    assert [(e["tool"], e["approval"], e["worker_pid"] is not None) for e in ran] == [
        ("get_order_status", "not_required", True),
        ("read_file", "not_offered", False),  # refused, never run
        ("get_current_date", "not_required", True),
        ("check_return_eligibility", "not_required", True),
    ]
    assert "not run yet: the answer needs get_current_date first" in ran[1]["error_message"]
    models = [e for e in read_trace(tmp_path / "schema.jsonl") if e["event"] == "model_call"]
    assert [m["cached_tokens"] for m in models] == [0, 0, 0, 80, 0]  # what the server said

    # With tool_choice (the default required_as): OpenAI's allowed_tools, required and
    # auto; a server that refuses it gets each call's own tools alone from then on.
    script = [
        call(("get_order_status", {"order_id": "12345"})),
        fail(400, "Invalid tool_choice: allowed_tools is not supported"),
        call(("get_current_date", {})),
        call(ELIGIBLE),
        say("No: its window closed on 2025-05-10."),
    ]
    ran = go(script, "choice.jsonl", task="Is order 12345 eligible?")
    sent = server.requests

    def allowed(choice: Any) -> tuple[str, set[str]] | Any:
        if not isinstance(choice, dict):
            return choice
        assert choice["type"] == "allowed_tools"
        inner = choice["allowed_tools"]
        return inner["mode"], {t["function"]["name"] for t in inner["tools"]}

    assert [allowed(r.get("tool_choice")) for r in sent] == [
        ("required", support),
        ("auto", support),  # refused: HTTP 400
        None,
        None,
        "none",
    ]
    assert [offered(r) for r in sent] == [everything, everything, support, everything, everything]
    assert [e["tool"] for e in ran] == [
        "get_order_status",
        "get_current_date",
        "check_return_eligibility",
    ]
    calls = [e for e in read_trace(tmp_path / "choice.jsonl") if e["event"] == "model_call"]
    assert [c["tool_choice_refused"] for c in calls] == [None, "allowed_tools", None, None]


def test_an_answer_that_turns_a_deciding_verdict_round_is_answered_from_it(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # The small model answered "Yes, you can still return it ... its window closed on
    # 2025-05-10" after the decided steer and again after the recheck: the deciding
    # tool's own result is then the answer, marked so.
    pool, server = setup
    text = POLICY.replace('after = ["get_order_status", "get_current_date"]', "decides = true")
    policy = parse_policy(text, "decides.toml", tmp_path)

    def go(script: list[Step], task: str, name: str, **changes: Any) -> tuple[RunResult, Any]:
        server.play(script)
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        run_policy = policy.model_copy(update={"run": policy.run.model_copy(update=changes)})
        trace = Trace(tmp_path / name)
        try:
            result = Agent(pool, run_policy, model, approver=Approver(), trace=trace).run(task)
        finally:
            trace.close()
        events = read_trace(tmp_path / name)
        verdicts = [e["output"] for e in events if e.get("tool") == ELIGIBLE[0]]
        return result, (events[-1], verdicts)

    def lookup(order: str) -> Step:
        return call(("get_order_status", {"order_id": order}))

    def eligible(order: str) -> Step:
        return call(("check_return_eligibility", {"order_id": order}))

    marked = "(This answer is check_return_eligibility's own result: the model's answer"
    # "Yes" against "No:", twice (the recheck changed nothing).
    wrong = say("Yes, you can still return it; its window closed on 2025-05-10.")
    script = [lookup("12345"), eligible("12345"), wrong, say("Yes, you can.")]
    result, (ended, verdicts) = go(script, "Can I still return order 12345?", "a.jsonl")
    assert result.ok and len(server.requests) == 4
    assert verdicts[0].startswith("No: order 12345 can no longer be returned")
    assert result.answer == f"{verdicts[0]}\n\n{marked} said the opposite of it.)"
    assert ended["answered_from"] == "check_return_eligibility"
    assert ended["answer"] == result.answer and result.answered_from == ended["answered_from"]
    assert result.messages[-1] == {"role": "assistant", "content": result.answer}
    # A no in other words ("can no longer") against "Yes:"; the recheck's reply cannot
    # be had (HTTP 400), so the draft would stand: it is answered from the result too.
    script = [lookup("67890"), eligible("67890"), say("You can no longer return it."), fail(400)]
    result, (ended, verdicts) = go(script, "Am I still able to return order 67890?", "b.jsonl")
    assert verdicts[0].startswith("Yes: order 67890 can still be returned, until 2025-05-31")
    assert result.ok and result.answer.startswith(verdicts[0]) and marked in result.answer
    # No step left for a recheck: answered from the result at once.
    script = [lookup("12345"), eligible("12345"), say("Sure, go ahead.")]
    result, (ended, _) = go(script, "Can I still return order 12345?", "c.jsonl", max_iterations=3)
    assert len(server.requests) == 3 and ended["answered_from"] == "check_return_eligibility"
    # A question asked the other way round: its "Yes" agrees with "No:", nothing is
    # steered or replaced, and the steer does not ask for a "No" first.
    agreed = "Yes, it is too late: its window closed on 2025-05-10."
    script = [lookup("12345"), eligible("12345"), say(agreed)]
    result, (ended, _) = go(script, "Is it too late to return order 12345?", "d.jsonl")
    assert result.answer == agreed and ended["answered_from"] is None
    assert len(server.requests) == 3
    steer = server.requests[2]["messages"][-1]["content"]
    assert "your answer must say what it says" in steer and 'with "No"' not in steer
    # Asked to begin with "No", the small model wrote "No." alone: the reason follows,
    # the deciding result's own words, marked so.
    script = [lookup("12345"), eligible("12345"), say("**No.**")]
    result, (ended, verdicts) = go(script, "Can I still return order 12345?", "f.jsonl")
    reason = verdicts[0].removeprefix("No: ")
    assert result.answer == (
        f"**No.** {reason[0].upper()}{reason[1:]}\n\n(The reason is "
        "check_return_eligibility's own result: the model's answer gave none.)"
    )
    assert ended["answered_from"] == "check_return_eligibility"
    # An answer that agrees, or says neither yes nor no, stands as the model wrote it.
    for said in ("No, it closed on 2025-05-10.", "Its window closed on 2025-05-10."):
        script = [lookup("12345"), eligible("12345"), say(said)]
        result, (ended, _) = go(script, "Can I still return order 12345?", "e.jsonl")
        assert result.answer == said and ended["answered_from"] is None


def test_first_when_asks_for_the_lookup_a_question_names_before_anything_else(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # Asked to look something up first, the small model read the policy instead of the
    # order, and never had what a return or a refund turns on.
    pool, server = setup
    first = '\n[tools.get_order_status]\nfirst_when = ["order"]\nthen_when = ["rule"]\n'
    policy = parse_policy(POLICY + first, "first.toml", tmp_path)

    def go(script: list[Step], task: str, name: str) -> list[dict[str, Any]]:
        server.play(script)
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        trace = Trace(tmp_path / name)
        try:
            assert Agent(pool, policy, model, approver=Approver(), trace=trace).run(task).ok
        finally:
            trace.close()
        return [e for e in read_trace(tmp_path / name) if e["event"] == "tool_call"]

    script = [
        call(("read_file", {"path": "policy.txt"})),  # not now: refused, not run
        call(("get_order_status", {"order_id": "12345"})),
        call(("read_file", {"path": "policy.txt"})),
        say("Returns are accepted within 30 days; it was delivered on 2025-04-10."),
    ]
    ran = go(script, "What are the rules for my Order 12345?", "a.jsonl")
    sent = [(offered(r), r.get("tool_choice")) for r in server.requests]
    assert sent[:2] == [({"get_order_status"}, "required")] * 2  # until it is called
    assert sent[2][1] is None and {"read_file", "calculate"} <= sent[2][0]
    assert [(e["tool"], e["approval"]) for e in ran] == [
        ("read_file", "not_offered"),
        ("get_order_status", "not_required"),
        ("read_file", "not_required"),
    ]
    assert ran[0]["worker_pid"] is None
    assert "the answer needs get_order_status first" in ran[0]["error_message"]
    # A model that looks the order and the policy up at once: both run.
    both = call(("get_order_status", {"order_id": "12345"}), ("read_file", {"path": "policy.txt"}))
    ran = go([both, say("Within 30 days.")], "What are the rules for order 12345?", "c.jsonl")
    assert [(e["tool"], e["approval"], e["ok"]) for e in ran] == [
        ("get_order_status", "not_required", True),
        ("read_file", "not_required", True),
    ]
    # A question that does not mention it, or not its then_when: the model's own choice.
    for task in ("What is the date?", "Order 12345 cost 89.99 for 3. Each?"):
        go([call(("get_current_date", {})), say("2025-05-11.")], task, "b.jsonl")
        assert [r.get("tool_choice") for r in server.requests] == [None, None]
        assert "read_file" in offered(server.requests[0])


def test_through_the_responses_api_a_required_call_is_asked_by_tool_choice(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # The one-call schema is a Chat Completions `response_format`; the Responses API
    # gets `tool_choice: "required"`, as the README says.
    changes = {"call_tools_first": True, "required_as": "json_schema", "api": "responses"}
    script = [call(("get_current_date", {})), say("It is 2025-05-11.")]
    pool, server = setup
    base: Policy = pool.policy  # type: ignore[assignment]
    policy = base.model_copy(update={"run": base.run.model_copy(update=changes)})
    server.play(script)
    model = ModelClient(
        model="scripted",
        base_url=server.base_url,
        api_key=None,
        api="responses",
        required_as="json_schema",
    )
    trace = Trace(tmp_path / "t.jsonl")
    try:
        result = Agent(pool, policy, model, approver=Approver(), trace=trace).run("Date?")
    finally:
        trace.close()
    assert result.ok and server.routes[0].endswith("/responses")
    assert [r.get("tool_choice") for r in server.requests] == ["required", None]
    assert not any("text" in r or "response_format" in r for r in server.requests)


def test_max_calls_ends_a_chain_of_one_tool_with_the_answer(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # The small model chained calculate ("2025-05-11 - 30 days", that minus 30 days,
    # ...) until the step budget steered it: after its most, a call is refused, the tool
    # is offered no more, and the next model call asks for the answer, tools off.
    pool, server = setup
    policy = parse_policy(POLICY + "\n[tools.calculate]\nmax_calls = 2\n", "most.toml", tmp_path)
    server.play(
        [
            call(("calculate", {"expression": "2025-05-11 - 30"})),
            call(("calculate", {"expression": "2025-04-11 - 30"})),
            call(("calculate", {"expression": "2025-03-12 - 30"})),  # refused, never run
            say("It closed on 2025-05-10."),
        ]
    )
    model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
    trace = Trace(tmp_path / "t.jsonl")
    try:
        result = Agent(pool, policy, model, approver=Approver(), trace=trace).run("When?")
    finally:
        trace.close()
    assert result.ok and result.answer == "It closed on 2025-05-10."
    events = read_trace(tmp_path / "t.jsonl")
    ran = [
        (e["approval"], e["worker_pid"] is not None) for e in events if e["event"] == "tool_call"
    ]
    assert ran == [("not_required", True), ("not_required", True), ("max_calls", False)]
    told = server.requests[3]["messages"]
    assert "has run 2 times in this run, its most (max_calls)" in told[-2]["content"]
    assert ["calculate" in offered(r) for r in server.requests] == [True, True, False, False]
    steered = [e["steered"] for e in events if e["event"] == "model_call"]
    assert (
        steered == [None, None, None, "max_calls"] and server.requests[3]["tool_choice"] == "none"
    )


def test_an_action_asked_for_is_done_and_not_decided_by_a_verdict(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # "Refund order 12345 in full": the small model took check_return_eligibility, was
    # steered to answer by its verdict, said "eligible" and never asked for the refund.
    pool, server = setup
    text = POLICY.replace(
        '"get_order_status", "get_current_date"]',
        '"get_order_status"]\ndecides = true\nask_when_ready = true',
    )
    policy = parse_policy(text, "act.toml", tmp_path)

    def go(script: list[Step], task: str, name: str) -> list[dict[str, Any]]:
        server.play(script)
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        trace = Trace(tmp_path / name)
        try:
            assert Agent(pool, policy, model, approver=Approver(), trace=trace).run(task).ok
        finally:
            trace.close()
        return read_trace(tmp_path / name)

    lookup = ("get_order_status", {"order_id": "12345"})
    # Asked for the refund: once the order answered, the refund is asked for alone; the
    # verdict beside it decides nothing; the refusal by a person steers to the answer.
    script = [call(lookup), call(REFUND, ELIGIBLE), say("A person must approve the refund.")]
    events = go(script, "Refund order 12345 in full, please.", "a.jsonl")
    sent = [(offered(r), r.get("tool_choice")) for r in server.requests]
    assert sent[1] == ({"issue_refund"}, "required")
    assert sent[2][1] == "none"
    ran = [(e["tool"], e["approval"]) for e in events if e["event"] == "tool_call"]
    assert ran[1:] == [("issue_refund", "denied_no_tty"), (ELIGIBLE[0], "not_required")]
    assert [e["steered"] for e in events if e["event"] == "model_call"] == [None, None, "acted"]
    assert "issue_refund needs a person's approval" in str(server.requests[2]["messages"][-3:])
    # Asked whether it could be had ("Can I get a refund ...?"): the deciding tool is
    # asked for once the order answered (ask_when_ready), and its verdict answers.
    script = [call(lookup), call(ELIGIBLE), say("No: its window closed on 2025-05-10.")]
    events = go(script, "Can I get a refund for order 12345?", "b.jsonl")
    sent = [(offered(r), r.get("tool_choice")) for r in server.requests]
    assert sent[0][1] is None  # not before what it runs after has answered
    assert sent[1] == ({"check_return_eligibility"}, "required") and sent[2][1] == "none"
    assert [e["steered"] for e in events if e["event"] == "model_call"][-1] == "decided"
    assert not any(e.get("tool") == "issue_refund" for e in events)


def test_a_refusal_after_a_failure_and_an_unfounded_amount_get_a_second_look(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # The small model answered "no order with id '99999'" with "I can't assist with
    # that", and an order's total of 18.4 (in another shop) as "$1.31".
    server = setup[1]
    unknown = call(("get_order_status", {"order_id": "99999"}))
    refusal, found = say("I can't assist with that."), say("There is no order 99999.")
    result = run(setup, [unknown, refusal, found], tmp_path / "a.jsonl", task="Order 99999?")
    assert result.ok and result.answer == "There is no order 99999."
    sent = server.requests[2]
    assert sent["tool_choice"] == "none" and "no order with id '99999'" in str(sent["messages"])
    assert "I can't assist" in str(sent["messages"][-2:])  # the draft, shown once
    assert [m["content"] for m in result.messages[-1:]] == ["There is no order 99999."]
    events = read_trace(tmp_path / "a.jsonl")
    assert [e["steered"] for e in events if e["event"] == "model_call"] == [None, None, "refusal"]
    # It refuses again: the lookup's own failure is the answer, marked so.
    script = [unknown, refusal, say("Sorry, I cannot help with that.")]
    result = run(setup, script, tmp_path / "b.jsonl", task="Order 99999?")
    assert result.answer is not None and result.answered_from == "get_order_status"
    assert result.answer.startswith("get_order_status failed: no order with id '99999'")
    # With no failure in the run, a refusal stands, asked nothing more.
    result = run(setup, [refusal], tmp_path / "c.jsonl", task="Hack the shop.")
    assert result.answer == "I can't assist with that." and len(server.requests) == 1
    # An amount no result holds is sent back, tools on; a founded one is not.
    lookup = call(("get_order_status", {"order_id": "12345"}))
    script = [lookup, say("The total was $1.31."), say("The total was 89.99.")]
    result = run(setup, script, tmp_path / "d.jsonl", task="Total of order 12345?")
    assert result.answer == "The total was 89.99."
    again = server.requests[2]
    assert again.get("tool_choice") is None and "calculate" in offered(again)
    assert "Your answer gives $1.31, which no tool result" in again["messages"][-1]["content"]
    divide = call(("calculate", {"expression": "89.99 / 3"}))
    for first, said in ((lookup, "It was $89.99, for 3 items."), (divide, "About 30.00 each.")):
        result = run(setup, [first, say(said)], tmp_path / "e.jsonl", task="Order 12345?")
        assert result.answer == said and len(server.requests) == 2


def test_the_lookup_a_question_is_asked_first_failing_steers_to_the_answer(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # After "no order with id '99999'" the small model read the policy, calculated,
    # took the date and answered "Yes, you can return order 99999 within 30 days".
    pool, server = setup
    first = '\n[tools.get_order_status]\nfirst_when = ["order"]\n'
    policy = parse_policy(POLICY + first, "failed.toml", tmp_path)

    def go(order: str) -> list[Any]:
        server.play([call(("get_order_status", {"order_id": order})), say("Done.")])
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        trace = Trace(tmp_path / "t.jsonl")
        try:
            agent = Agent(pool, policy, model, approver=Approver(), trace=trace)
            assert agent.run(f"Can I return order {order}?").ok
        finally:
            trace.close()
        return [r.get("tool_choice") for r in server.requests]

    assert go("99999") == ["required", "none"]
    told = server.requests[1]["messages"][-1]["content"]
    assert "Do not call any more tools" in told and "order 99999?" in told
    assert go("12345") == ["required", None]  # found: the run goes on


def test_an_answer_cut_off_after_a_verdict_is_the_verdict(
    setup: tuple[Pool, ScriptedModelServer], tmp_path: Path
) -> None:
    # Steered to answer after "No: order 12345 can no longer be returned; ...", the
    # small model wrote 512 tokens and was cut off: the verdict is the answer, marked.
    pool, server = setup
    text = POLICY.replace('after = ["get_order_status", "get_current_date"]', "decides = true")
    policy = parse_policy(text, "cut.toml", tmp_path)
    lookup = call(("get_order_status", {"order_id": "12345"}))
    rambling = say("No, because " + "very " * 40, finish_reason="length")

    def go(script: list[Step]) -> RunResult:
        server.play(script)
        model = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        return Agent(pool, policy, model, approver=Approver()).run("Can I return order 12345?")

    result = go([lookup, call(ELIGIBLE), rambling])
    assert result.ok and result.answered_from == "check_return_eligibility"
    assert result.answer is not None
    assert result.answer.startswith("No: order 12345 can no longer be returned")
    assert result.answer.endswith("the model's answer was cut off at its output limit.)")
    # A cut answer that no verdict steered stays a stop.
    assert go([rambling]).reason == "length"
