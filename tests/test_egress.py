"""A tool with a network allowlist reaches what its list names, through the
orchestrator's proxy, and nothing else: loopback servers on 127.0.0.2, 127.0.0.3 and
127.0.0.4 stand for the outside world, named through `[egress] resolve`."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import _reap_orphans, _running_descendants, _temp_files, pool_without

from agent.audit import Trace, read_trace, render_timeline
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, say
from agent.replay import call as step_call
from policies import parse_policy
from sandbox import Limits, Pool
from sandbox.egress import EgressConfig
from sandbox.egress.addresses import system_resolver
from tools import Registry

pytestmark = pytest.mark.attack

TOOLS = str(Path(__file__).with_name("egress_tools.py"))
BIG = 2 * 1024 * 1024


class _Weather(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ip = self.server.server_address[0]
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        body = b"x" * BIG if self.path == "/big" else f"weather from {ip} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(ip: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((ip, 0), _Weather)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Holder:
    """Accepts one connection at a time and says when its peer has gone."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.create_server((ip, 0))
        self.port = self.sock.getsockname()[1]
        self.got_line = threading.Event()
        self.gone = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if conn.recv(100):
                    self.got_line.set()
                while conn.recv(100):
                    pass
                self.gone.set()


def _resolver(name: str) -> list[str]:
    """A test resolver: what a hostile or careless DNS might answer; the system's
    resolver for the rest (`localhost`)."""
    answers = {
        "rebind.test": ["10.1.2.3"],
        "meta.test": ["169.254.169.254"],
        "mixed.test": ["93.184.215.14", "192.168.1.1"],
    }
    return answers[name] if name in answers else system_resolver(name)


class World:
    def __init__(self) -> None:
        self.weather = _serve("127.0.0.2")
        self.other = _serve("127.0.0.3")
        self.holder = _Holder("127.0.0.4")
        self.port = self.weather.server_address[1]
        self.other_port = self.other.server_address[1]
        self.config = EgressConfig(
            resolve={
                "api.weather.test": "127.0.0.2",
                "eu.weather.test": "127.0.0.3",
                "hold.weather.test": "127.0.0.4",
                "nowhere.weather.test": "127.0.0.5",
            },
            resolver=_resolver,
            head_timeout_s=1,
        )
        self.limits = Limits(
            timeout_s=20,
            network=(
                f"api.weather.test:{self.port}",
                f"*.weather.test:{self.other_port}",
                f"hold.weather.test:{self.holder.port}",
                f"nowhere.weather.test:{self.port}",
                f"rebind.test:{self.port}",
                "meta.test:80",
                "mixed.test:80",
                f"localhost:{self.port}",
            ),
        )

    def close(self) -> None:
        for server in (self.weather, self.other):
            server.shutdown()
            server.server_close()
        self.holder.sock.close()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


@pytest.fixture(scope="module")
def pool(world: World) -> Iterator[Pool]:
    registry = Registry()
    registry.load(TOOLS)
    curl = shutil.which("curl")
    extra = [os.path.realpath(curl)] if curl else []
    with Pool(registry=registry, size=2, spares=1, egress=world.config, read_paths=extra) as p:
        if not p.layers["network_namespace"].active:
            pytest.skip(f"no network namespace here: {p.layers['network_namespace'].detail}")
        yield p


@pytest.fixture(autouse=True)
def no_leftovers(pool: Pool) -> Iterator[None]:
    """conftest's guard, but the module's pool keeps spare workers between tests: any
    other process, or a file, left by a test fails it."""
    before, files = set(_running_descendants()), _temp_files()
    yield
    _reap_orphans()
    left = set(_running_descendants()) - before - {pool.template_pid}
    left = {pid for pid in left if not _under(pid, pool.template_pid)}
    assert not left, f"the test left processes alive: {left}"
    assert _temp_files() == files


def _under(pid: int, ancestor: int) -> bool:
    try:
        return any(p.pid == ancestor for p in psutil.Process(pid).parents())
    except psutil.Error:
        return True  # gone by now


def call(pool: Pool, world: World, tool: str, **args: object) -> str:
    result = pool.call(tool, args, limits=world.limits)
    assert result.ok, result.error
    return result.output or ""


