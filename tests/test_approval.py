"""What a person approves is what runs: the model's text is read once and strictly, the
prompt shows the validated object, the pool gets that object, and the trace and the
approval name its hash. Hostile arguments come from a scripted model server over HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.approval import Approver
from agent.audit import Trace, read_trace
from agent.binding import bind, canonical_json
from agent.checkpoints import RunStore
from agent.loop import Agent, RunResult
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, say
from policies import parse_policy
from sandbox import Pool
from tools import ArgumentError, Registry
from tools.arguments import parse_object

REFUND_TOOLS = '''
import json
from tools import tool

@tool
def pay(order_id: str, amount: float, note: str = "") -> str:
    """Pay money out; says exactly what it was given."""
    return json.dumps({"order_id": order_id, "amount": amount, "note": note}, sort_keys=True)
'''

POLICY = """
[tools.pay]
requires_approval = true

[run]
model = "scripted"
max_retries = 0
"""

# The payload: valid JSON to json.loads, whose second "amount" wins.
SMUGGLED = '{"order_id": "12345",\n "amount": 1.00\n,"amount": 89.99\r}   '


class Asker:
    """A person at a terminal: records each prompt, answers from a list."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.answers.pop(0)


def run_agent(
    tmp_path: Path, script: list[Step], approver: Approver, store: RunStore | None = None
) -> tuple[RunResult, list[dict[str, Any]]]:
    tools_file = tmp_path / "pay_tools.py"
    tools_file.write_text(REFUND_TOOLS)
    registry = Registry.default()
    registry.load(str(tools_file))
    policy = parse_policy(POLICY, "test.toml", tmp_path)
    trace_path = tmp_path / "trace.jsonl"
    with ScriptedModelServer(script) as server, Pool(policy, registry=registry, size=2) as pool:
        client = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        trace = Trace(trace_path)
        try:
            agent = Agent(pool, policy, client, approver=approver, trace=trace, store=store)
            result = agent.run("refund order 12345")
        finally:
            trace.close()
    return result, [e for e in read_trace(trace_path) if e["event"] == "tool_call"]


def test_a_repeated_key_is_bad_arguments_and_nobody_is_asked(tmp_path: Path) -> None:
    asker = Asker("y")
    script = [call(("pay", SMUGGLED)), say("done")]
    result, calls = run_agent(tmp_path, script, Approver(interactive=True, ask=asker))
    assert result.ok
    assert asker.prompts == []  # nothing that could run was shown
    (event,) = calls
    assert event["error_kind"] == "bad_arguments" and event["worker_pid"] is None
    assert 'the key "amount" appears more than once' in event["error_message"]
    assert event["approved_sha256"] is None and event["arguments_sha256"] is None


@pytest.mark.parametrize(
    "text",
    [
        SMUGGLED,
        '{"order_id": "1", "amount": 1, "am\\u006funt": 2}',  # the same key, escaped
        '{"a": {"b": 1, "b": 2}}',
        '{"a": [{"x": 1}, {"x": 1, "x": 2}]}',
        '{"a": [[[{"deep": {"k": 1, "k": 1}}]]]}',
    ],
)
def test_repeated_keys_at_any_depth_are_refused(text: str) -> None:
    with pytest.raises(ArgumentError, match="appears more than once"):
        parse_object(text)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"amount": NaN}', "NaN is not a JSON number"),
        ('{"amount": -Infinity}', "-Infinity is not a JSON number"),
        ('{"amount": 1e400}', "too large for a number"),
        ('{"order_id": "\\ud800"}', "lone surrogate"),
    ],
)
def test_what_cannot_be_shown_or_sent_is_refused_not_a_traceback(text: str, said: str) -> None:
    with pytest.raises(ArgumentError, match=said):
        parse_object(text)
    with Pool(registry=Registry.default(), size=1) as pool:
        result = pool.call("issue_refund", text)
    assert result.error is not None and result.error.kind == "bad_arguments"
    assert said in result.error.message


def test_the_prompt_shows_the_object_that_runs_and_the_trace_names_its_hash(
    tmp_path: Path,
) -> None:
    # Spaces, CR/LF, a number sent as a string where a string is wanted, and a
    # null for a default: the person sees the values after validation.
    raw = '{\r\n"amount" :\t89.99, "order_id": 12345,\n "note": null}'
    asker = Asker("y")
    result, calls = run_agent(
        tmp_path, [call(("pay", raw)), say("done")], Approver(interactive=True, ask=asker)
    )
    assert result.ok
    (prompt,) = asker.prompts
    shown = [line.strip() for line in prompt.splitlines()]
    assert (
        "amount   = 89.99" in shown and 'order_id = "12345"' in shown and 'note     = ""' in shown
    )
    (event,) = calls
    ran = json.loads(event["output"])  # what the tool itself received
    assert ran == {"amount": 89.99, "order_id": "12345", "note": ""}
    assert json.loads(event["arguments"]) == ran
    digest = hashlib.sha256(event["arguments"].encode()).hexdigest()
    assert event["arguments"] == canonical_json(ran)
    assert event["arguments_sha256"] == event["approved_sha256"] == digest
    assert f"sha256 {digest[:16]}" in prompt
    assert event["approval"] == "approved_tty"


