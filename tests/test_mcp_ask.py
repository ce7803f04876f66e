"""`mcp serve --ask`: a call that needs approval asks the person at the client through
MCP elicitation, with the official client SDK in memory on the server object (both
protocol generations) and a real pool. Only an explicit yes to exactly the arguments
shown runs the call; every other answer, or none, denies it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import shared

anyio = pytest.importorskip("anyio")
pytest.importorskip("mcp")

import mcp_types as types  # noqa: E402
from mcp import Client  # noqa: E402

from agent.approval import Approver  # noqa: E402
from agent.audit import Trace, read_trace  # noqa: E402
from agent.integrations.mcp_serve import ToolService, build_server  # noqa: E402
from policies import load_policy  # noqa: E402
from sandbox import Pool  # noqa: E402
from tools import Registry  # noqa: E402

REFUND = {"order_id": "12345", "amount": 89.99}
POLICY = load_policy(None)  # the built-in: issue_refund needs approval


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    with Pool(POLICY, registry=Registry.default(), size=1, spares=1) as p:
        yield shared(p)


def serve(
    pool: Pool,
    trace_path: Any,
    answer: Any,
    *,
    ask: bool = True,
    mode: str = "legacy",
    approve: set[str] | None = None,
    timeout_s: float = 60.0,
) -> tuple[types.CallToolResult, list[str]]:
    """One issue_refund call; `answer(params)` is the client's elicitation callback
    (None: a client without one). Returns the result and the messages it was asked."""
    asked: list[str] = []

    async def callback(ctx: Any, params: types.ElicitRequestParams) -> Any:
        asked.append(params.message)
        assert params.requested_schema["required"] == ["allow"]
        return await answer(params)

    trace = Trace(trace_path)
    service = ToolService(
        pool,
        POLICY,
        Approver(approve or set()),
        trace,
        ask_client=ask,
        ask_timeout_s=timeout_s,
    )

    async def use() -> types.CallToolResult:
        kw = {"elicitation_callback": callback} if answer is not None else {}
        async with Client(build_server(service), mode=mode, **kw) as client:
            return await client.call_tool("issue_refund", REFUND)

    try:
        return anyio.run(use), asked
    finally:
        trace.close()


def accept(content: dict[str, Any]) -> Any:
    async def answer(params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content=content)

    return answer


def recorded(trace_path: Any) -> dict[str, Any]:
    [event] = [e for e in read_trace(trace_path) if e["event"] == "tool_call"]
    return event


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_yes_to_the_arguments_shown_runs_exactly_those(
    pool: Pool, tmp_path: Any, mode: str
) -> None:
    result, asked = serve(pool, tmp_path / "t.jsonl", accept({"allow": True}), mode=mode)
    assert not result.is_error, result.content[0].text
    event = recorded(tmp_path / "t.jsonl")
    assert event["approval"] == "approved_client"
    assert event["approved_sha256"] == event["arguments_sha256"]
    [message] = asked
    assert "issue_refund" in message and event["arguments_sha256"][:16] in message
    assert "12345" in message and "89.99" in message


@pytest.mark.parametrize(
    "answer",
    [
        accept({"allow": False}),
        accept({"allow": "true"}),  # not the boolean: not a yes
        accept({}),
        accept({"allow": 1}),
    ],
)
def test_anything_but_an_explicit_yes_denies(pool: Pool, tmp_path: Any, answer: Any) -> None:
    result, asked = serve(pool, tmp_path / "t.jsonl", answer)
    assert result.is_error and result.content[0].text.startswith("denied: "), result
    assert "the person asked said no" in result.content[0].text
    assert recorded(tmp_path / "t.jsonl")["approval"] == "denied_client"
    assert len(asked) == 1


@pytest.mark.parametrize("action", ["decline", "cancel"])
def test_a_decline_or_cancel_denies(pool: Pool, tmp_path: Any, action: str) -> None:
    async def answer(params: Any) -> types.ElicitResult:
        return types.ElicitResult(action=action)

    result, _ = serve(pool, tmp_path / "t.jsonl", answer)
    assert result.is_error and "the person asked said no" in result.content[0].text
    assert recorded(tmp_path / "t.jsonl")["approval"] == "denied_client"


def test_a_client_that_cannot_be_asked_is_denied_and_told_how(pool: Pool, tmp_path: Any) -> None:
    result, _ = serve(pool, tmp_path / "t.jsonl", None)
    text = result.content[0].text
    assert result.is_error and "this client cannot be asked" in text, text
    assert "--approve issue_refund" in text
    assert recorded(tmp_path / "t.jsonl")["approval"] == "denied_client_unable"


def test_no_answer_in_time_denies(pool: Pool, tmp_path: Any) -> None:
    async def never(params: Any) -> types.ElicitResult:
        await anyio.sleep_forever()
        raise AssertionError

    result, asked = serve(pool, tmp_path / "t.jsonl", never, timeout_s=0.5)
    assert result.is_error and "no one answered in time" in result.content[0].text
    assert recorded(tmp_path / "t.jsonl")["approval"] == "denied_client_timeout"
    assert len(asked) == 1


def test_without_ask_the_client_is_never_asked(pool: Pool, tmp_path: Any) -> None:
    result, asked = serve(pool, tmp_path / "t.jsonl", accept({"allow": True}), ask=False)
    assert asked == []
    assert result.is_error and "--ask" in result.content[0].text
    assert recorded(tmp_path / "t.jsonl")["approval"] == "denied_no_tty"


def test_a_flag_that_allows_the_tool_asks_nobody(pool: Pool, tmp_path: Any) -> None:
    result, asked = serve(
        pool, tmp_path / "t.jsonl", accept({"allow": False}), approve={"issue_refund"}
    )
    assert asked == [] and not result.is_error
    assert recorded(tmp_path / "t.jsonl")["approval"] == "approved_flag"


def test_a_2026_answer_counts_only_for_the_arguments_it_was_asked_about(
    pool: Pool, tmp_path: Any
) -> None:
    """The 2026 era asks by result and the client sends the call again: a yes carried
    with other arguments, with a state this server did not mint, or with none, runs
    nothing."""
    trace = Trace(tmp_path / "t.jsonl")
    service = ToolService(pool, POLICY, Approver(), trace, ask_client=True)
    yes = {"approve": types.ElicitResult(action="accept", content={"allow": True})}

    async def use() -> list[Any]:
        async with Client(build_server(service), mode="auto") as client:
            session = client.session
            asked = await session.call_tool("issue_refund", REFUND, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult), asked
            [question] = asked.input_requests.values()
            assert "89.99" in question.params.message
            state = asked.request_state
            more = {**REFUND, "amount": 8999.0}
            return [
                await session.call_tool(
                    "issue_refund", more, input_responses=yes, request_state=state
                ),
                await session.call_tool(
                    "issue_refund",
                    REFUND,
                    input_responses=yes,
                    request_state=state[:-1] + ("1" if state[-1] == "0" else "0"),
                ),
                await session.call_tool("issue_refund", REFUND, input_responses=yes),
                await session.call_tool(
                    "issue_refund", REFUND, input_responses=yes, request_state=state
                ),
            ]

    try:
        *refused, allowed = anyio.run(use)
    finally:
        trace.close()
    for result in refused:
        assert result.is_error and result.content[0].text.startswith("denied: "), result
        assert "the answer given was for other arguments" in result.content[0].text
    assert not allowed.is_error, allowed.content[0].text
    events = [e for e in read_trace(tmp_path / "t.jsonl") if e["event"] == "tool_call"]
    assert [e["approval"] for e in events] == ["denied_client_changed"] * 3 + ["approved_client"]
    assert events[0]["arguments"] == '{"amount":8999.0,"order_id":"12345"}'


def test_a_2026_yes_runs_one_call_only(pool: Pool, tmp_path: Any) -> None:
    """The state of a question answered yes cannot be sent again for a second run of
    the same call, not even twice at once: one question, one run."""
    trace = Trace(tmp_path / "t.jsonl")
    service = ToolService(pool, POLICY, Approver(), trace, ask_client=True)
    yes = {"approve": types.ElicitResult(action="accept", content={"allow": True})}

    async def use() -> list[Any]:
        async with Client(build_server(service), mode="auto") as client:
            session = client.session
            asked = await session.call_tool("issue_refund", REFUND, allow_input_required=True)
            state = asked.request_state
            results: list[Any] = []

            async def again() -> None:
                results.append(
                    await session.call_tool(
                        "issue_refund", REFUND, input_responses=yes, request_state=state
                    )
                )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(again)
                tasks.start_soon(again)
            await again()
            return results

    try:
        results = anyio.run(use)
    finally:
        trace.close()
    assert [r.is_error for r in results].count(False) == 1, [r.content[0].text for r in results]
    for result in (r for r in results if r.is_error):
        assert "that answer was already used" in result.content[0].text, result
    events = [e for e in read_trace(tmp_path / "t.jsonl") if e["event"] == "tool_call"]
    assert (
        sorted(e["approval"] for e in events)
        == ["approved_client"] + ["denied_client_replayed"] * 2
    )


def test_over_streamable_http_with_the_token_a_yes_runs_once_and_the_question_is_escaped(
    tmp_path: Any,
) -> None:
    """The real server process (`mcp serve --ask --http`, a bearer token), a 2026-era
    client: an argument holding terminal escapes is shown escaped, and the yes, sent
    three times (two at once), runs the call once (its order is unknown: the tool says
    so)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    httpx2 = pytest.importorskip("httpx2")
    from mcp.client.streamable_http import streamable_http_client

    token = "ask-token-0123456789abcdef"
    trace = tmp_path / "t.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    root = Path(__file__).resolve().parent.parent
    argv = ["-m", "agent", "mcp", "serve", "--ask", "--http", "127.0.0.1:0", "--workers", "1"]
    proc = subprocess.Popen(
        [sys.executable, *argv, "--trace", str(trace)],
        cwd=root,
        env=env | {"SANDBOXED_AGENT_MCP_TOKEN": token},
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    hostile = {"order_id": "12345\x1b]52;c;cm0gLXJm\x07\x1b[2J\u202e", "amount": 89.99}
    yes = {"approve": types.ElicitResult(action="accept", content={"allow": True})}

    async def use(url: str) -> tuple[str, list[Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            Client(streamable_http_client(url, http_client=http), mode="auto") as client,
        ):
            session = client.session
            asked = await session.call_tool("issue_refund", hostile, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult), asked
            [question] = asked.input_requests.values()
            results: list[Any] = []

            async def again() -> None:
                results.append(
                    await session.call_tool(
                        "issue_refund",
                        hostile,
                        input_responses=yes,
                        request_state=asked.request_state,
                    )
                )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(again)
                tasks.start_soon(again)
            await again()
            return question.params.message, results

    try:
        assert proc.stderr is not None
        url = next(line for line in proc.stderr if " at http://" in line)
        message, results = anyio.run(use, url.split(" at ", 1)[1].split()[0])
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
        assert proc.stderr is not None
        proc.stderr.close()
    assert "\x1b" not in message and "\x07" not in message and "\u202e" not in message
    assert "\\u001b]52;c;" in message and "\\u202e" in message, message
    texts = [r.content[0].text for r in results]
    assert [t.startswith("denied: ") for t in texts].count(False) == 1, texts  # ran once
    approvals = sorted(e["approval"] for e in read_trace(trace) if e["event"] == "tool_call")
    assert approvals == ["approved_client", "denied_client_replayed", "denied_client_replayed"]


NOTE_TOOL = """
from tools import tool


@tool
def send_note(body: str, to: str) -> str:
    \"\"\"Send a note.

    Args:
        body: The text.
        to: Who gets it.
    \"\"\"
    return to
"""


def test_a_long_value_does_not_push_a_short_one_out_of_the_questions_view(
    tmp_path: Any,
) -> None:
    """`body` sorts before `to`: 5,000 characters of it put the recipient far below
    the top of the question, which is what a client's dialog shows first."""
    from policies import parse_policy

    source = tmp_path / "notes.py"
    source.write_text(NOTE_TOOL)
    registry = Registry()
    registry.load(str(source))
    policy = parse_policy("[tools.send_note]\nrequires_approval = true\n", "p.toml", tmp_path)
    asked: list[str] = []

    async def decline(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="decline")

    trace = Trace(tmp_path / "t.jsonl")
    args = {"body": "Dear team, " + "lorem ipsum " * 420, "to": "attacker@example.com"}
    with Pool(policy, registry=registry, size=1, spares=1) as pool:
        service = ToolService(pool, policy, Approver(), trace, ask_client=True)

        async def use() -> types.CallToolResult:
            server = build_server(service)
            async with Client(server, mode="legacy", elicitation_callback=decline) as client:
                return await client.call_tool("send_note", args)

        try:
            result = anyio.run(use)
        finally:
            trace.close()
    assert result.is_error
    [message] = asked
    top = message[:300]
    assert 'to = "attacker@example.com"' in top and "characters, in full below" in top, top
    assert args["body"] in message  # and still shown whole


def test_questions_left_unanswered_are_bounded(pool: Pool, tmp_path: Any) -> None:
    """A client that never answers holds each call's question for ask_timeout_s: past
    `max_questions` waiting at once, the next call is denied at once, not held."""
    trace = Trace(tmp_path / "t.jsonl")
    service = ToolService(
        pool, POLICY, Approver(), trace, ask_client=True, ask_timeout_s=30, max_questions=2
    )
    asked: list[str] = []
    both = anyio.Event()

    async def never(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        if len(asked) == 2:
            both.set()
        await anyio.sleep_forever()
        raise AssertionError

    async def use() -> types.CallToolResult:
        async with Client(build_server(service), mode="legacy", elicitation_callback=never) as c:
            async with anyio.create_task_group() as tasks:
                for _ in range(2):
                    tasks.start_soon(c.call_tool, "issue_refund", REFUND)
                await both.wait()
                third = await c.call_tool("issue_refund", REFUND)
                tasks.cancel_scope.cancel()
            return third

    try:
        third = anyio.run(use)
    finally:
        trace.close()
    assert len(asked) == 2
    assert third.is_error and "too many questions" in third.content[0].text, third
    assert recorded(tmp_path / "t.jsonl")["approval"] == "denied_client_busy"