def test_the_tool_command_prints_each_connection(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    policy = tmp_path / "weather.toml"
    policy.write_text(
        f'[tools.egress_urllib]\nnetwork = ["api.weather.test:{world.port}"]\n'
        f'[egress]\nresolve = {{ "api.weather.test" = "127.0.0.2" }}\n'
    )
    url = f"http://api.weather.test:{world.port}/today"
    argv = ["tool", "egress_urllib", "--tools", str(TOOLS), "--policy", str(policy)]
    assert main([*argv, "--args", json.dumps({"url": url})]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(c["host"], c["allowed"]) for c in printed["connections"]] == [
        ("api.weather.test", True)
    ]
    assert main([*argv, "--args", json.dumps({"url": f"http://evil.test:{world.port}/"})]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert [(c["host"], c["allowed"]) for c in printed["connections"]] == [("evil.test", False)]


def test_an_allowed_name_answers_through_urllib_httpx_requests_and_curl(
    pool: Pool, world: World
) -> None:
    url = f"http://api.weather.test:{world.port}/today"
    clients = ["egress_urllib", "egress_httpx", "egress_requests"]
    clients += ["egress_curl"] if shutil.which("curl") else []
    for tool in clients:
        result = pool.call(tool, {"url": url}, limits=world.limits)
        assert result.ok, result.error
        expected = "weather from 127.0.0.2 /today"
        assert result.output == (f"0 {expected}" if tool == "egress_curl" else expected)
        (conn,) = result.connections
        assert (conn.host, conn.port, conn.address, conn.allowed) == (
            "api.weather.test",
            world.port,
            "127.0.0.2",
            True,
        )
        assert conn.protocol == "http" and conn.bytes_out > 0 and conn.bytes_in > 0
    # The server got an origin-form request for its own name, no proxy headers.
    assert world.weather.seen[-1] == ("/today", f"api.weather.test:{world.port}")


def test_a_wildcard_admits_names_below_it_by_connect_and_socks(pool: Pool, world: World) -> None:
    assert call(pool, world, "egress_tunnel", host="eu.weather.test", port=world.other_port) == (
        "weather from 127.0.0.3 /tunnel"
    )
    out = call(pool, world, "egress_socks", host="eu.weather.test", port=world.other_port)
    assert out == "weather from 127.0.0.3 /socks"
    # `*.weather.test` is names below it, never the name itself.
    refused = call(pool, world, "egress_socks", host="weather.test", port=world.other_port)
    assert refused == "refused: SOCKS5 reply 2"
    for host, kind in (("127.0.0.3", 1), ("::1", 4), ("::ffff:127.0.0.3", 4)):
        out = call(pool, world, "egress_socks", host=host, port=world.other_port, kind=kind)
        assert out == "refused: SOCKS5 reply 2", (host, out)
    for command in (2, 3):  # BIND, UDP ASSOCIATE: not served
        args = {"host": "eu.weather.test", "port": world.other_port, "command": command}
        assert call(pool, world, "egress_socks", **args) == "refused: SOCKS5 reply 7"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://other.test:{port}/", "is not on egress_urllib's network list"),
        ("http://api.weather.test:{hold}/", "is not on egress_urllib's network list"),
        ("http://127.0.0.2:{port}/", "is not on egress_urllib's network list"),
        ("http://rebind.test:{port}/", "resolves to 10.1.2.3, a private address"),
        ("http://localhost:{port}/", "resolves to 127.0.0.1, a loopback address"),  # real DNS
        ("http://meta.test/", "resolves to 169.254.169.254, a cloud metadata address"),
        ("http://mixed.test/", "resolves to 192.168.1.1, a private address"),
        ("http://[::1]:{port}/", "is not on egress_urllib's network list"),
    ],
    ids=["name", "port", "ip", "private-dns", "loopback-dns", "metadata", "mixed", "ipv6"],
)
def test_what_the_list_does_not_admit_is_refused_and_the_model_sees_why(
    pool: Pool, world: World, url: str, why: str
) -> None:
    url = url.format(port=world.port, hold=world.holder.port)
    before = len(world.weather.seen) + len(world.other.seen)
    result = pool.call("egress_urllib", {"url": url}, limits=world.limits)
    assert not result.ok and result.error is not None
    assert why in result.error.message  # the tool's own error says it
    (conn,) = result.connections
    assert not conn.allowed and why in conn.reason
    assert len(world.weather.seen) + len(world.other.seen) == before


