"""Tool calls a model wrote as text, read back into real calls, for offered tools only.

    found = read_text_calls('```json\\n{"name": "get_current_date", "arguments": {}}\\n```',
                            {"get_current_date"})
    found.calls   # [{"id": "text_call_5f0c...", "type": "function", "function": {...}}]
    found.format  # "fenced_json"

Servers without a tool parser for a model's chat template return its calls as plain
content with `finish_reason: stop`. The shapes small models use:

- fenced JSON (Qwen2.5-Coder): ```` ```json {"name": ..., "arguments": {...}} ``` ````
- `<tool_call>{...}</tool_call>` (Hermes, Qwen 2.5)
- `[TOOL_CALLS] [{...}]`, or `[TOOL_CALLS]name[ARGS]{...}` (Mistral)
- `<|python_tag|>{"name": ..., "parameters": {...}}` (Llama 3.1), or
  `<function=name>{...}</function>`
- the whole answer one JSON call object, or a list of them (Llama 3.2)

Only a JSON object of exactly a call's shape (`name` and `arguments` or `parameters`,
optionally `id` and `type`; or OpenAI's `{"type": "function", "function": {...}}`)
naming a tool the run offers is a call. Anything else stays text: an answer that
quotes JSON, or a "call" of a tool nobody offered, is the answer. Arguments are not
judged here: they are written back token for token (a key repeated stays repeated,
a number keeps its digits), so the agent's strict reader sees what the model wrote
and validates it like any other call's.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from .json_text import Obj, decode_at, dump, without_trailing_commas

MAX_TEXT_CHARS = 100_000
"""Longer content is not read for calls: no turn of calls is that long, and a hostile
endpoint's megabytes are not worth parsing."""
MAX_TEXT_CALLS = 64
"""Calls read from one answer at most; the loop's `max_calls_per_turn` then applies."""

_FENCE = re.compile(r"```[ \t]*([A-Za-z_][\w-]*)?[ \t]*\n?(.*?)```", re.DOTALL)
_FENCE_LANGS = {None, "json", "tool_call", "tool_calls", "function", "jsonc"}
_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FUNCTION_TAG = re.compile(r"<function=([\w.-]{1,64})>(.*?)(?:</function>|\Z)", re.DOTALL)
_MISTRAL = "[TOOL_CALLS]"
_MISTRAL_ARGS = re.compile(r"\s*([\w.-]{1,64})\[ARGS\]")
_PYTHON_TAG = "<|python_tag|>"
_CALL_KEYS = {"name", "arguments", "parameters", "id", "type"}


@dataclass(frozen=True)
class TextCalls:
    calls: list[dict[str, Any]]
    """In the Chat Completions shape, arguments as text."""
    text: str
    """The content without the calls (prose the model wrote around them)."""
    format: str
    """Which shape they came in: fenced_json, tool_call_tags, mistral, llama, bare_json."""
    repairs: tuple[str, ...] = ()
    """What was fixed to read them (trailing_commas)."""


def read_text_calls(content: str | None, offered: Collection[str]) -> TextCalls | None:
    """The calls in `content` to tools in `offered`, or None when it holds none."""
    if not content or len(content) > MAX_TEXT_CHARS or not offered:
        return None
    try:
        return _read(content, offered)
    except RecursionError:  # nesting too deep for the decoder: not a call anyone wrote
        return None


def _read(content: str, offered: Collection[str]) -> TextCalls | None:
    found = _read_shapes(content, offered)
    if found is None:
        # A trailing comma makes the whole call unreadable JSON: read it without.
        fixed = without_trailing_commas(content)
        if fixed != content:
            found = _read_shapes(fixed, offered)
            if found is not None:
                found = replace(found, repairs=("trailing_commas",))
    return found


def _read_shapes(content: str, offered: Collection[str]) -> TextCalls | None:
    readers = (
        ("tool_call_tags", _tagged),
        ("mistral", _mistral),
        ("llama", _llama),
        ("fenced_json", _fenced),
        ("bare_json", _bare),
    )
    for name, reader in readers:
        found = reader(content, offered)
        if found:
            calls, rest = found
            calls = calls[:MAX_TEXT_CALLS]
            for c in calls:
                # Unique in the run, not only the turn: the checkpoint keys calls by id.
                c["id"] = f"text_call_{secrets.token_hex(6)}"
            return TextCalls(calls, rest.strip(), name)
    return None


Found = tuple[list[dict[str, Any]], str] | None


