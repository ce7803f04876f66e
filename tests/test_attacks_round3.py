"""Attack round 3: a hostile model server, hostile model-written code and hostile tools
against what landed this round (run_python, the egress proxy, the adapters, text calls).

Each test is a break that was found, kept so that it stays fixed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step
from sandbox.errors import RunError

DEEP = b"[" * 600 + b"]" * 600
"""Nesting `json.loads` reads, and a recursive walk over it does not."""


def test_a_model_answer_nested_too_deeply_is_a_run_error_not_a_traceback() -> None:
    body = b'{"choices": [{"message": {"content": "hi", "x": ' + DEEP + b"}}]}"
    with ScriptedModelServer([Step(raw=body)]) as server:
        client = ModelClient(model="m", base_url=server.base_url, api_key="k", max_retries=0)
        with pytest.raises(RunError, match="nested too deeply"):
            client.complete([{"role": "user", "content": "hi"}], [], timeout_s=30)


class _Dripper:
    """An endpoint that sends its headers, then one byte of body at a time, until the
    client hangs up (or `drips` are sent): every read comes well within any timeout."""

    def __init__(self, drips: int = 600, every_s: float = 0.05) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.client_left = threading.Event()
        self.done = threading.Event()
        self._drips, self._every_s = drips, every_s
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(1 << 16)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            conn.sendall(head + b"Content-Length: 1000000\r\n\r\n")
            for _ in range(self._drips):
                try:
                    conn.sendall(b" ")
                except OSError:
                    self.client_left.set()
                    break
                time.sleep(self._every_s)
        self.done.set()

    def close(self) -> None:
        self.sock.close()
        self.done.wait(60)


@pytest.fixture
def dripper() -> Iterator[_Dripper]:
    server = _Dripper()
    yield server
    server.close()


def test_a_model_that_drips_its_answer_is_cut_at_the_deadline(dripper: _Dripper) -> None:
    """The client's timeout bounds each read, not the answer: an endpoint sending a
    byte now and then held a run past max_wall_s for as long as it liked."""
    client = ModelClient(model="m", base_url=dripper.base_url, api_key="k", max_retries=0)
    with pytest.raises(RunError, match="did not finish its answer in time"):
        client.complete([{"role": "user", "content": "hi"}], [], timeout_s=1.0)
    # The client hung up while the endpoint still had bytes to drip.
    assert dripper.client_left.wait(30), "the client read the drip to its end"


def test_a_model_answer_past_the_size_cap_is_not_read_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole body was read into memory, however large: the host's memory, not a
    worker's."""
    monkeypatch.setattr("agent.model.MAX_BODY_BYTES", 1 << 20)
    content = "x" * (2 << 20)
    with ScriptedModelServer([Step(message={"role": "assistant", "content": content})]) as server:
        client = ModelClient(model="m", base_url=server.base_url, api_key="k", max_retries=0)
        with pytest.raises(RunError, match="more than 1 MiB"):
            client.complete([{"role": "user", "content": "hi"}], [], timeout_s=30)


# -- a hostile MCP server's schemas ---------------------------------------------------

SCHEMA_SERVER = Path(__file__).with_name("round3_mcp_server.py")


def _sources(*args: str) -> Any:
    pytest.importorskip("mcp")
    from agent.integrations.mcp_sources import McpSources
    from policies import parse_policy

    command = json.dumps(["python", str(SCHEMA_SERVER), *args])
    policy = parse_policy(
        f"[mcp_servers.evil]\ncommand = {command}\ntimeout_s = 10\n",
        "test.toml",
        SCHEMA_SERVER.parent,
    )
    return McpSources(policy)


@pytest.fixture(scope="module")
def schemas() -> Iterator[Any]:
    """The server whose tool schemas attack the agent's own check of the arguments."""
    with _sources() as sources:
        yield sources


def test_a_schema_that_refers_to_itself_is_bad_arguments_not_a_crash(schemas: Any) -> None:
    """jsonschema recursed until RecursionError, out of the agent loop's bind."""
    result = schemas.call("evil__self_reference", {"a": 1})
    assert result.error is not None and result.error.kind == "bad_arguments", result
    assert "too deeply" in result.error.message


def test_a_schema_of_exponential_cost_is_cut_short(schemas: Any) -> None:
    """anyOf over anyOf: 2**16 paths checked in the agent's own process (2**40 hangs it)."""
    result = schemas.call("evil__exponential", {"a": 1})
    assert result.error is not None and result.error.kind == "bad_arguments", result
    assert "checks" in result.error.message


def test_the_servers_regular_expressions_are_not_run_here(schemas: Any) -> None:
    """`^(a+)+$` against a's and a `!` backtracks 2**n times inside `re`, which nothing
    can interrupt: the agent hung for as long as the model made the string. The
    pattern is the server's to check; here the call goes through."""
    result = schemas.call("evil__redos", {"text": "a" * 24 + "!"})
    assert result.ok, result.error
    assert "redos ran" in (result.output or "")