@pytest.mark.parametrize(
    "request_line",
    [
        "CONNECT 127.0.0.1:{proxy_port} HTTP/1.1\r\n\r\n",  # the proxy's own address
        "CONNECT [::1]:{port} HTTP/1.1\r\n\r\n",
        "CONNECT [::ffff:127.0.0.2]:{port} HTTP/1.1\r\n\r\n",
        "CONNECT 2130706434:{port} HTTP/1.1\r\n\r\n",  # 127.0.0.2 as inet_aton reads it
        "CONNECT api.weather.test:{port}@evil.test:80 HTTP/1.1\r\n\r\n",
        "GET http://u:p@api.weather.test:{port}/ HTTP/1.1\r\n\r\n",
        "GET ftp://api.weather.test:{port}/ HTTP/1.1\r\n\r\n",
        "GARBAGE\r\n\r\n",
        "CONNECT api.weather.test:{port} HTTP/1.1\r\nno colon here\r\n\r\n",
        "CONNECT api.weather.test:{port} HTTP/1.1\r\nX: " + "a" * 20000 + "\r\n\r\n",
    ],
    ids=["own", "ipv6", "mapped", "inet-aton", "at", "userinfo", "ftp", "garbage", "colon", "huge"],
)
def test_hostile_requests_are_refused(pool: Pool, world: World, request_line: str) -> None:
    data = request_line.replace("{port}", str(world.port))
    answer = call(pool, world, "egress_raw", data=data)
    assert answer.split(" ")[1] in ("400", "403"), answer


def test_a_slow_request_is_cut_off(pool: Pool, world: World) -> None:
    data = f"CONNECT api.weather.test:{world.port} HTTP/1.1\r\n"  # and never the end
    result = pool.call("egress_raw", {"data": data, "pause": True}, limits=world.limits)
    assert result.output == "closed without an answer"
    assert "no whole request within 1 s" in result.connections[0].reason


def test_no_way_around_the_proxy(pool: Pool, world: World) -> None:
    for host in ("127.0.0.2", "10.1.2.3", "169.254.169.254"):
        out = call(pool, world, "egress_direct", host=host, port=world.port)
        assert out.startswith("denied"), out
    # The proxy variables cleared: no name resolves, no address is reached.
    url = f"http://api.weather.test:{world.port}/"
    assert call(pool, world, "egress_unproxied", url=url).startswith("denied")
    assert call(pool, world, "egress_unproxied", url=f"http://127.0.0.2:{world.port}/").startswith(
        "denied"
    )
    # TCP over IPv4 alone: no UDP (no DNS of its own), no IPv6, no raw socket.
    for family, kind in [
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_INET6, socket.SOCK_STREAM),
        (socket.AF_INET, socket.SOCK_RAW),
        (socket.AF_UNIX, socket.SOCK_STREAM),
    ]:
        out = call(pool, world, "egress_socket", family=int(family), kind=int(kind))
        assert out.startswith("denied"), (family, kind, out)


def test_without_a_list_there_is_still_no_network(pool: Pool, world: World) -> None:
    offline = world.limits.model_copy(update={"network": False})
    result = pool.call("egress_socket", {"family": int(socket.AF_INET), "kind": 1}, limits=offline)
    assert result.output is not None and result.output.startswith("denied")
    result = pool.call("egress_urllib", {"url": f"http://api.weather.test:{world.port}/"})
    assert not result.ok and not result.connections


def test_connections_and_bytes_are_capped_per_call(pool: Pool, world: World) -> None:
    limits = world.limits.model_copy(update={"max_connections": 2, "max_egress_mb": 1})
    args = {"host": "api.weather.test", "port": world.port, "count": 4}
    result = pool.call("egress_many", args, limits=limits)
    assert result.output is not None
    assert result.output.splitlines()[:2] == ["HTTP/1.1 200 Connection established"] * 2
    assert result.output.splitlines()[2:] == ["closed", "closed"]
    reasons = [c.reason for c in result.connections]
    assert sum("connections were used (max_connections)" in r for r in reasons) == 1
    big = pool.call(
        "egress_urllib", {"url": f"http://api.weather.test:{world.port}/big"}, limits=limits
    )
    assert not big.ok and big.error is not None
    assert "1 MiB were used (max_egress_mb)" in big.connections[0].reason
    assert "max_egress_mb" in big.error.message  # the model is told, not only the trace
    assert big.connections[0].bytes_in <= 1024 * 1024 + 65536


