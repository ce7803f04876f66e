"""The model call on the HTTP library the installed openai client uses (httpx2 from
openai 3, httpx before): the base install has only the one openai pulls in."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import ModelClient
from sandbox.errors import RunError

ROOT = Path(__file__).resolve().parent.parent


def test_the_agent_imports_without_httpx() -> None:
    """`pip install -e .` with openai 3 brings httpx2 and no httpx; `import httpx` in
    agent/model.py made every command, the Quick start's demo first, a traceback."""
    code = "import sys; sys.modules['httpx'] = None; import agent.cli, agent.model"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


class _BreaksOff:
    """An endpoint that promises a body, sends the start of it and hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
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
            conn.sendall(head + b'Content-Length: 1000\r\n\r\n{"choices": [')

    def close(self) -> None:
        self.sock.close()
        self._thread.join(30)


@pytest.fixture
def breaks_off() -> Iterator[_BreaksOff]:
    server = _BreaksOff()
    yield server
    server.close()


def test_an_answer_broken_off_mid_body_is_a_run_error(breaks_off: _BreaksOff) -> None:
    """The error a broken body raises is the HTTP library's own; caught as httpx's
    while openai raised httpx2's, it reached `run` as a traceback."""
    client = ModelClient(model="m", base_url=breaks_off.base_url, api_key="k", max_retries=0)
    with pytest.raises(RunError, match="broke off its answer"):
        client.complete([{"role": "user", "content": "hi"}], [], timeout_s=30)


class _Silent:
    """An endpoint that takes every request and never answers; counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # so that close() ends the accept loop
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.requests = 0
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests += 1
            self._open.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.sock.close()
        for conn in self._open:
            conn.close()


def test_retries_stay_inside_the_runs_budget() -> None:
    """Each try waits at most the request timeout and no retry starts that the budget
    cannot hold: the client gave every try the whole budget and retried three times,
    so a slow server held `run --max-wall-s 240` for 348 s."""
    server = _Silent()
    try:
        client = ModelClient(
            model="m", base_url=server.base_url, api_key="k", timeout_s=1.0, max_retries=5
        )
        with pytest.raises(RunError, match="did not answer in time"):
            client.complete([{"role": "user", "content": "hi"}], [], timeout_s=3.0)
    finally:
        server.close()
    # Tries of 1 s, waits of 0.5 s and 1 s, none begun with under 1 s left: 2 at most.
    assert 1 <= server.requests <= 2


class _EndlessError:
    """An endpoint that answers 400 with a body that never ends: a flood first, then a
    byte now and then, each well within the client's read timeout."""

    def __init__(self, flood: int) -> None:
        self.flood = flood
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(1 << 16)
            head = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            try:
                conn.sendall(head + b"Content-Length: 1000000000\r\n\r\n" + b" " * self.flood)
                while not self._stop.wait(0.2):
                    conn.sendall(b" ")
            except OSError:
                return  # the client hung up: what it should do

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(30)


@pytest.mark.parametrize(("api", "flood"), [("chat", 4 << 20), ("responses", 0)])
def test_an_error_body_that_never_ends_is_cut_and_the_status_said(api: str, flood: int) -> None:
    """The openai client reads a whole error body before it raises, with nothing but the
    read timeout between two bytes: a 400 whose body never ended held the run forever
    (and a 2 GB one grew the process to 7 GB). The body is cut, the status reported."""
    server = _EndlessError(flood)
    said: list[BaseException] = []

    def complete() -> None:
        client = ModelClient(
            model="m", base_url=server.base_url, api_key="k", timeout_s=2.0, max_retries=0, api=api
        )
        try:
            client.complete([{"role": "user", "content": "hi"}], [], timeout_s=5.0)
        except BaseException as exc:
            said.append(exc)

    caller = threading.Thread(target=complete, daemon=True)
    try:
        caller.start()
        caller.join(120)  # never, before: the body never ends
        assert not caller.is_alive(), "the client is still reading the error body"
    finally:
        server.close()
    [error] = said
    assert isinstance(error, RunError) and "HTTP 400" in str(error), repr(error)


def test_an_error_body_is_bounded_after_decompression() -> None:
    """1 MiB of gzip is up to 1 GB of body (a 900 KB one grew the process to 2.7 GB): the
    bound holds for what it decodes to, and a real compressed error still reads."""
    import gzip
    import importlib

    import openai

    from agent.error_bodies import ERROR_BODY_BYTES, bound_error_body

    # The HTTP library the installed openai client is built on (httpx2, or httpx).
    library = openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0]
    http = importlib.import_module(library)

    def error(body: bytes) -> Any:
        request = http.Request("POST", "http://127.0.0.1/v1/responses")
        response = http.Response(
            500, headers={"content-encoding": "gzip"}, stream=http.ByteStream(body), request=request
        )
        bound_error_body(response)
        response.read()
        return response

    bomb = gzip.compress(b"\0" * (48 << 20))  # 48 MiB of zeros in about 48 KB
    assert len(error(bomb).content) <= ERROR_BODY_BYTES
    said = error(gzip.compress(json.dumps({"error": {"message": "boom"}}).encode()))
    assert said.json() == {"error": {"message": "boom"}}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b"{bad"])
def test_the_scripted_server_answers_a_body_that_is_not_an_object_with_400(body: bytes) -> None:
    """The demo's and the tests' endpoint: a body that is no JSON object is refused,
    not a traceback in its handler thread."""
    import urllib.error
    import urllib.request

    from agent.replay import ScriptedModelServer, say

    with ScriptedModelServer([say("hi")]) as server:
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions", data=body, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert "error" in json.loads(refused.value.read())


@pytest.mark.parametrize(
    ("status", "body", "path", "said"),
    [
        (
            405,
            b"<html><title>405 Method Not Allowed</title></html>",
            "/v1",
            "failed with HTTP 405: 405 Method Not Allowed; that is not an OpenAI-compatible "
            "API's error: is {url} the API's base URL (for example http://localhost:11434/v1)?",
        ),
        (
            404,
            b"404 page not found",
            "/",
            "does not know model 'm' or the route (404); an OpenAI-compatible API's base URL "
            "usually ends in /v1 ({bare}/v1?)",
        ),
    ],
)
def test_an_endpoint_that_is_not_the_api_is_said_so(
    status: int, body: bytes, path: str, said: str
) -> None:
    """A web server's page was `failed with HTTP 405: Error code: 405`; Ollama's root
    without /v1 a 404 that did not say where the API is."""
    from agent.replay import ScriptedModelServer, Step

    step = Step(status=status, raw=body, headers={"Content-Type": "text/html"})
    with ScriptedModelServer([step]) as server:
        bare = server.base_url.removesuffix("/v1")
        url = bare + path
        client = ModelClient(model="m", base_url=url, api_key="k", max_retries=0)
        with pytest.raises(RunError) as caught:
            client.complete([{"role": "user", "content": "hi"}], [], timeout_s=30)
    assert str(caught.value) == f"the model at {url} " + said.format(url=url, bare=bare)