def test_hostile_values_are_shown_escaped_and_whole(tmp_path: Path) -> None:
    long_note = "x" * 5000 + "THE END"
    hostile = "12345\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\r\u202e99.98\u2066\x9b31m\u200b"
    args = {"order_id": hostile, "amount": 1.0, "note": long_note}
    asker = Asker("n")
    _, calls = run_agent(
        tmp_path, [call(("pay", args)), say("ok")], Approver(interactive=True, ask=asker)
    )
    (prompt,) = asker.prompts
    for raw in ("\x1b", "\x07", "\r", "\u202e", "\u2066", "\x9b", "\u200b"):
        assert raw not in prompt
    assert "\\u202e99.98" in prompt and "\\x9b31m" in prompt and "\\u001b[2J" in prompt
    assert long_note in prompt and "(5,007 characters, all shown)" in prompt
    lines = prompt.strip("\n").split("\n")
    assert len(lines) == 6  # header, one line per key, order_id in ASCII, the question
    assert '(in ASCII: "12345\\u001b]52;c;' in prompt
    (event,) = calls
    assert event["error_kind"] == "denied" and event["approval"] == "denied_tty"
    assert event["approved_sha256"] == event["arguments_sha256"]


def test_a_flag_approval_names_the_hash_too(tmp_path: Path) -> None:
    _, calls = run_agent(
        tmp_path,
        [call(("pay", {"order_id": "1", "amount": 2, "note": None})), say("ok")],
        Approver(approve={"pay"}),
    )
    (event,) = calls
    assert event["approval"] == "approved_flag" and event["ok"]
    assert event["approved_sha256"] == hashlib.sha256(event["arguments"].encode()).hexdigest()


def test_validation_that_does_not_hold_still_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "drifting.py"
    source.write_text(
        "from pydantic import BaseModel, field_validator\n"
        "from tools import tool\n\n"
        "class Word(BaseModel):\n"
        "    text: str\n\n"
        "    @field_validator('text')\n"
        "    @classmethod\n"
        "    def louder(cls, value: str) -> str:\n"
        "        return value + '!'\n\n"
        "@tool\ndef drift(word: Word) -> str:\n"
        "    return word.text\n"
    )
    registry = Registry()
    registry.load(str(source))
    with pytest.raises(ArgumentError, match="what runs could differ from what is approved"):
        bind(registry.get("drift"), '{"word": {"text": "yes"}}')


def test_on_resume_a_call_in_flight_runs_only_with_the_arguments_that_started(
    tmp_path: Path,
) -> None:
    """The checkpoint keeps the canonical arguments a call started with; a resume whose
    conversation now reads otherwise refuses to run it, and asks nobody."""
    tools_file = tmp_path / "pay_tools.py"
    tools_file.write_text(REFUND_TOOLS)
    registry = Registry.default()
    registry.load(str(tools_file))
    policy = parse_policy(POLICY, "test.toml", tmp_path)
    store = RunStore(tmp_path / "runs.db")

    def in_flight(model_text: str, started: str) -> str:
        turn = call(("pay", model_text)).message
        messages = [{"role": "user", "content": "refund"}, turn]
        run_id = store.start("refund", "scripted", messages[:1])
        call_id = turn["tool_calls"][0]["id"]
        store.step(run_id, messages, 1, 0.0, [(call_id, "pay", model_text)])
        store.call_started(run_id, call_id, started)
        return run_id

    approved = canonical_json({"amount": 1.0, "note": "", "order_id": "12345"})
    same = in_flight('{"order_id": "12345", "amount": 1, "note": null}', approved)
    changed = in_flight('{"order_id": "12345", "amount": 89.99, "note": null}', approved)
    tools_seen: list[str] = []

    def echo(request: dict[str, Any]) -> Step:
        tools = [m["content"] for m in request["messages"] if m["role"] == "tool"]
        tools_seen.append(tools[-1])
        return say("ok")

    trace_path = tmp_path / "trace.jsonl"
    with ScriptedModelServer(echo) as server, Pool(policy, registry=registry, size=1) as pool:
        client = ModelClient(model="scripted", base_url=server.base_url, api_key=None)
        for run_id in (same, changed):
            asker = Asker("y")
            trace = Trace(trace_path)
            agent = Agent(
                pool,
                policy,
                client,
                store=store,
                trace=trace,
                approver=Approver(interactive=True, ask=asker),
            )
            agent.resume(store.load(run_id))
            trace.close()
            if run_id == same:
                (prompt,) = asker.prompts
                digest = hashlib.sha256(approved.encode()).hexdigest()
                assert f"sha256 {digest[:16]}" in prompt
            else:
                assert asker.prompts == []
    first, second = (e for e in read_trace(trace_path) if e["event"] == "tool_call")
    assert first["ok"] and json.loads(first["output"])["amount"] == 1.0
    assert first["arguments"] == approved
    assert first["approved_sha256"] == hashlib.sha256(approved.encode()).hexdigest()
    assert second["error_kind"] == "denied" and second["approval"] == "denied_changed"
    assert "89.99" in second["error_message"] and second["worker_pid"] is None
    assert "not run again" in tools_seen[1]


def test_look_alike_letters_and_combining_marks_are_shown_in_ascii_too(tmp_path: Path) -> None:
    # A Cyrillic "о" and a combining stroke through the 1: on screen "1.00" and
    # "order", which they are not.
    args = {"order_id": "12345", "amount": 1.0, "note": "1\u0336.00 \u043erder"}
    asker = Asker("n")
    run_agent(tmp_path, [call(("pay", args)), say("ok")], Approver(interactive=True, ask=asker))
    (prompt,) = asker.prompts
    assert '(in ASCII: "1\\u0336.00 \\u043erder")' in prompt
    assert prompt.count("(in ASCII:") == 1  # only the value that needs it
