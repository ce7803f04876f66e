"""`sandboxed-agent mcp serve`, driven by the official MCP client SDK over stdio and
over Streamable HTTP: one real server process per transport for the module, its tools
in real sandbox workers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, SURVIVOR_GRACE_S, sleepers, unique_marker

anyio = pytest.importorskip("anyio")
mcp = pytest.importorskip("mcp")

from anyio.from_thread import BlockingPortal, start_blocking_portal  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402

TOOLS = str(Path(__file__).with_name("mcp_tools.py"))
WORKERS = 2
DEADLINE_S = 1.5
POLICY = f"""
[tools.hang_until_deadline]
timeout_s = {DEADLINE_S}

[tools.hang_until_cancelled]
timeout_s = 120

[tools.approved_action]
requires_approval = true
"""
TOKEN = "test-token-0123456789abcdef"
GONE_WITHIN_S = 30.0
"""Generous: how long a killed tree may take to be gone on a loaded machine."""


def server_args(tmp: Path, trace: Path) -> list[str]:
    policy = tmp / "policy.toml"
    policy.write_text(POLICY)
    return [
        "-m",
        "agent",
        "mcp",
        "serve",
        "--tools",
        TOOLS,
        "--policy",
        str(policy),
        "--workers",
        str(WORKERS),
        "--approve",
        "approved_action",
        "--trace",
        str(trace),
        "--progress-every",
        "0.2",
    ]


def server_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    return base | extra


@dataclass
class Served:
    """A connected client and what the test needs to know of its server."""

    transport: str
    url: str | None
    client: Any
    portal: BlockingPortal
    trace: Path
    server_pid: int

    def call(self, tool: str, args: dict[str, Any], **kw: Any) -> Any:
        return self.portal.call(lambda: self.client.call_tool(tool, args, **kw))

    def calls_in_trace(self, tool: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.trace.read_text().splitlines()]
        return [e for e in lines if e["event"] == "tool_call" and e["tool"] == tool]


def _stdio(tmp: Path, trace: Path) -> tuple[Any, Any, None]:
    params = StdioServerParameters(
        command=sys.executable, args=server_args(tmp, trace), cwd=str(ROOT), env=server_env()
    )
    # What Claude Desktop and Cursor speak: the initialize handshake.
    return Client(params, mode="legacy"), None, None


def _http(tmp: Path, trace: Path) -> tuple[Any, subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, *server_args(tmp, trace), "--http", "127.0.0.1:0"],
        cwd=ROOT,
        env=server_env(SANDBOXED_AGENT_MCP_TOKEN=TOKEN),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = _announced_url(proc)
    return _http_client(url), proc, url


@contextlib.asynccontextmanager
async def _http_client(url: str, mode: str = "auto") -> AsyncIterator[Any]:
    """A connected client that sends the token; `auto` speaks the 2026 protocol here."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def _announced_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:
        if " at http://" in line:
            return line.split(" at ", 1)[1].split()[0]
    raise AssertionError(f"the server ended without serving (exit {proc.wait()})")


