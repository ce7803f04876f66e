"""One model call through the official `openai` client, and its failures in one line.

The client retries what retrying can fix (connection errors, 408, 409, 429 honouring
`Retry-After`, 5xx) with exponential backoff; what is left is translated here, once,
into a `RunError` whose message says what happened and what to check. No message
includes the API key or a request header, and what the endpoint sends back is scrubbed
of the key before anything else sees it (an endpoint may echo the Authorization
header in an error body or in its answer).
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sandbox.errors import RunError

from . import responses_api
from .error_bodies import bound_error_body, bound_every_body
from .http_deadline import bound_by_deadlines, until
from .redirects import REFUSED, same_origin_redirects
from .scrubbing import remember_secret, scrub, scrub_data
from .text_calls import read_text_calls

if TYPE_CHECKING:
    import openai


def _sdk() -> Any:
    """The `openai` package, imported on the first model call: it takes about a second
    to import, which every command that calls no model (doctor, tool, approve, mcp
    serve, a usage error) would otherwise pay."""
    import openai

    return openai


@functools.cache
def _http_errors() -> tuple[type[Exception], ...]:
    """The HTTP library's base error, which a body broken off mid-read raises (not an
    `openai.APIError`): httpx2 from openai 3, httpx before. Neither is a dependency of
    ours, so a plain `pip install -e .` may have only one of them."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except ImportError:
            continue
    return tuple(errors)


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    """Of `input_tokens`, those the server took from its prompt cache rather than read
    again (`prompt_tokens_details.cached_tokens`: OpenAI, llama.cpp); 0: none, or not
    said."""


@dataclass(frozen=True)
class ModelTurn:
    message: dict[str, Any]
    """The assistant message, ready to append to the conversation."""
    finish_reason: str
    usage: Usage
    latency_s: float
    model: str
    text_calls: str | None = None
    """The tool calls came as text in the content, in this format (`agent.text_calls`),
    and were read into `message["tool_calls"]`; None: none were."""
    text_call_repairs: tuple[str, ...] = ()
    """What had to be fixed to read them (`trailing_commas`)."""
    tool_choice_refused: str | None = None
    """The `tool_choice` this call asked for and did not send, because the server
    refused it (HTTP 400 naming tool_choice): "required" went as the server's own
    choice (auto), "none" as a call without tools; "json_schema": the one-call schema
    of `required_as` was refused, and `tool_choice: "required"` went instead. None:
    sent as asked."""


def openai_client(
    base_url: str | None,
    api_key: str | None,
    timeout_s: float,
    max_retries: int,
    max_body_bytes: int | None = None,
) -> openai.OpenAI:
    """`max_body_bytes`: every answer's body is cut there (for a client whose answers
    the SDK reads whole); else only error bodies are, and `read_body` bounds the rest."""
    openai = _sdk()
    bodies = bound_every_body(max_body_bytes) if max_body_bytes else bound_error_body
    hooks = {"response": [same_origin_redirects, bodies]}
    http_client = openai.DefaultHttpxClient(event_hooks=hooks)
    bound_by_deadlines(http_client)  # `until` then holds for every read, headers too
    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key or "not-needed",  # local servers take any key
        timeout=timeout_s,
        max_retries=max_retries,
        http_client=http_client,
    )


API = ("chat", "responses")
"""How the model is reached: Chat Completions (the default), or the Responses API."""


