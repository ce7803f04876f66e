"""A hostile model endpoint, through the real `openai` client: one raw-socket server for
the module, whose base URL's first path segment picks what it does wrong. Whatever it
sends, the call ends by the run's deadline with one clear line."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.audit import Trace, read_trace
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, say
from policies import parse_policy
from sandbox import Pool
from sandbox.errors import RunError

ANSWER = json.dumps(
    {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
).encode()

MANY_VALUES = ANSWER[:-1] + b', "pad": [' + b"{}," * 1_200_000 + b"{}]}"
"""3.6 MB that json.loads makes 1.2 million dicts of (64 MiB of them: 3 GB, 50 s)."""


def _reply(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


class Hostile:
    """Answers `POST /MODE/v1/...` as MODE says. Every byte it drips comes well within
    the client's read timeout, so only the run's own deadline can end the call."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.modes: dict[str, Callable[[socket.socket], None]] = {
            "drip_status": lambda c: self._drip(c, b"HTTP/1.1 200 OK\r\n"),
            "drip_headers": lambda c: self._drip(
                c, b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * 200 + b"\r\n"
            ),
            "drip_body": lambda c: self._drip(
                c, b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n{", b" "
            ),
            "ok": lambda c: c.sendall(_reply("200 OK", ANSWER)),
            "vector": self._vector,
            "values": lambda c: c.sendall(_reply("200 OK", MANY_VALUES)),
            "same_origin": lambda c: c.sendall(
                _reply("307 Temporary Redirect", b"", "Location: /ok/v1/chat/completions")
            ),
            "elsewhere": lambda c: c.sendall(
                _reply(
                    "307 Temporary Redirect",
                    b"",
                    f"Location: http://127.0.0.2:{self.port}/ok/v1/chat/completions",
                )
            ),
            "loop": lambda c: c.sendall(
                _reply("302 Found", b"", "Location: /loop/v1/chat/completions")
            ),
        }
        self.requests: list[tuple[str, str]] = []
        self.sent = 0
        """Bytes of the last `vector` answer the client took."""
        """(the address it was sent to, the path) of each request."""
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._listeners = [self.sock, socket.create_server(("127.0.0.2", self.port))]
        for listener in self._listeners:
            listener.settimeout(0.2)
            self._spawn(self._accept, listener)

    def base_url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._open.append(conn)
            self._spawn(self._serve, conn, listener.getsockname()[0])

    def _serve(self, conn: socket.socket, address: str) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while True:  # keep-alive: one request after another
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(1 << 16)
                        if not chunk:
                            return
                        data += chunk
                    head, body = data.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    length = next(
                        (
                            int(h.split(":")[1])
                            for h in lines
                            if h.lower().startswith("content-length")
                        ),
                        0,
                    )
                    while len(body) < length:
                        body += conn.recv(1 << 16)
                    path = lines[0].split()[1]
                    self.requests.append((address, path))
                    self.modes[path.split("/")[1]](conn)
            except OSError:
                return  # the client hung up: what it should do

    def _drip(self, conn: socket.socket, first: bytes, then: bytes = b"X") -> None:
        conn.sendall(first)
        while not self.stop.wait(0.2):
            conn.sendall(then)
        raise OSError("stopped")

    def _vector(self, conn: socket.socket) -> None:
        """An embedding of 256 MiB of zeros, then silence: how much the client takes."""
        self.sent = 0
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        conn.sendall(b'{"data": [{"embedding": [')
        block = b"0.0," * (1 << 14)
        for _ in range((256 << 20) // len(block)):
            conn.sendall(block)
            self.sent += len(block)
        self.stop.wait(30)
        raise OSError("done")

    def close(self) -> None:
        self.stop.set()
        for listener in self._listeners:
            listener.close()
        for conn in self._open:  # a client's idle keep-alive connection
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(30)


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


def _complete(base_url: str, deadline_s: float = 30.0) -> BaseException | str:
    """One call with a read timeout of 30 s and the run's deadline `deadline_s`; what
    it said. On a thread: a call that never ends must fail the test, not hang it."""
    said: list[BaseException | str] = []

    def complete() -> None:
        client = ModelClient(model="m", base_url=base_url, api_key="k", timeout_s=30.0)
        try:
            turn = client.complete([{"role": "user", "content": "hi"}], [], timeout_s=deadline_s)
            said.append(str(turn.message.get("content")))
        except BaseException as exc:
            said.append(exc)

    caller = threading.Thread(target=complete, daemon=True)
    caller.start()
    caller.join(120)
    assert not caller.is_alive(), "the model call outlived the run's deadline"
    return said[0]


@pytest.mark.parametrize("mode", ["drip_status", "drip_headers", "drip_body"])
def test_an_endpoint_that_drips_is_cut_off_at_the_runs_deadline(
    hostile: Hostile, mode: str
) -> None:
    """Each read was bounded by the read timeout alone: an endpoint that sent its status
    line or headers a byte at a time held `run` forever, whatever `--max-wall-s` said."""
    said = _complete(hostile.base_url(mode), deadline_s=2.0)
    assert isinstance(said, RunError), said
    assert "in time" in str(said), said


def test_a_redirect_is_followed_only_within_the_endpoint(hostile: Hostile) -> None:
    """The client followed any redirect: an endpoint could send the conversation (every
    tool result in it) to another host. Within the endpoint's own origin it still
    answers; elsewhere the error names where it pointed, and nothing is sent there."""
    assert _complete(hostile.base_url("same_origin")) == "hi"
    hostile.requests.clear()
    said = _complete(hostile.base_url("elsewhere"))
    assert isinstance(said, RunError), said
    assert "redirected to http://127.0.0.2:" in str(said) and "HTTP 307" in str(said)
    assert [address for address, _ in hostile.requests] == ["127.0.0.1"]


def test_a_redirect_loop_says_so(hostile: Hostile) -> None:
    """It read `connection failed (is the server running?)`, and was retried."""
    hostile.requests.clear()
    said = _complete(hostile.base_url("loop"))
    assert isinstance(said, RunError), said
    assert "redirected too many times" in str(said), said
    assert len(hostile.requests) <= 21  # one try: a loop does not heal


def test_an_answer_of_millions_of_values_is_refused_before_it_is_built(hostile: Hostile) -> None:
    """Within the 64 MiB an answer may have, `{},` repeated made json.loads build 3 GB
    of objects in 50 s of CPU, after the deadline was checked for the last time."""
    said = _complete(hostile.base_url("values"))
    assert isinstance(said, RunError), said
    assert "more than 1,000,000 values" in str(said), said


def test_a_flood_of_calls_in_one_turn_ends_the_run(tmp_path: Path) -> None:
    """A turn of thousands of calls was kept and answered call by call: a note, a trace
    line and a checkpoint each, and the conversation, resent, took the client longer to
    prepare than the run's budget (2,000 calls: 50 s of a 20 s `run`). Past a ceiling
    the turn is refused whole, and the conversation keeps no call without its answer."""
    calls = [
        {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "get_current_date", "arguments": "{}"},
        }
        for i in range(2000)
    ]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    body = {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
    policy = parse_policy('[run]\nmodel = "m"\nmax_retries = 0\n', "t.toml", tmp_path)
    trace_path = tmp_path / "trace.jsonl"
    script = [Step(raw=json.dumps(body).encode()), say("no")]
    with ScriptedModelServer(script) as server, Pool(policy, size=1) as pool:
        model = ModelClient(model="m", base_url=server.base_url, api_key="k", max_retries=0)
        trace = Trace(trace_path)
        try:
            result = Agent(pool, policy, model, trace=trace).run("what day is it?")
        finally:
            trace.close()
    assert result.reason == "model_error"
    assert "2000 tool calls in one turn" in result.message, result.message
    assert not any(m.get("tool_calls") for m in result.messages)
    events = read_trace(trace_path)
    assert [e["event"] for e in events] == ["run_started", "model_call", "run_ended"]


def test_the_cost_budget_holds_whatever_model_the_endpoint_says_answered(
    tmp_path: Path,
) -> None:
    """The price was looked up by the model the answer names: an endpoint that named one
    without a price was free, and the cost budget never stopped it. The run is charged
    at the price of the model it asked for, or the answer's name if that costs more."""
    answer = {
        "model": "free-of-charge",
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10_000, "completion_tokens": 0},
    }
    loops = json.loads(json.dumps(answer))
    loops["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "a", "function": {"name": "get_current_date", "arguments": "{}"}},
        ],
    }
    text = '[run]\nmodel = "m"\nmax_retries = 0\nmax_cost_usd = 0.01\n'
    text += "[run.prices.m]\ninput_per_million = 1000.0\noutput_per_million = 0.0\n"
    policy = parse_policy(text, "t.toml", tmp_path)
    script = [Step(raw=json.dumps(loops).encode()), Step(raw=json.dumps(answer).encode())]
    with ScriptedModelServer(script) as server, Pool(policy, size=1) as pool:
        model = ModelClient(model="m", base_url=server.base_url, api_key="k", max_retries=0)
        result = Agent(pool, policy, model).run("what day is it?")
    assert result.reason == "max_cost", (result.reason, result.message)
    assert result.cost_usd == pytest.approx(10.0)