@pytest.fixture(scope="module", params=["stdio", "http"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server per transport for the module; when it ends, its whole tree must be
    gone (stdio: the client closed stdin; HTTP: SIGTERM)."""
    tmp = tmp_path_factory.mktemp(f"mcp-{request.param}")
    trace = tmp / "trace.jsonl"
    before = {p.pid for p in psutil.Process().children()}
    client, proc, url = (_stdio if request.param == "stdio" else _http)(tmp, trace)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(client) as c:
        [server] = [p for p in psutil.Process().children() if p.pid not in before]
        yield Served(request.param, url, c, portal, trace, server.pid)
        tree = [server, *server.children(recursive=True)]
    if proc is not None:
        proc.terminate()
        assert proc.wait(60) == 0
        assert proc.stderr is not None
        proc.stderr.close()
    _, alive = psutil.wait_procs(tree, timeout=SURVIVOR_GRACE_S)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    ended = json.loads(trace.read_text().splitlines()[-1])
    assert ended["event"] == "mcp_serve_ended", ended


def _outside(server_pid: int) -> set[int]:
    """Our running descendants, but the module's server and its tree."""
    inside = {server_pid}
    try:
        inside |= {p.pid for p in psutil.Process(server_pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in inside and proc.status() != psutil.STATUS_ZOMBIE:
                found.add(proc.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def no_leftovers(served: Served) -> Iterator[None]:
    """The conftest guard, less the module's server: it outlives each test, and its
    zygote forks spare workers as it serves. What a test's tools start is found by
    marker, machine-wide, and the server's own tree is checked when it ends."""
    before = _outside(served.server_pid)
    yield
    deadline = time.monotonic() + SURVIVOR_GRACE_S
    while (left := _outside(served.server_pid) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"the test left processes alive: {left}"


def _text(result: Any) -> str:
    return result.content[0].text


def test_lists_every_tool_with_its_strict_schema_and_description(served: Served) -> None:
    from tools import Registry

    registry = Registry.default()
    registry.load(TOOLS)
    listed = served.portal.call(served.client.list_tools).tools
    assert [t.name for t in listed] == registry.names()
    for tool in listed:
        spec = registry.get(tool.name)
        assert tool.input_schema == spec.parameters
        assert tool.input_schema["additionalProperties"] is False
        assert tool.description == spec.description


def test_a_call_runs_in_a_worker_and_is_in_the_trace(served: Served) -> None:
    result = served.call("stamp", {"seconds": 0})
    assert not result.is_error, _text(result)
    pid = json.loads(_text(result))["pid"]
    assert pid != served.server_pid
    [recorded] = [e for e in served.calls_in_trace("stamp") if e["output"] == _text(result)]
    assert recorded["ok"] and recorded["arguments"] == '{"seconds":0.0}'
    assert recorded["worker_pid"] not in (None, served.server_pid)


def test_failures_are_results_that_start_with_their_kind(served: Served) -> None:
    cases = [
        ("calculate", {"expression": "1/0"}, "tool_error: "),
        ("calculate", {"expr": "1"}, "bad_arguments: "),
        ("no_such_tool", {}, "unknown_tool: "),
    ]
    for tool, args, kind in cases:
        result = served.call(tool, args)
        assert result.is_error, _text(result)
        assert _text(result).startswith(kind), _text(result)


def test_a_hung_tool_is_killed_at_its_deadline_and_reports_progress_until_then(
    served: Served,
) -> None:
    marker = unique_marker()
    seen: list[tuple[float, float | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, total))

    result = served.call("hang_until_deadline", {"marker": marker}, progress_callback=progress)
    assert result.is_error
    assert _text(result).startswith("timeout: "), _text(result)
    assert sleepers(marker) == [], "the helper outlived the deadline"
    values = [value for value, _ in seen]
    assert len(values) >= 2, seen
    assert values == sorted(set(values)), "progress must increase with every report"
    assert {total for _, total in seen} == {DEADLINE_S}
    [recorded] = served.calls_in_trace("hang_until_deadline")[-1:]
    assert recorded["error_kind"] == "timeout" and recorded["timeout_s"] == DEADLINE_S


def _wait_for(what: str, ready: Any) -> Any:
    deadline = time.monotonic() + GONE_WITHIN_S
    while not (found := ready()):
        assert time.monotonic() < deadline, f"{what}: not within {GONE_WITHIN_S} s"
        time.sleep(0.05)
    return found


def test_a_cancelled_call_is_killed_at_once_with_its_tree(served: Served) -> None:
    """Its deadline is two minutes away: only the cancellation can stop it in time.
    Over HTTP, a client of each era: the 2026 one closes the call's stream, the
    handshake one sends notifications/cancelled (as stdio's does)."""
    eras = ["auto", "legacy"] if served.url else ["legacy"]
    for era in eras:
        marker = unique_marker()

        async def cancel_once_running(client: Any, marker: str = marker) -> None:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "hang_until_cancelled", {"marker": marker})
                while not sleepers(marker):  # its helper runs: the call is in its worker
                    await anyio.sleep(0.05)
                tasks.cancel_scope.cancel()

        async def in_era(era: str = era) -> None:
            if era == "auto" or not served.url:
                await cancel_once_running(served.client)
                return
            async with _http_client(served.url, mode=era) as client:
                await cancel_once_running(client)

        served.portal.call(in_era)
        _wait_for(f"{era}: the cancelled call's helper gone", lambda m=marker: not sleepers(m))
        [recorded] = _wait_for(
            f"{era}: the cancelled call in the trace",
            lambda m=marker: [
                e for e in served.calls_in_trace("hang_until_cancelled") if m in e["arguments"]
            ],
        )
        assert recorded["error_kind"] == "cancelled" and not recorded["ok"]
    after = served.call("stamp", {"seconds": 0})
    assert not after.is_error, "the pool serves on after a cancellation"


def test_a_tool_that_needs_approval_runs_only_when_the_server_was_told(served: Served) -> None:
    refused = served.call("issue_refund", {"order_id": "12345", "amount": 1.0})
    assert refused.is_error
    assert _text(refused).startswith("denied: "), _text(refused)
    assert "--approve issue_refund" in _text(refused)
    allowed = served.call("approved_action", {"note": "ok"})
    assert not allowed.is_error and _text(allowed) == "done: ok"
    assert served.calls_in_trace("issue_refund")[-1]["approval"] == "denied_no_tty"
    assert served.calls_in_trace("approved_action")[-1]["approval"] == "approved_flag"


def test_twenty_calls_at_once_all_answer_and_at_most_the_pool_runs_at_once(
    served: Served,
) -> None:
    async def twenty() -> list[Any]:
        results: list[Any] = [None] * 20

        async def one(i: int) -> None:
            results[i] = await served.client.call_tool("stamp", {"seconds": 0.2})

        async with anyio.create_task_group() as tasks:
            for i in range(20):
                tasks.start_soon(one, i)
        return results

    results = served.portal.call(twenty)
    assert not any(r.is_error for r in results), [_text(r) for r in results if r.is_error]
    spans = [json.loads(_text(r)) for r in results]
    for span in spans:
        running = [s for s in spans if s["start"] <= span["start"] < s["end"]]
        assert len(running) <= WORKERS, f"{len(running)} calls ran at once in a pool of {WORKERS}"


def test_http_refuses_a_request_without_the_bearer_token(served: Served) -> None:
    if served.url is None:
        pytest.skip("stdio: the client started the server, nobody else can reach it")
    import httpx2

    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
    ):
        answer = httpx2.post(served.url, json=hello, headers=headers, timeout=60)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"] == "Bearer"