class ModelClient:
    """Chat Completions (or `api="responses"`: the Responses API) with tools, against any
    OpenAI-compatible endpoint."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        max_output_tokens: int | None = None,
        api: str = "chat",
        parallel_tool_calls: bool | None = None,
        required_as: str = "tool_choice",
        tools_sent: str = "offered",
    ) -> None:
        if api not in API:
            raise ValueError(f"api must be one of {', '.join(API)} (got {api!r})")
        self.api = api
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.parallel_tool_calls = parallel_tool_calls
        self.required_as = required_as
        """How a call that must call a tool asks for one (`[run] required_as`):
        `tool_choice: "required"`, or `json_schema`, a `response_format` that admits one
        call of an offered tool and nothing else (Chat Completions only)."""
        """Sent with each call that offers tools (`[run] parallel_tool_calls`); None: not."""
        if tools_sent not in TOOLS_SENT:
            raise ValueError(
                f"tools_sent must be one of {', '.join(TOOLS_SENT)} (got {tools_sent!r})"
            )
        self.tools_sent = tools_sent
        """`[run] tools_sent`: a call narrowed to some of its tools sends those alone
        (`offered`), or all of them and the narrowing in `tool_choice` or the one-call
        schema (`all`), so that the prompt's start, where servers render the tools, is
        the same on every call of a run and a prompt cache keeps it."""
        self.base_url = base_url
        self.timeout_s = timeout_s
        remember_secret(api_key)
        self.max_retries = max_retries
        self._client = openai_client(base_url, api_key, timeout_s, 0)
        self._refused: set[str] = set()
        """`tool_choice` values this server refused: not sent again (`_fallback`)."""

    def refused_before(self, values: list[str]) -> None:
        """`tool_choice` values (and `json_schema`) this server refused before, to
        another client of the same run (a run on Temporal, whose calls move between
        workers): not sent again, as if this client had been refused them."""
        known = ("required", "none", JSON_SCHEMA, ALLOWED_TOOLS)
        self._refused.update(v for v in values if v in known)

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout_s: float,
        tool_choice: str | None = None,
        offered: Collection[str] | None = None,
    ) -> ModelTurn:
        """One completion. Tool calls the model wrote as text in its content, for the
        tools sent only, come back as `tool_calls` (`ModelTurn.text_calls` says so).
        `tool_choice` ("none": answer in words) is sent only when given. `offered`: the
        names of `tools` this call may call (None: all of them); how the narrowing is
        sent is `tools_sent`'s."""
        names = [t["function"]["name"] for t in tools]
        allowed = [t for t in tools if offered is None or t["function"]["name"] in offered]
        narrowed = len(allowed) < len(names)
        if narrowed and (self.tools_sent == "offered" or ALLOWED_TOOLS in self._refused):
            tools, narrowed = allowed, False  # the tools of this call alone, as before
        if narrowed and not allowed and tool_choice != "none":
            tool_choice = "none"  # nothing may be called now: said without a tool list change
        refused = tool_choice if tool_choice in self._refused else None
        sent_tools, sent_choice = _fallback(tools, tool_choice) if refused else (tools, tool_choice)
        choice: str | dict[str, Any] | None = sent_choice
        schema = None
        if sent_choice == "required" and allowed and self._by_schema():
            # llama.cpp lets prose come before a required call, and the small model
            # wrote prose until its output limit: the schema admits the call alone,
            # of the tools offered now only, whatever the list sent.
            choice, schema = None, one_call_format(allowed)
        elif narrowed and sent_choice != "none" and sent_tools:
            choice = allowed_tools(allowed, sent_choice or "auto", self.api)
        try:
            turn = self._complete(messages, sent_tools, timeout_s, choice, schema)
        except _Refused as exc:
            # Once per value and client: the call again without it, said in the trace.
            self._refused.add(exc.what)
            return self.complete(messages, tools, timeout_s, tool_choice, offered)
        except RunError as exc:
            raise RunError(scrub(str(exc))) from None
        if not refused and tool_choice == "required" and self.required_as == JSON_SCHEMA:
            refused = JSON_SCHEMA if JSON_SCHEMA in self._refused else None
        if not refused and offered is not None and ALLOWED_TOOLS in self._refused:
            refused = ALLOWED_TOOLS if len(sent_tools) < len(names) else None
        if refused:
            turn = replace(turn, tool_choice_refused=refused)
        return with_text_calls(turn, sent_tools)

    def _by_schema(self) -> bool:
        return (
            self.required_as == "json_schema"
            and self.api == "chat"
            and JSON_SCHEMA not in self._refused
        )

    def _complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout_s: float,
        tool_choice: str | dict[str, Any] | None = None,
        schema: dict[str, Any] | None = None,
    ) -> ModelTurn:
        openai = _sdk()
        start = time.monotonic()
        deadline = start + timeout_s
        tries = 0
        while True:
            # Our own retries, not the client's: it gave every try the whole budget, and
            # a slow server held `run --max-wall-s 240` for 348 s. Each try here waits at
            # most the request timeout, and none starts that the budget cannot hold.
            per_try = min(self.timeout_s, deadline - time.monotonic())
            try:
                return self._try(messages, tools, per_try, deadline, tool_choice, start, schema)
            except openai.APIError as exc:
                if schema and _refuses(exc, "response_format", "json_schema", "grammar"):
                    raise _Refused(JSON_SCHEMA) from None
                if tool_choice and _refuses(exc, "tool_choice", "tool choice", ALLOWED_TOOLS):
                    raise _Refused(
                        tool_choice if isinstance(tool_choice, str) else ALLOWED_TOOLS
                    ) from None
                tries += 1
                wait = _retry_wait(exc, tries)
                if (
                    wait is None
                    or tries > self.max_retries
                    or time.monotonic() + wait + MIN_TRY_S > deadline
                ):
                    said = describe_api_error(exc, self.model, self.base_url)
                    if self.api == "responses" and isinstance(exc, openai.NotFoundError):
                        said += "; does it serve /v1/responses? (--api chat: /chat/completions)"
                    raise RunError(said) from None
                time.sleep(wait)

    def _try(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout_s: float,
        deadline: float,
        tool_choice: str | dict[str, Any] | None,
        start: float,
        schema: dict[str, Any] | None = None,
    ) -> ModelTurn:
        try:
            # Streamed, so that the body is read against the deadline: the client's
            # timeout bounds each read, and an endpoint that sends a byte now and then
            # would otherwise hold the run past its budget (and past any size).
            with (
                until(deadline),
                self._request(messages, tools, timeout_s, tool_choice, schema) as raw,
            ):
                body = read_body(raw.iter_bytes(), deadline, self.base_url)
        except _http_errors() as exc:  # while reading the body: the client retries no more
            where = self.base_url or "the OpenAI API"
            if "Timeout" in type(exc).__name__:  # the run's deadline (`until`) came first
                raise RunError(f"the model at {where} did not finish its answer in time") from None
            raise RunError(
                f"the model at {where} broke off its answer: {type(exc).__name__}"
            ) from None
        # Parsed here rather than by the SDK, which accepts any shape without complaint:
        # a broken or hostile endpoint gets one clear error, never a traceback.
        parse = parse_responses if self.api == "responses" else parse_completion
        message, finish_reason, usage, model = parse(body, self.model, self.base_url)
        return ModelTurn(
            message=scrub_data(message),
            finish_reason=scrub(finish_reason),
            usage=usage,
            latency_s=time.monotonic() - start,
            model=scrub(model),
        )

    def _request(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout_s: float,
        tool_choice: str | dict[str, Any] | None,
        schema: dict[str, Any] | None = None,
    ) -> Any:
        """The streamed request, through the API this client speaks."""
        openai = _sdk()
        choice = tool_choice if tools and tool_choice else openai.NOT_GIVEN
        parallel = self.parallel_tool_calls
        parallel = parallel if tools and parallel is not None else openai.NOT_GIVEN
        if self.api == "responses":
            return self._client.responses.with_streaming_response.create(
                model=self.model,
                input=responses_api.to_input(messages),  # type: ignore[arg-type]
                tools=responses_api.to_tools(tools) or openai.NOT_GIVEN,  # type: ignore[arg-type]
                tool_choice=choice,  # type: ignore[arg-type]
                parallel_tool_calls=parallel,
                max_output_tokens=self.max_output_tokens or openai.NOT_GIVEN,
                store=False,
                timeout=timeout_s,
            )
        return self._client.chat.completions.with_streaming_response.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            tools=tools or openai.NOT_GIVEN,  # type: ignore[arg-type]
            tool_choice=choice,  # type: ignore[arg-type]
            parallel_tool_calls=parallel,
            response_format=schema or openai.NOT_GIVEN,  # type: ignore[arg-type]
            max_tokens=self.max_output_tokens or openai.NOT_GIVEN,
            timeout=timeout_s,
        )


