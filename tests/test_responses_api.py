"""The Responses API (`--api responses`, `[run] api`): the real `openai` client's
`responses.create` over real HTTP to the scripted loopback server, with the same
guardrails as Chat Completions, and a hostile server's bodies turned into clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.approval import Approver
from agent.audit import Trace, read_trace
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, fail, say
from agent.steering import INSTRUCTION
from policies import parse_policy
from sandbox import Pool
from sandbox.errors import RunError
from tools import Registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "tools" / "data" / "docs"
POLICY = f"""
[defaults.settings]
today = "2025-05-11"

[tools.read_file]
root = "{DOCS}"

[run]
model = "scripted"
api = "responses"
max_retries = 0
max_output_tokens = 300
request_timeout_s = 30
"""
LOOKUP = ("get_order_status", {"order_id": "12345"})


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    policy = parse_policy(POLICY, "test.toml", tmp_path)
    with Pool(policy, registry=Registry.default()) as pool:
        yield pool


def agent_run(
    pool: Pool, server: ScriptedModelServer, trace_path: Path, task: str
) -> tuple[Any, list[dict]]:
    policy = pool.policy
    model = ModelClient(
        model="scripted",
        base_url=server.base_url,
        api_key=None,
        max_retries=0,
        max_output_tokens=policy.run.max_output_tokens,
        api=policy.run.api,
    )
    trace = Trace(trace_path)
    try:
        result = Agent(pool, policy, model, approver=Approver(), trace=trace).run(task)
    finally:
        trace.close()
    return result, read_trace(trace_path)


def test_a_run_goes_through_responses_create_with_the_conversation_as_items(
    pool: Pool, tmp_path: Path
) -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 7}
    script = [call(LOOKUP, usage=usage), say("Delivered on 2025-04-10.", usage=usage)]
    with ScriptedModelServer(script) as server:
        result, events = agent_run(pool, server, tmp_path / "t.jsonl", "When did 12345 arrive?")
    assert result.ok and result.answer == "Delivered on 2025-04-10."
    assert server.routes == ["/v1/responses", "/v1/responses"]
    first, second = server.requests
    assert first["store"] is False and first["max_output_tokens"] == 300
    assert "messages" not in first and "tool_choice" not in first
    tools = {t["name"]: t for t in first["tools"]}
    assert tools["get_order_status"]["type"] == "function"
    assert tools["get_order_status"]["strict"] is False
    assert tools["get_order_status"]["parameters"]["required"] == ["order_id"]
    roles = [item.get("role") for item in first["input"]]
    assert roles == ["system", "user"]
    assert first["input"][1]["content"] == "When did 12345 arrive?"
    # The model's call and its result go back as items that share the call's id.
    called, answered = second["input"][2:]
    assert called["type"] == "function_call" and called["name"] == "get_order_status"
    assert json.loads(called["arguments"]) == {"order_id": "12345"}
    assert answered["type"] == "function_call_output"
    assert answered["call_id"] == called["call_id"] and "2025-04-10" in answered["output"]
    models = [e for e in events if e["event"] == "model_call"]
    assert [(m["input_tokens"], m["output_tokens"]) for m in models] == [(120, 7), (120, 7)]
    (tool,) = [e for e in events if e["event"] == "tool_call"]
    assert tool["ok"] and tool["tool"] == "get_order_status"


def test_text_calls_and_steering_work_the_same_through_responses(
    pool: Pool, tmp_path: Path
) -> None:
    as_text = say('```json\n{"name": "get_order_status", "arguments": {"order_id": "12345"}}\n```')
    script = [as_text, call(LOOKUP), say("It was delivered on 2025-04-10.")]
    with ScriptedModelServer(script) as server:
        result, events = agent_run(pool, server, tmp_path / "t.jsonl", "When did 12345 arrive?")
    assert result.ok and result.answer == "It was delivered on 2025-04-10."
    models = [e for e in events if e["event"] == "model_call"]
    assert models[0]["text_calls"] == "fenced_json"
    assert models[2]["steered"] == "repeated_call"
    tools = [e for e in events if e["event"] == "tool_call"]
    assert tools[0]["ok"] and tools[1]["approval"] == "repeat_note"
    steered = server.requests[2]
    assert steered["tool_choice"] == "none"
    assert INSTRUCTION in steered["input"][-1]["content"]
    assert "tool_choice" not in server.requests[1]


def complete(server: ScriptedModelServer, step: Step, **kwargs: Any) -> Any:
    server.play([step])
    client = ModelClient(
        model="m", base_url=server.base_url, api_key=None, api="responses", **kwargs
    )
    tools = [{"type": "function", "function": {"name": "get_order_status", "parameters": {}}}]
    return client.complete([{"role": "user", "content": "q"}], tools, 20)


def raw(body: Any) -> Step:
    return Step(raw=json.dumps(body).encode())


def item_call(**fields: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": "c1", "name": "get_order_status", **fields}


HOSTILE = [
    (Step(raw=b"<html>busy</html>"), "not JSON"),
    (raw([1, 2]), "not a response object"),
    (raw({"status": "completed", "output": {"type": "message"}}), "without an output list"),
    (raw({"output": ["text"]}), "output item 0 that is not an object (str)"),
    (raw({"output": [{"type": "message", "content": 7}]}), "content is not a list"),
    (
        raw({"output": [{"type": "web_search_call"}, {"type": None}]}),
        "only with output items of unknown types (None, web_search_call)",
    ),
    (
        raw({"status": "failed", "error": {"message": "the model crashed"}, "output": []}),
        "did not complete its response (status 'failed'): the model crashed",
    ),
    (raw({"status": "queued", "output": []}), "status 'queued'"),
    (
        raw(
            {
                "output": [
                    {"type": "message", "content": [{"type": "output_text", "text": "\ud800"}]}
                ]
            }
        ),
        "",
    ),
]


def test_a_hostile_responses_server_gets_clear_errors_never_a_traceback() -> None:
    with ScriptedModelServer([]) as server:
        for step, said in HOSTILE[:-1]:
            with pytest.raises(RunError) as caught:
                complete(server, step)
            assert said in str(caught.value), (step.raw, str(caught.value))
        # A lone surrogate becomes U+FFFD (no file or pipe could take it).
        turn = complete(server, HOSTILE[-1][0])
        assert turn.message["content"] == "\ufffd"
        # No usage: counted as zero, as through Chat Completions; the answer stands.
        turn = complete(server, raw({"output": [{"type": "message", "content": "hi"}]}))
        assert (turn.usage.input_tokens, turn.usage.output_tokens) == (0, 0)
        assert turn.message["content"] == "hi" and turn.finish_reason == "stop"
        # Unknown items beside real ones are passed over; broken calls are well-formed
        # calls (a name that is not a string becomes "", the sandbox's unknown_tool).
        body = {
            "status": "completed",
            "output": [
                {"type": "reasoning", "summary": []},
                {"type": "file_search_call"},
                item_call(arguments={"order_id": "12345"}),
                item_call(name=["x"], arguments=None),
                {"type": "function_call", "name": "get_order_status", "arguments": "{}"},
            ],
            "usage": {"input_tokens": "9", "output_tokens": -3},
        }
        turn = complete(server, raw(body))
        calls = turn.message["tool_calls"]
        assert [c["function"]["name"] for c in calls] == [
            "get_order_status",
            "",
            "get_order_status",
        ]
        assert json.loads(calls[0]["function"]["arguments"]) == {"order_id": "12345"}
        assert calls[1]["function"]["arguments"] == "{}"
        assert len({c["id"] for c in calls}) == 3  # each result answers one call
        assert turn.finish_reason == "tool_calls" and turn.usage.input_tokens == 0
        # Cut off at max_output_tokens: the loop's `length`.
        cut = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
        turn = complete(server, raw({**cut, "output": []}))
        assert turn.finish_reason == "length"


def test_only_calls_the_model_finished_run_each_under_its_own_id() -> None:
    """A function_call item still `in_progress` or `incomplete` (cut off) is not a call
    the model made: it never runs. Ids a server repeats stay apart even where a renamed
    one would meet another (each tool result answers exactly one call)."""
    cut = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    with ScriptedModelServer([]) as server:
        for status in ("incomplete", "in_progress"):
            body = {**cut, "output": [item_call(arguments='{"order_id": "1"}', status=status)]}
            turn = complete(server, raw(body))
            assert "tool_calls" not in turn.message and turn.finish_reason == "length", turn
        done = item_call(arguments="{}", status="completed")
        turn = complete(server, raw({"output": [done, item_call(status="incomplete")]}))
        assert len(turn.message["tool_calls"]) == 1
        ids = ["c_2", "c", "c"]
        turn = complete(server, raw({"output": [item_call(call_id=i) for i in ids]}))
        got = [c["id"] for c in turn.message["tool_calls"]]
        assert len(set(got)) == 3 and got[:2] == ["c_2", "c"], got


def test_retries_and_a_server_without_responses_say_what_happened() -> None:
    with ScriptedModelServer([]) as server:
        server.play([fail(503, headers={"Retry-After": "0"}), say("ok")])
        client = ModelClient(model="m", base_url=server.base_url, api_key=None, api="responses")
        assert (
            client.complete([{"role": "user", "content": "q"}], [], 20).message["content"] == "ok"
        )
        assert server.routes == ["/v1/responses", "/v1/responses"]
    with ScriptedModelServer([say("never")], responses=False) as chat_only:
        client = ModelClient(
            model="m", base_url=chat_only.base_url, api_key=None, api="responses", max_retries=0
        )
        with pytest.raises(RunError) as caught:
            client.complete([{"role": "user", "content": "q"}], [], 20)
    assert "(404)" in str(caught.value) and "/v1/responses" in str(caught.value)
    with pytest.raises(ValueError, match="api must be one of chat, responses"):
        ModelClient(model="m", base_url=None, api_key="k", api="soap")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=base | env,
        stdin=subprocess.DEVNULL,
    )


def test_the_command_line_chooses_the_api_by_flag_or_policy(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[run]\napi = "responses"\n')
    with ScriptedModelServer(lambda request: say("Hello.")) as server:
        env = {"OPENAI_BASE_URL": server.base_url}
        by_flag = cli("run", "hi", "--api", "responses", env=env)
        by_policy = cli("run", "hi", "--policy", str(policy), env=env)
        default = cli("run", "hi", env=env)
        overridden = cli("run", "hi", "--policy", str(policy), "--api", "chat", env=env)
        bad = cli("run", "hi", "--api", "soap", env=env)
    for proc in (by_flag, by_policy, default, overridden):
        assert proc.returncode == 0 and proc.stdout.strip() == "Hello.", proc.stderr
    assert server.routes == [
        "/v1/responses",
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/chat/completions",
    ]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("--api: input should be 'chat' or 'responses' (got 'soap')")
    )