def _spans(content: str, pattern: re.Pattern[str], payload: Any, offered: Collection[str]) -> Found:
    """Each match whose payload holds only calls to offered tools becomes those calls
    and is cut from the text; other matches stay as they are."""
    calls: list[dict[str, Any]] = []
    rest, last = [], 0
    for match in pattern.finditer(content):
        got = payload(match, offered)
        if not got:
            continue
        calls.extend(got)
        rest.append(content[last : match.start()])
        last = match.end()
        if len(calls) >= MAX_TEXT_CALLS:
            break
    rest.append(content[last:])
    return (calls, "".join(rest)) if calls else None


def _tagged(content: str, offered: Collection[str]) -> Found:
    found = _spans(content, _TAG, lambda m, o: _calls_in(m.group(1), o), offered)
    if found:
        return found
    return _spans(
        content,
        _FUNCTION_TAG,
        lambda m, o: _named(m.group(1), m.group(2).strip() or "{}", o),
        offered,
    )


def _fenced(content: str, offered: Collection[str]) -> Found:
    def payload(match: re.Match[str], o: Collection[str]) -> list[dict[str, Any]] | None:
        lang = match.group(1).lower() if match.group(1) else None
        return _calls_in(match.group(2), o) if lang in _FENCE_LANGS else None

    return _spans(content, _FENCE, payload, offered)


def _mistral(content: str, offered: Collection[str]) -> Found:
    start = content.find(_MISTRAL)
    if start < 0:
        return None
    body = content[start + len(_MISTRAL) :]
    calls = _calls_in(body, offered)
    if calls:
        return calls, content[:start]
    # The newer form: name[ARGS]{...}, repeated.
    calls, at = [], 0
    while len(calls) < MAX_TEXT_CALLS:
        if body.startswith(_MISTRAL, at):
            at += len(_MISTRAL)
        match = _MISTRAL_ARGS.match(body, at)
        if not match:
            break
        decoded = decode_at(body, match.end())
        if decoded is None:
            return None
        value, at = decoded
        call = _named(match.group(1), value, offered)
        if not call:
            return None
        calls.extend(call)
    return (calls, content[:start] + body[at:]) if calls else None


def _llama(content: str, offered: Collection[str]) -> Found:
    start = content.find(_PYTHON_TAG)
    if start < 0:
        return None
    # Llama 3.1 separates several calls with ";".
    calls = _calls_in(content[start + len(_PYTHON_TAG) :], offered, separators=";")
    return (calls, content[:start]) if calls else None


def _bare(content: str, offered: Collection[str]) -> Found:
    text = content.strip()
    if not text.startswith(("{", "[")):
        return None
    calls = _calls_in(text, offered, separators=";")
    return (calls, "") if calls else None


def _calls_in(
    text: str, offered: Collection[str], separators: str = ""
) -> list[dict[str, Any]] | None:
    """`text` is one or more JSON values (objects or lists of them) and nothing else,
    each a call to an offered tool: those calls; otherwise None."""
    calls: list[dict[str, Any]] = []
    at, end = 0, len(text)
    while True:
        while at < end and (text[at].isspace() or text[at] in separators):
            at += 1
        if at >= end:
            break
        decoded = decode_at(text, at)
        if decoded is None:
            return None
        value, at = decoded
        for item in value if isinstance(value, list) else [value]:
            call = _call(item, offered)
            if call is None:
                return None
            calls.append(call)
        if len(calls) > MAX_TEXT_CALLS:
            break
    return calls or None


def _call(value: Any, offered: Collection[str]) -> dict[str, Any] | None:
    if not isinstance(value, Obj):
        return None
    keys = [k for k, _ in value.pairs]
    if len(keys) != len(set(keys)):
        return None  # two names, or two argument sets: no way to tell which was meant
    fields = dict(value.pairs)
    if fields.get("type") == "function" and isinstance(fields.get("function"), Obj):
        if set(fields) - {"type", "function", "id"}:
            return None
        return _call(fields["function"], offered)
    if set(fields) - _CALL_KEYS or ("arguments" in fields and "parameters" in fields):
        return None
    if "type" in fields and fields["type"] != "function":
        return None
    arguments = fields.get("arguments", fields.get("parameters", Obj([])))
    found = _named(fields.get("name"), arguments, offered)
    return found[0] if found else None


def _named(name: Any, arguments: Any, offered: Collection[str]) -> list[dict[str, Any]] | None:
    if not isinstance(name, str) or name not in offered:
        return None
    # A string is the arguments' JSON text, as in the API; the agent reads it strictly.
    text = arguments if isinstance(arguments, str) else dump(arguments)
    return [_as_call(name, text)]


def _as_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "", "type": "function", "function": {"name": name, "arguments": arguments}}