JSON_SCHEMA = "json_schema"
"""`required_as`'s other way, and what a server that refuses it is remembered by."""
ALLOWED_TOOLS = "allowed_tools"
"""The `tool_choice` that narrows a call to some of the tools sent (`tools_sent =
"all"`), and what a server that refuses it is remembered by: it then gets the tools
of each call alone, as with `tools_sent = "offered"`."""
TOOLS_SENT = ("offered", "all")


def allowed_tools(tools: list[dict[str, Any]], mode: str, api: str = "chat") -> dict[str, Any]:
    """OpenAI's `tool_choice` that lets a call use only `tools` of those sent, `mode`
    "auto" or "required", in the API's own shape. llama.cpp reads any `tool_choice`
    that is not a string as "auto": there the loop's refusal of a tool not offered
    is what holds (and `required_as = "json_schema"` what makes a call required)."""
    names = [t["function"]["name"] for t in tools]
    if api == "responses":
        listed: list[dict[str, Any]] = [{"type": "function", "name": n} for n in names]
        return {"type": ALLOWED_TOOLS, "mode": mode, "tools": listed}
    listed = [{"type": "function", "function": {"name": n}} for n in names]
    return {"type": ALLOWED_TOOLS, ALLOWED_TOOLS: {"mode": mode, "tools": listed}}


