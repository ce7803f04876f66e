"""A small OpenAI-compatible HTTP server on 127.0.0.1 that plays scripted model turns.

The demo replays a recorded transcript through it when no endpoint is configured, and
the tests script every failure mode with it; either way the real `openai` client talks
to it over real HTTP, so the agent loop cannot tell it from a real endpoint.

    with ScriptedModelServer([say("Hello")]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none")
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Step:
    """One answer of the scripted model: a completion, or an HTTP error."""

    message: dict[str, Any] | None = None
    finish_reason: str = "stop"
    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 5}
    )
    status: int = 200
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None
    """Sent as the body verbatim (a broken or hostile endpoint)."""

    def body(self, model: str) -> dict[str, Any]:
        if self.status != 200:
            return {
                "error": {
                    "message": self.error or "scripted error",
                    "type": "scripted",
                    "code": self.status,
                }
            }
        usage = dict(self.usage)
        if "prompt_tokens" in usage:
            usage.setdefault(
                "total_tokens", usage["prompt_tokens"] + usage.get("completion_tokens", 0)
            )
        return {
            "id": f"chatcmpl-{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": self.message, "finish_reason": self.finish_reason}],
            "usage": usage,
        }

    def responses_body(self, model: str) -> dict[str, Any]:
        """The same answer as a Responses API body (`POST /v1/responses`)."""
        if self.status != 200:
            return self.body(model)
        message = self.message or {}
        output: list[dict[str, Any]] = []
        if message.get("content"):
            output.append(
                {
                    "type": "message",
                    "id": f"msg_{next(_ids)}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": message["content"], "annotations": []}
                    ],
                }
            )
        for tool_call in message.get("tool_calls") or []:
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_{next(_ids)}",
                    "call_id": tool_call["id"],
                    "name": tool_call["function"]["name"],
                    "arguments": tool_call["function"]["arguments"],
                    "status": "completed",
                }
            )
        cut = self.finish_reason in ("length", "content_filter")
        reason = "max_output_tokens" if self.finish_reason == "length" else self.finish_reason
        usage = {
            "input_tokens": self.usage.get("prompt_tokens", 0),
            "output_tokens": self.usage.get("completion_tokens", 0),
        }
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        return {
            "id": f"resp_{next(_ids)}",
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": reason} if cut else None,
            "output": output,
            "usage": usage,
        }


def say(text: str, **kwargs: Any) -> Step:
    """The model answers in words."""
    return Step(message={"role": "assistant", "content": text}, **kwargs)


def call(*calls: tuple[str, dict[str, Any] | str], **kwargs: Any) -> Step:
    """The model asks for tool calls: `call(("read_file", {"path": "policy.txt"}))`.
    A str instead of a dict is sent as the raw arguments text (for malformed JSON)."""
    tool_calls = [
        {
            "id": f"call_{next(_ids)}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        }
        for name, args in calls
    ]
    return Step(
        message={"role": "assistant", "content": None, "tool_calls": tool_calls},
        finish_reason=kwargs.pop("finish_reason", "tool_calls"),
        **kwargs,
    )


def fail(status: int, error: str = "", **kwargs: Any) -> Step:
    return Step(status=status, error=error, **kwargs)


Script = list[Step] | Callable[[dict[str, Any]], Step]


def hashed_embedding(text: str, dimensions: int = 64) -> list[float]:
    """A toy embedding for the loopback `/embeddings`: each word hashed to a direction.
    Texts that share words are close; nothing more is claimed."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % dimensions] += 1.0 if digest[1] % 2 else -1.0
    return vector


class ScriptedModelServer:
    """Serves `POST /v1/chat/completions` (and `/v1/responses`, the same steps in that
    API's shape) from a script: a list of steps played in order, or a function of the
    request. Every request is kept in `requests`, its path in `routes`.
    `POST /v1/embeddings` answers with `embed(text)` for each input."""

    def __init__(
        self,
        script: Script,
        embed: Callable[[str], list[float]] = hashed_embedding,
        responses: bool = True,
        port: int = 0,
    ) -> None:
        self.script = script
        self.responses = responses
        """`POST /v1/responses` plays the same script as Responses API bodies; False:
        404 there, as a server that serves only Chat Completions."""
        self.routes: list[str] = []
        self.embed = embed
        self.embedded: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._position = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]}
                    )
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "invalid JSON"}})
                    return
                if not isinstance(request, dict):
                    self._send(400, {"error": {"message": "the body must be a JSON object"}})
                    return
                if self.path.rstrip("/").endswith("/embeddings"):
                    self._send(200, server._embeddings(request))
                    return
                route = self.path.rstrip("/")
                responses = route.endswith("/responses") and server.responses
                if not route.endswith("/chat/completions") and not responses:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                step = server._next(request, dict(self.headers), route)
                if step.delay_s:
                    time.sleep(step.delay_s)
                model = request.get("model", "scripted")
                answer = step.responses_body if responses else step.body
                body = step.raw if step.raw is not None else answer(model)
                self._send(step.status, body, step.headers)

            def _send(
                self,
                status: int,
                body: dict[str, Any] | bytes,
                headers: dict[str, str] | None = None,
            ) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to tell it

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, daemon=True, name="scripted-model-server"
        )

    def _next(self, request: dict[str, Any], headers: dict[str, str], route: str) -> Step:
        with self._lock:
            self.requests.append(request)
            self.routes.append(route)
            self.headers.append(headers)
            if callable(self.script):
                return self.script(request)
            if self._position >= len(self.script):
                return fail(500, "the script has no more steps")
            step = self.script[self._position]
            self._position += 1
            return step

    def play(self, script: Script) -> None:
        """Play `script` from its first step on, with `requests` emptied: one server
        for many runs (each start and stop costs the serving thread's poll interval)."""
        with self._lock:
            self.script = script
            self._position = 0
            self.requests.clear()
            self.headers.clear()
            self.routes.clear()

    def _embeddings(self, request: dict[str, Any]) -> dict[str, Any]:
        texts = request.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        with self._lock:
            self.embedded.extend(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": self.embed(str(text))}
            for i, text in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return {"object": "list", "data": data, "model": request.get("model"), "usage": usage}

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ScriptedModelServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