def test_a_tool_whose_schema_is_not_json_schema_is_not_offered(schemas: Any) -> None:
    """A type nobody knows raised UnknownType from the check, out of the loop."""
    assert "evil__echo" in schemas
    assert "evil__bogus_type" not in schemas


def test_a_server_cannot_list_a_name_twice_or_a_look_alike() -> None:
    """A name listed twice ended `tools` and `run` in a traceback (the registry refuses
    a name defined twice); `echο` with a Greek omicron passed `str.isalnum`, looked like
    `echo` and made the model API refuse the whole request."""
    with _sources("names", "a", "a", "ech\u03bf", "t\u00e9st", "b") as sources:
        assert [spec.name for spec in sources.specs] == ["evil__a", "evil__b"]


def test_a_server_whose_tool_pages_never_end_is_stopped() -> None:
    """Each page was kept until the start-up deadline (30 s of pages, each tool's
    schema as long as the server liked, all for every model request)."""
    from agent.integrations.mcp_sources import McpServerFailed

    with pytest.raises(McpServerFailed, match="more than 256 tools"):
        _sources("pages").close()


def test_a_tool_schema_past_the_cap_is_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.integrations.mcp_sources.SCHEMA_CHARS", 2_000)
    with _sources("names", "a") as sources:  # echo's schema: short
        assert [spec.name for spec in sources.specs] == ["evil__a"]
    monkeypatch.setattr("agent.integrations.mcp_sources.SCHEMA_CHARS", 20)
    with _sources("names", "a") as sources:
        assert sources.specs == []


# -- the egress proxy's address check -------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allow_private", "why"),
    [
        ("::7f00:1", False, "loopback"),  # IPv4-compatible ::127.0.0.1 (a sit tunnel's)
        ("::ffff:0:7f00:1", False, "loopback"),  # IPv4-translated (SIIT)
        ("2002:7f00:1::", False, "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", True, "metadata"),  # 6to4 of 169.254.169.254
        ("64:ff9b:1::a9fe:a9fe", False, "not a global address"),  # local-use NAT64
        ("fec0::1", False, "not a global address"),  # site-local
    ],
)
def test_a_resolver_answer_that_carries_a_private_address_is_refused(
    address: str, allow_private: bool, why: str
) -> None:
    """Python calls these global; a gateway or tunnel takes them into the LAN, the
    host's loopback or the metadata service."""
    import ipaddress

    from sandbox.egress.addresses import refused

    assert why in (refused(ipaddress.ip_address(address), allow_private) or "")


# -- mcp serve over HTTP --------------------------------------------------------------


def test_mcp_serve_on_any_loopback_address_refuses_a_rebound_name() -> None:
    """Loopback needs no token, so a web page whose name was rebound to the address
    could call every tool: the SDK guards 127.0.0.1, localhost and ::1 only, and
    `--http 127.0.0.2:PORT` answered any Host header."""
    pytest.importorskip("mcp")
    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOXED_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "mcp", "serve", "--http", "127.0.0.2:0"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        said = next(line for line in proc.stderr if " at http" in line)
        url = said.split(" at ", 1)[1].split()[0]
        port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        hello = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "page", "version": "1"},
            },
        }
        accept = {"Accept": "application/json, text/event-stream"}
        rebound = f"rebound.example:{port}"
        refused = httpx.post(
            url,
            json=hello,
            headers={**accept, "Host": rebound, "Origin": f"http://{rebound}"},
            timeout=60,
        )
        assert refused.status_code == 421, refused.text
        served = httpx.post(url, json=hello, headers=accept, timeout=60)
        assert served.status_code == 200, served.text
    finally:
        proc.terminate()
        proc.wait(60)


# -- the LangChain adapter ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_pool() -> Iterator[Any]:
    from conftest import shared

    from sandbox import Pool

    with Pool(size=1) as pool:
        yield shared(pool)


@pytest.mark.parametrize("key", ["config", "run_manager", "self"])
def test_langchain_passes_the_models_keys_named_like_its_own(default_pool: Any, key: str) -> None:
    """Passed as keywords, LangChain put its own `config` and `run_manager` over the
    model's values (a tool with such a parameter lost it, an extra key went unseen)
    and raised TypeError for `self`; the bridge must see what the model sent."""
    pytest.importorskip("langchain_core")
    from agent.integrations.langchain_tools import sandboxed_tools

    (tool,) = sandboxed_tools(default_pool, tools=["calculate"])
    call = {"name": "calculate", "args": {"expression": "6*7", key: 1}, "id": "c1"}
    message = tool.invoke({**call, "type": "tool_call"})
    assert message.status == "error", message
    assert f"{key}: unexpected argument" in message.content