class _Refused(Exception):
    """The server answered HTTP 400 about the request's `tool_choice` (or its
    `response_format`): `what` it refused."""

    def __init__(self, what: str) -> None:
        self.what = what


def _refuses(exc: openai.APIError, *names: str) -> bool:
    """A 400 whose message names one of `names` (llama.cpp and vLLM builds without
    "required", endpoints that take no tool_choice or response_format at all)."""
    openai = _sdk()
    if not isinstance(exc, openai.BadRequestError):
        return False
    said = f"{_error_message(exc)} {exc.message}".lower()
    return any(name in said for name in names)


def one_call_format(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A `response_format` whose JSON schema admits exactly one call of one of `tools`,
    `{"name": TOOL, "arguments": {...}}` with the tool's own parameters schema, and
    nothing else. The answer comes back as that JSON in the content, which is read as
    a call like any other written as text (`agent.text_calls`)."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return {
        "type": "json_schema",
        "json_schema": {"name": "one_tool_call", "schema": {"anyOf": calls}},
    }


def _fallback(
    tools: list[dict[str, Any]], tool_choice: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """What is sent instead of a refused `tool_choice`: "none" (answer in words) as a
    call without tools, which means the same; anything else as the server's own
    choice (auto)."""
    return ([], None) if tool_choice == "none" else (tools, None)


MIN_TRY_S = 1.0
"""A retry is not started with less of the budget left than this."""
RETRY_AFTER_MAX_S = 60.0
"""The longest a server's Retry-After is honoured; beyond it, no retry."""


def _retry_wait(exc: openai.APIError, tries: int) -> float | None:
    """How long to wait before try `tries + 1`, or None: not an error a retry helps
    (the openai client's own rule: no connection, a timeout, 408, 409, 429, 5xx)."""
    openai = _sdk()
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code not in (408, 409, 429) and exc.status_code < 500:
            return None
        after = exc.response.headers.get("retry-after")
        if after is not None:
            try:
                seconds = float(after)
            except ValueError:
                seconds = -1.0
            if 0 <= seconds <= RETRY_AFTER_MAX_S:
                return seconds
    elif not isinstance(exc, openai.APIConnectionError):  # timeouts are one
        return None
    if type(exc.__cause__).__name__ == "TooManyRedirects":  # a loop does not heal
        return None
    return min(0.5 * 2 ** (tries - 1), 8.0)


MAX_BODY_BYTES = 64 * 1024 * 1024
"""Longest completion body read: no answer is that long, and memory is the host's."""


def read_body(chunks: Iterator[bytes], deadline: float, base_url: str | None) -> bytes:
    """The body, read until `deadline` (monotonic) and `MAX_BODY_BYTES` at most."""
    where = base_url or "the OpenAI API"
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RunError(
                f"the model at {where} sent an answer of more than "
                f"{MAX_BODY_BYTES // (1024 * 1024)} MiB; it was not read further"
            )
        if time.monotonic() > deadline:
            raise RunError(f"the model at {where} did not finish its answer in time")
    return bytes(body)


def with_text_calls(turn: ModelTurn, tools: list[dict[str, Any]]) -> ModelTurn:
    """The turn, with calls to offered tools that its content holds as text read into
    `tool_calls` (the content keeps only the prose around them)."""
    if turn.message.get("tool_calls") or not tools:
        return turn
    offered = {t["function"]["name"] for t in tools}
    found = read_text_calls(turn.message.get("content"), offered)
    if found is None:
        return turn
    message = {"role": "assistant", "content": found.text or None, "tool_calls": found.calls}
    return replace(turn, message=message, text_calls=found.format, text_call_repairs=found.repairs)


def parse_completion(
    body: bytes, model: str, base_url: str | None
) -> tuple[dict[str, Any], str, Usage, str]:
    """A Chat Completions response body → (assistant message, finish reason, usage, model).

    The message is normalised so that it can be sent back as is: content a string or
    None, each tool call `{id, type, function: {name, arguments}}` with strings.
    """
    return _decoded(body, base_url, lambda data, where: _parsed(data, model, where))


def parse_responses(
    body: bytes, model: str, base_url: str | None
) -> tuple[dict[str, Any], str, Usage, str]:
    """A Responses API body → the same as `parse_completion` (`agent.responses_api`)."""

    def parsed(data: Any, where: str) -> tuple[dict[str, Any], str, Usage, str]:
        message, finish, usage, answered_by = responses_api.parse_response(
            _valid_unicode(data), model, where
        )
        if message.get("tool_calls"):
            message["tool_calls"] = _unique_ids(message["tool_calls"])
        return message, finish, read_usage(usage), answered_by

    return _decoded(body, base_url, parsed)


MAX_JSON_VALUES = 1_000_000
"""Most values (objects, arrays, items) an answer's JSON may hold: each costs tens of
bytes once built, so 64 MiB of `{},` made 3 GB of objects and 50 s of CPU."""


def _decoded(body: bytes, base_url: str | None, parse: Any) -> Any:
    """`parse(data, where)` of the JSON body; not JSON, nested too deeply, or of more
    values than `MAX_JSON_VALUES`, is one clear error."""
    where = base_url or "the OpenAI API"
    # Counted on the bytes before anything is built: every value but a container's
    # first follows a comma (those inside strings count too, an upper bound).
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > MAX_JSON_VALUES:
        raise RunError(
            f"the model at {where} answered with JSON of more than {MAX_JSON_VALUES:,} "
            "values (objects, arrays and their items); it was not read"
        )
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        preview = _short(body[:120].decode("utf-8", "replace"), 120)
        raise RunError(
            f"the model at {where} answered with something that is not JSON: {preview!r}"
        ) from None
    try:
        return parse(data, where)
    except RecursionError:  # what json.loads could nest, walking it may not
        raise RunError(f"the model at {where} answered with JSON nested too deeply") from None


def _parsed(data: Any, model: str, where: str) -> tuple[dict[str, Any], str, Usage, str]:
    data = _valid_unicode(data)
    if not isinstance(data, dict):  # `[1, 2]`, `null`: "no choices" read as a model's fault
        kind = {list: "a list", str: "a string", bool: "a boolean"}.get(type(data), "a number")
        raise RunError(
            f"the model at {where} answered with JSON that is not a chat completion "
            f"({'null' if data is None else kind}): is {where} an OpenAI-compatible API's "
            "base URL?"
        )
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        error = data.get("error") if isinstance(data, dict) else None
        detail = (
            f": {_short(str(error.get('message', error) if isinstance(error, dict) else error))}"
        )
        raise RunError(
            f"the model at {where} returned no choices (model {model!r}){detail if error else ''}"
        )
    raw = choices[0].get("message")
    if not isinstance(raw, dict):
        raise RunError(f"the model at {where} returned a choice without a message")
    message: dict[str, Any] = {"role": "assistant", "content": _text(raw.get("content"))}
    calls = raw.get("tool_calls")
    if calls:
        message["tool_calls"] = _unique_ids(
            [_tool_call(c, i) for i, c in enumerate(_as_list(calls))]
        )
    finish = choices[0].get("finish_reason")
    finish_reason = finish if isinstance(finish, str) and finish else "stop"
    answered_by = data.get("model")
    return (
        message,
        finish_reason,
        read_usage(data.get("usage")),
        answered_by if isinstance(answered_by, str) and answered_by else model,
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_unicode(value: Any) -> Any:
    """JSON's `\\ud800` decodes to a lone surrogate, which no file, pipe or terminal
    can take: each becomes U+FFFD here, before the text goes anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_unicode(v) for v in value]
    return value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return json.dumps(content)


def _unique_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tool message answers one id, so two calls must not share one."""
    seen: set[str] = set()
    for i, call in enumerate(calls):
        given, n = call["id"], i
        while call["id"] in seen:  # a renamed one may meet an id already taken
            call["id"] = f"{given}_{n}"
            n += 1
        seen.add(call["id"])
    return calls


def _tool_call(call: Any, index: int) -> dict[str, Any]:
    """Whatever the model sent → a well-formed call; nonsense becomes a call to a tool
    named "", which the sandbox answers with unknown_tool and the list of real ones."""
    call = call if isinstance(call, dict) else {}
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    name = function.get("name")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    call_id = call.get("id")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{index}",
        "type": "function",
        "function": {"name": name if isinstance(name, str) else "", "arguments": arguments},
    }


def read_usage(usage: Any) -> Usage:
    """Token counts under either naming (`prompt_tokens` or `input_tokens`)."""
    if not isinstance(usage, dict):
        return Usage()

    def first(*names: str) -> int:
        for name in names:
            value = usage.get(name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok and 0 <= value < 1e12:
                return int(value)
        return 0

    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    ok = isinstance(cached, int) and not isinstance(cached, bool) and 0 <= cached < 1e12
    return Usage(
        input_tokens=first("prompt_tokens", "input_tokens"),
        output_tokens=first("completion_tokens", "output_tokens"),
        cached_tokens=int(cached) if ok else 0,  # type: ignore[arg-type]
    )


def describe_api_error(exc: openai.APIError, model: str, base_url: str | None) -> str:
    openai = _sdk()
    where = base_url or "the OpenAI API"
    if isinstance(exc, openai.APITimeoutError):
        return f"the model at {where} did not answer in time (after retries)"
    if isinstance(exc, openai.APIConnectionError):
        return _connection_failed(exc, where)
    if isinstance(exc, openai.AuthenticationError):
        return f"the model at {where} refused the API key (401): check OPENAI_API_KEY"
    if isinstance(exc, openai.PermissionDeniedError):
        return f"the model at {where} denied access (403)"
    if isinstance(exc, openai.NotFoundError):
        said = f"the model at {where} does not know model {model!r} or the route (404)"
        return said + _not_the_api(base_url, exc)
    if isinstance(exc, openai.RateLimitError):
        return f"the model at {where} is rate limiting (429) and retries did not help"
    if isinstance(exc, openai.APIStatusError) and REFUSED in exc.response.extensions:
        return (
            f"the model at {where} redirected to {_short(exc.response.extensions[REFUSED])} "
            f"(HTTP {exc.status_code}); a redirect to another scheme, host or port is not "
            "followed, since the conversation would go there: if that is the endpoint, "
            "give it as --base-url"
        )
    if isinstance(exc, openai.APIStatusError):
        detail = _short(_error_message(exc))
        said = f"the model at {where} failed with HTTP {exc.status_code}: {detail}"
        return said + _not_the_api(base_url, exc)
    return f"the model call failed: {_short(str(exc))}"


def _not_the_api(base_url: str | None, exc: openai.APIStatusError) -> str:
    """A hint where the answer is not an OpenAI-compatible API's: a 404 from a base URL
    without its version (Ollama's http://localhost:11434, whose API is under /v1), or an
    error that is not `{"error": {...}}` (a web page: some other server)."""
    if base_url is None:
        return ""
    versioned = re.search(r"/v\d", base_url.split("://", 1)[-1]) is not None
    if exc.status_code == 404 and not versioned:
        meant = base_url.rstrip("/") + "/v1"
        return f"; an OpenAI-compatible API's base URL usually ends in /v1 ({meant}?)"
    if not isinstance(exc.body, dict):
        return (
            f"; that is not an OpenAI-compatible API's error: is {base_url} the API's base "
            "URL (for example http://localhost:11434/v1)?"
        )
    return ""


def _connection_failed(exc: openai.APIConnectionError, where: str) -> str:
    """What went wrong on the connection, from the HTTP library's error under it: a
    server that is not there, one that redirects in a loop, one that breaks HTTP."""
    cause = exc.__cause__
    kind = type(cause).__name__
    if kind == "TooManyRedirects":
        return f"the model at {where} redirected too many times (a redirect loop?)"
    if cause is None or kind.startswith("Connect"):
        return f"cannot reach the model at {where}: connection failed (is the server running?)"
    detail = _short(str(cause), 120)
    return f"the model at {where} broke the connection or HTTP ({kind}: {detail})"


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    if isinstance(body, str) and body.strip():  # a web page, say: its text, not its tags
        text = " ".join(re.sub(r"<[^>]*>", " ", body).split())
        return text or body
    return exc.message


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
