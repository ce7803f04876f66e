"""`sandboxed-agent mcp serve` as a command: its flags, and how it stops (EOF, SIGINT,
SIGTERM) with a call in flight, leaving no worker behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, SURVIVOR_GRACE_S, sleepers, unique_marker
from test_mcp_serve import GONE_WITHIN_S, server_args, server_env

from agent.cli import main

pytest.importorskip("mcp")


def _send(proc: subprocess.Popen[str], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    proc.stdin.flush()


@pytest.mark.parametrize("stop", ["eof", "SIGINT", "SIGTERM"])
def test_shutdown_with_a_call_in_flight_leaves_no_worker(tmp_path: Path, stop: str) -> None:
    """Plain JSON-RPC on the pipes, so that nothing but the stop itself ends the call."""
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.Popen(
        [sys.executable, *server_args(tmp_path, trace)],
        cwd=ROOT,
        env=server_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    client = {"name": "t", "version": "0"}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
    _send(proc, {"id": 1, "method": "initialize", "params": hello})
    assert json.loads(proc.stdout.readline())["id"] == 1, "stdout holds only the protocol"
    _send(proc, {"method": "notifications/initialized"})
    chatty = {"name": "chatty", "arguments": {"text": "hi"}}
    _send(proc, {"id": 3, "method": "tools/call", "params": chatty})
    answer = json.loads(proc.stdout.readline())  # nothing the tool printed came first
    assert answer["id"] == 3 and answer["result"]["content"][0]["text"] == "hi", answer
    marker = unique_marker()
    call = {"name": "hang_until_cancelled", "arguments": {"marker": marker}}
    _send(proc, {"id": 2, "method": "tools/call", "params": call})
    deadline = time.monotonic() + GONE_WITHIN_S
    while not sleepers(marker):
        assert time.monotonic() < deadline and proc.poll() is None, "the call never started"
        time.sleep(0.05)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    if stop == "eof":
        proc.stdin.close()
    else:
        proc.send_signal(getattr(signal, stop))
    assert proc.wait(GONE_WITHIN_S) == 0, proc.stderr.read()
    _, alive = psutil.wait_procs(tree, timeout=SURVIVOR_GRACE_S)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    assert sleepers(marker) == []
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert events[-1] == events[-1] | {"event": "mcp_serve_ended", "reason": stop}
    calls = [e for e in events if e["event"] == "tool_call"]
    assert [(e["tool"], e["ok"]) for e in calls] == [
        ("chatty", True),
        ("hang_until_cancelled", False),
    ]
    assert f"stopped ({stop})" in proc.stderr.read()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()


@pytest.mark.parametrize(
    ("flags", "env", "says"),
    [
        (["--http", "0.0.0.0:0"], {}, "needs a bearer token"),
        (["--http", "0.0.0.0:0"], {"SANDBOXED_AGENT_MCP_TOKEN": "short"}, "at least 16"),
        (["--http", "localhost:99999"], {}, "not a port"),
        (["--http", "::1:80"], {}, "in brackets"),
        (["--token-env", "MY_TOKEN"], {}, "only with --http"),
        (["--http", "0", "--token-env", "MY_TOKEN"], {}, "MY_TOKEN: that variable is not set"),
        (["--workers", "0"], {}, "not a positive whole number"),
        (["--progress-every", "0"], {}, "between 0.05 and 3600"),
        (["--approve", "issue_refnd"], {}, "issue_refund"),
        (["--offer", "calculat"], {}, "calculate"),
        (["--trace", "/no/such/dir/trace.jsonl"], {}, "cannot write there"),
        (["--bogus"], {}, "--bogus (see: sandboxed-agent mcp serve --help)"),
        ([], {}, None),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    flags: list[str],
    env: dict[str, str],
    says: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SANDBOXED_AGENT_MCP_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["mcp", "serve", *flags] if says else ["mcp"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sandboxed-agent: "), err
    assert says is None or says in err, err


def test_offer_serves_only_the_tools_it_names() -> None:
    """In memory (the SDK's own client on the server object), with a real pool."""
    import anyio
    from mcp import Client

    from agent.approval import Approver
    from agent.audit import Trace
    from agent.integrations.mcp_serve import ToolService, build_server
    from policies import load_policy
    from sandbox import Pool
    from tools import Registry

    policy = load_policy(None)
    with Pool(policy, registry=Registry.default(), size=1) as pool:
        service = ToolService(pool, policy, Approver(), Trace(None), offer=["calculate"])

        async def use() -> tuple[list[str], Any, Any]:
            async with Client(build_server(service), mode="legacy") as client:
                listed = [tool.name for tool in (await client.list_tools()).tools]
                ran = await client.call_tool("calculate", {"expression": "6*7"})
                hidden = await client.call_tool("read_file", {"path": "policy.txt"})
            return listed, ran, hidden

        listed, ran, hidden = anyio.run(use)
    assert listed == ["calculate"]
    assert not ran.is_error and ran.content[0].text == "42"
    assert hidden.is_error and hidden.content[0].text.startswith("unknown_tool: "), hidden
    assert "available tools: calculate" in hidden.content[0].text


def test_a_2026_client_over_stdio_cancels_a_call_at_once(tmp_path: Path) -> None:
    """The module's stdio server speaks the handshake era; this one the 2026 era, whose
    cancellation over stdio is also notifications/cancelled, to a handler of its own."""
    import anyio
    from mcp import Client, StdioServerParameters

    trace = tmp_path / "trace.jsonl"
    params = StdioServerParameters(
        command=sys.executable, args=server_args(tmp_path, trace), cwd=str(ROOT), env=server_env()
    )
    marker = unique_marker()

    async def cancel_once_running() -> str:
        async with Client(params, mode="auto") as client:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "hang_until_cancelled", {"marker": marker})
                while not sleepers(marker):
                    await anyio.sleep(0.05)
                tasks.cancel_scope.cancel()
            deadline = time.monotonic() + GONE_WITHIN_S
            while sleepers(marker):  # gone while the server still runs: the cancel did it
                assert time.monotonic() < deadline, "the cancelled call's helper lives on"
                await anyio.sleep(0.05)
            return client.session.protocol_version

    assert anyio.run(cancel_once_running) == "2026-07-28"
    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [e.get("error_kind") for e in calls if e["event"] == "tool_call"] == ["cancelled"]
