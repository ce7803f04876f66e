"""Third-party MCP servers as tool sources, each inside `sandbox.launch`: real servers
from PyPI (`mcp-server-time`, `mcp-server-git`) answer; a hostile one written on the
official SDK (tests/hostile_mcp_server.py) is contained whatever its tools try."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from agent.integrations.mcp_sources import McpServerFailed, McpSources
from agent.replay import ScriptedModelServer, call, say
from policies import parse_policy
from sandbox import Limits
from sandbox.cancel import CancelToken
from sandbox.errors import CallCancelled, PolicyError
from tests.conftest import agent_cli, sleepers, unique_marker

HOSTILE = str(Path(__file__).with_name("hostile_mcp_server.py"))


def sources_for(text: str, base: Path) -> McpSources:
    return McpSources(parse_policy(text, "test.toml", base))


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback server on the host's network that says hello to whoever connects."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def hostile(tmp_path: Path, **keys: str) -> McpSources:
    extra = "\n".join(f"{k} = {v}" for k, v in keys.items())
    return sources_for(
        f"""
        [mcp_servers.hostile]
        command = ["python", "{HOSTILE}"]
        timeout_s = 2
        {extra}
        """,
        tmp_path,
    )


def test_mcp_server_time_answers_in_the_sandbox(tmp_path: Path) -> None:
    pytest.importorskip("mcp_server_time")
    with sources_for(
        '[mcp_servers.time]\ncommand = ["python", "-m", "mcp_server_time"]', tmp_path
    ) as sources:
        names = {spec.name for spec in sources.specs}
        assert {"time__get_current_time", "time__convert_time"} <= names
        result = sources.call(
            "time__convert_time",
            {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
        )
        assert result.ok, result.error
        assert '"time_difference": "+9.0h"' in (result.output or "")
        wrong = sources.call("time__get_current_time", {"timezone": 3})
        assert wrong.error is not None and wrong.error.kind == "bad_arguments"


def _repository(path: Path, secret: str) -> None:
    path.mkdir()
    (path / "notes.txt").write_text(secret)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)


def test_mcp_server_git_works_on_its_repository_and_reads_nothing_else(tmp_path: Path) -> None:
    pytest.importorskip("mcp_server_git")
    mine, other = tmp_path / "mine", tmp_path / "other"
    _repository(mine, "the allowed text")
    _repository(other, "the other repository's secret")
    # Not confined by the server itself (no --repository): only the sandbox stands between
    # it and the other repository. git refuses a repository of another owner unless told
    # (the server runs as a uid of its own).
    safe = 'GIT_CONFIG_COUNT = "1", GIT_CONFIG_KEY_0 = "safe.directory", GIT_CONFIG_VALUE_0 = "*"'
    policy = f"""
        [mcp_servers.git]
        command = ["python", "-m", "mcp_server_git"]
        read_paths = ["{mine}"]
        env = {{ {safe} }}
        """
    with sources_for(policy, tmp_path) as sources:
        assert "git__git_log" in sources
        log = sources.call("git__git_log", {"repo_path": str(mine)})
        assert log.ok and "first" in (log.output or ""), log
        shown = sources.call("git__git_show", {"repo_path": str(mine), "revision": "HEAD"})
        assert "the allowed text" in (shown.output or ""), shown
        outside = sources.call("git__git_show", {"repo_path": str(other), "revision": "HEAD"})
        said = (outside.output or "") + (outside.error.message if outside.error else "")
        assert not outside.ok and "secret" not in said, outside


def _wait_for(condition: Callable[[], bool], deadline_s: float = 60.0) -> bool:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def test_a_hostile_server_is_contained_whatever_its_tools_do(tmp_path: Path, listener: int) -> None:
    """One server through every attack (each start costs seconds: the SDK's imports)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the key")
    marker = unique_marker()
    with hostile(tmp_path) as sources:
        assert "hostile__echo\n" not in sources and "hostile__echo" in sources
        for path in (str(secret), "/etc/shadow", "~root/.ssh", "/root", "/home"):
            got = sources.call("hostile__read", {"path": path})
            assert got.ok and (got.output or "").startswith("refused"), (path, got)
        connected = sources.call("hostile__connect", {"port": listener})
        assert (connected.output or "").startswith("refused"), connected

        hung = sources.call("hostile__detach", {"marker": marker})
        assert hung.error is not None and hung.error.kind == "timeout", hung
        assert sleepers(marker) == []  # the grandchild in a session of its own went too
        # A call's deadline holds the restart it waits for: these have time for one.
        far = Limits(timeout_s=120)
        assert sources.call("hostile__echo", {"text": "back"}, limits=far).output == "back"
        assert sources.starts("hostile") == 2

        crashed = sources.call("hostile__crash", {})
        assert crashed.error is not None and crashed.error.kind == "crashed", crashed
        assert "exited with status 3" in crashed.error.message
        flooded = sources.call("hostile__flood", {}, limits=far)
        assert flooded.error is not None and flooded.error.kind == "output_limit", flooded
        still = sources.call("hostile__echo", {"text": "still here"}, limits=far)
        assert still.output == "still here"
        assert sources.starts("hostile") == 4

        # A cancelled run: its token kills the server the call waits on, at once.
        token, marker = CancelToken(), unique_marker()
        outcome: list[object] = []

        def cancelled_call() -> None:
            try:
                # A deadline far off: only the cancel can end this call.
                limits = Limits(timeout_s=600)
                outcome.append(
                    sources.call("hostile__detach", {"marker": marker}, limits=limits, cancel=token)
                )
            except CallCancelled as exc:
                outcome.append(exc)

        caller = threading.Thread(target=cancelled_call)
        caller.start()
        assert _wait_for(lambda: len(sleepers(marker)) == 1)
        token.cancel()
        caller.join()
        assert isinstance(outcome[0], CallCancelled), outcome
        assert sleepers(marker) == []


def test_calls_beside_one_past_its_deadline_are_told_why_and_idempotent_ones_sent_again(
    tmp_path: Path,
) -> None:
    """One call's deadline kills the server it shares with two others still running:
    the idempotent one is sent again to the restarted server and answers; the other
    fails as `crashed`, naming the call that caused it, not as a timeout of its own."""
    far = Limits(timeout_s=600)
    again, once, hung = unique_marker(), unique_marker(), unique_marker()
    results: dict[str, object] = {}

    def hold(tool: str, marker: str) -> None:
        results[tool] = sources.call(tool, {"marker": marker}, limits=far)

    policy = f"""
        [mcp_servers.hostile]
        command = ["python", "{HOSTILE}"]
        timeout_s = 2

        [tools.hostile__hold]
        idempotent = true
        """
    with sources_for(policy, tmp_path) as sources:
        callers = [
            threading.Thread(target=hold, args=("hostile__hold", again)),
            threading.Thread(target=hold, args=("hostile__hold_once", once)),
        ]
        for caller in callers:
            caller.start()
        assert _wait_for(lambda: len(sleepers(again)) == len(sleepers(once)) == 1)
        first = sleepers(again)
        timed_out = sources.call("hostile__detach", {"marker": hung})
        assert timed_out.error is not None and timed_out.error.kind == "timeout", timed_out
        # Sent again: a new `sleep` of the same marker, in the restarted server.
        assert _wait_for(lambda: sleepers(again) not in ([], first))
        for pid in sleepers(again):
            os.kill(pid, signal.SIGTERM)
        for caller in callers:
            caller.join()
        assert sources.starts("hostile") == 2
    resent = results["hostile__hold"]
    assert resent.ok and resent.output == "released", resent  # type: ignore[union-attr]
    told = results["hostile__hold_once"]
    assert told.error is not None and told.error.kind == "crashed", told  # type: ignore[union-attr]
    assert "hostile__detach passed its 2 s deadline" in told.error.message  # type: ignore[union-attr]
    assert sleepers(once) == sleepers(hung) == []


def test_a_call_that_waits_for_its_server_to_start_again_keeps_its_deadline(
    tmp_path: Path,
) -> None:
    """A server killed for a call's deadline starts again on the next call; one that
    then never answers `initialize` held that call for its startup_timeout_s (here
    600 s), not its own 2 s: the call ends at its deadline, as a `timeout`."""
    silent = tmp_path / "silent"
    policy = f"""
        [mcp_servers.hostile]
        command = ["python", "{HOSTILE}", "silent-if", "{silent}"]
        read_paths = ["{tmp_path}"]
        timeout_s = 2
        startup_timeout_s = 600
        """
    with sources_for(policy, tmp_path) as sources:
        timed_out = sources.call("hostile__detach", {"marker": unique_marker()})
        assert timed_out.error is not None and timed_out.error.kind == "timeout", timed_out
        silent.touch()  # from its next start on
        waited = sources.call("hostile__echo", {"text": "hi"})
        assert waited.error is not None and waited.error.kind == "timeout", waited
        assert "still starting" in waited.error.message, waited
        assert sources.starts("hostile") == 2


def test_a_server_that_never_answers_initialize_is_stopped_with_a_clear_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(McpServerFailed, match=r"did not answer initialize.*within 1 s"):
        sources_for(
            f"""
            [mcp_servers.silent]
            command = ["python", "{HOSTILE}", "silent"]
            startup_timeout_s = 1
            """,
            tmp_path,
        )


def test_the_launcher_command_line_is_what_any_stdio_client_can_run(tmp_path: Path) -> None:
    """The same server through the SDK's own stdio client, as Claude Desktop would."""
    pytest.importorskip("mcp_server_time")
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from sandbox import Limits
    from sandbox.launch import command_line

    argv = command_line([sys.executable, "-m", "mcp_server_time"], Limits(memory_mb=512))

    async def main() -> list[str]:
        params = StdioServerParameters(command=argv[0], args=argv[1:])
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return [tool.name for tool in (await session.list_tools()).tools]

    assert "get_current_time" in anyio.run(main)


TIME_POLICY = """
[mcp_servers.time]
command = ["python", "-m", "mcp_server_time"]
timeout_s = 20

[tools.time__convert_time]
requires_approval = true
"""


def test_run_offers_the_servers_tools_to_the_model_under_the_policy(tmp_path: Path) -> None:
    pytest.importorskip("mcp_server_time")
    policy = tmp_path / "policy.toml"
    policy.write_text(TIME_POLICY)
    converted = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    script = [
        call(
            ("time__get_current_time", {"timezone": "Asia/Tokyo"}),
            ("time__convert_time", converted),
        ),
        say("It is evening in Tokyo."),
    ]
    with ScriptedModelServer(script) as server:
        proc = agent_cli(
            "run", "What time is it in Tokyo?", "--policy", str(policy),
            "--base-url", server.base_url, home=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    offered = {t["function"]["name"]: t["function"] for t in server.requests[0]["tools"]}
    assert offered["time__get_current_time"]["parameters"]["required"] == ["timezone"]
    assert "get_order_status" in offered  # beside the built-in tools
    answers = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert '"timezone": "Asia/Tokyo"' in answers[0]
    assert answers[1].startswith("error (denied)"), answers[1]  # [tools.time__convert_time]


def test_tools_lists_and_tool_calls_a_servers_tool(tmp_path: Path) -> None:
    pytest.importorskip("mcp_server_time")
    policy = tmp_path / "policy.toml"
    policy.write_text(TIME_POLICY)
    listed = agent_cli("tools", "--policy", str(policy), home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "time__get_current_time(timezone)" in listed.stdout
    assert "server time: 512 MiB" in listed.stdout and "needs approval" in listed.stdout
    args = json.dumps({"timezone": "Etc/UTC"})
    once = agent_cli(
        "tool", "time__get_current_time", "--args", args, "--policy", str(policy), home=tmp_path
    )
    assert once.returncode == 0, once.stderr
    result = json.loads(once.stdout)
    assert result["ok"] and "Etc/UTC" in result["output"]


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ("command = []", "[mcp_servers.s] command: list should have at least 1 item"),
        ('command = "python"', "[mcp_servers.s] command: input should be a valid list"),
        ('command = ["x"]\nmemory_mb = 1', "[mcp_servers.s] memory_mb: input should be greater"),
        ('command = ["x"]\ntimeout = 3', "unknown key; did you mean 'timeout_s'?"),
        ('command = ["x"]\nread_paths = ["missing"]', "read_paths: '/"),
        ('command = ["x"]\nenv = { "A-B" = "1" }', "env: 'A-B' is not a variable name"),
        ('command = ["x"]\nenv = { A = 1 }', "[mcp_servers.s] env.A"),
    ],
)
def test_a_bad_server_table_is_one_clear_error(tmp_path: Path, table: str, said: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"[mcp_servers.s]\n{table}\n", "p.toml", tmp_path)
    assert said in str(caught.value)
    assert str(caught.value).startswith("p.toml: ")


def test_a_server_name_must_not_hold_the_separator(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"a__b.*single _"):
        parse_policy('[mcp_servers.a__b]\ncommand = ["x"]\n', "p.toml", tmp_path)