@pytest.mark.parametrize(
    "reply",
    [
        '{"score": ' + "9" * 4000 + "}",  # a float too large: OverflowError
        '{"score": 0.5, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"score": {"a": 1}}',
    ],
)
def test_a_judges_reply_of_any_shape_is_a_verdict(reply: str) -> None:
    """The eval's judge is a model endpoint too: a score of 4,000 digits was an
    OverflowError, a traceback out of `sandboxed-agent eval`."""
    from agent.evals.judge import parse_verdict

    verdict = parse_verdict(reply)
    assert verdict.score is None and verdict.reason.startswith("the judge"), verdict


@pytest.mark.parametrize("mode", ["drip_status", "vector"])
def test_the_embeddings_endpoint_is_bounded_too(hostile: Hostile, mode: str) -> None:
    """The memory tools' embeddings go through the SDK, which reads a body whole with
    nothing but the read timeout: headers a byte at a time held the run forever, and
    400 MB of `0.0,` grew it to 5 GB. Either way there is no vector, and full text."""
    from agent.embeddings import Embedder

    url = hostile.base_url(mode)
    embedder = Embedder(model="e", base_url=url, api_key="k", timeout_s=2.0, max_retries=0)
    said: list[object] = []
    caller = threading.Thread(target=lambda: said.append(embedder.embed("hi")), daemon=True)
    caller.start()
    caller.join(120)
    assert not caller.is_alive(), "the embedding outlived the run's deadline"
    assert said == [None] and embedder.last_error
    assert hostile.sent < 64 << 20  # what the client read, and the socket buffers