def test_connections_die_with_the_call(pool: Pool, world: World) -> None:
    world.holder.gone.clear()
    limits = world.limits.model_copy(update={"timeout_s": 2})
    args = {"host": "hold.weather.test", "port": world.holder.port}
    result = pool.call("egress_hold", args, limits=limits)
    assert result.error is not None and result.error.kind == "timeout"
    assert world.holder.got_line.is_set()
    assert pool._egress is not None and pool._egress.open_connections() == 0
    assert world.holder.gone.wait(10)
    (conn,) = result.connections
    assert conn.allowed and conn.bytes_out == len(b"hello\n")


def test_a_policy_gives_one_tool_one_api_and_the_trace_shows_each_connection(
    world: World, tmp_path: Path
) -> None:
    """As the README shows it: the policy file, the agent, the trace."""
    text = f"""
[tools.egress_urllib]
network = ["api.weather.test:{world.port}"]

[egress]
resolve = {{ "api.weather.test" = "127.0.0.2" }}

[run]
model = "scripted"
"""
    policy = parse_policy(text, "weather.toml", tmp_path)
    registry = Registry()
    registry.load(TOOLS)
    script = [
        step_call(
            ("egress_urllib", {"url": f"http://api.weather.test:{world.port}/today"}),
            ("egress_urllib", {"url": f"http://evil.test:{world.port}/"}),
        ),
        say("done"),
    ]
    trace_path = tmp_path / "trace.jsonl"
    with (
        ScriptedModelServer(script) as server,
        Pool(policy, registry=registry, size=1, spares=1, **policy.pool_options()) as pool,
    ):
        model = ModelClient(model="scripted", base_url=server.base_url, api_key="k")
        trace = Trace(trace_path)
        try:
            assert Agent(pool, policy, model, trace=trace).run("weather?").ok
        finally:
            trace.close()
    events = read_trace(trace_path)
    calls = {e["call_id"]: e for e in events if e["event"] == "tool_call"}
    egress = [e for e in events if e["event"] == "egress"]
    assert len(egress) == 2
    good, bad = sorted(egress, key=lambda e: not e["allowed"])
    assert calls[good["call_id"]]["ok"] and not calls[bad["call_id"]]["ok"]
    assert (good["tool"], good["host"], good["port"], good["address"]) == (
        "egress_urllib",
        "api.weather.test",
        world.port,
        "127.0.0.2",
    )
    assert good["bytes_out"] > 0 and good["bytes_in"] > 0 and good["duration_ms"] >= 0
    assert (bad["host"], bad["allowed"], bad["address"]) == ("evil.test", False, None)
    # The model was told, in the tool's own error.
    told = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert any("evil.test" in t and "is not on egress_urllib's network list" in t for t in told)
    timeline = render_timeline(events)
    assert f"egress evil.test:{world.port} REFUSED" in timeline
    assert f"egress api.weather.test:{world.port} (127.0.0.2) allowed" in timeline


def test_a_warm_worker_keeps_its_listener_and_each_call_its_own_connections(
    pool: Pool, world: World
) -> None:
    warm = world.limits.model_copy(update={"reuse_worker": True})
    url = f"http://api.weather.test:{world.port}/warm"
    first = pool.call("egress_urllib", {"url": url}, limits=warm)
    second = pool.call("egress_urllib", {"url": url + "2"}, limits=warm)
    assert first.ok and second.ok, (first.error, second.error)
    assert first.worker_pid == second.worker_pid
    assert len(first.connections) == len(second.connections) == 1
    assert second.output == "weather from 127.0.0.2 /warm2"


def test_an_allowlist_without_a_network_namespace_fails_closed(world: World) -> None:
    registry = Registry()
    registry.load(TOOLS)
    with pool_without(["network_namespace"], registry=registry) as bare:
        url = f"http://api.weather.test:{world.port}/"
        result = bare.call("egress_urllib", {"url": url}, limits=world.limits)
    assert result.error is not None and result.error.kind == "crashed"
    assert "needs the network_namespace layer" in result.error.message
    assert not result.connections
