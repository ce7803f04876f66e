"""The Responses API (`POST /v1/responses`) as a way to reach the model: the loop keeps
its conversation in Chat Completions form, and this module translates both ways.

    items = to_input(messages)     # the conversation -> input items
    flat = to_tools(tools)         # chat tool schemas -> Responses function tools
    message, finish, usage, model = parse_response(body, model, base_url)

So every guardrail (text calls, repair, steering with `tool_choice: "none"`, budgets,
retries, errors) works the same through either API. The response is parsed here, not by
the SDK, which accepts any shape: a hostile or broken endpoint gets one clear error.
Nothing is stored on the server (`store: false`): each request sends the conversation.
"""

from __future__ import annotations

import json
from typing import Any

from sandbox.errors import RunError

ROLES = ("system", "developer", "user", "assistant")
SKIPPED_ITEMS = ("reasoning",)
"""Output items that carry nothing for the conversation (a reasoning summary)."""
FINISHED = ("completed", "incomplete")


def to_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages -> Responses input items: a message per system, user or assistant
    text; a `function_call` per tool call; a `function_call_output` per tool result."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": str(message.get("tool_call_id") or ""),
                    "output": _as_text(message.get("content")),
                }
            )
            continue
        if role not in ROLES:
            continue
        content = message.get("content")
        if content:
            items.append({"role": role, "content": _as_text(content)})
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": str(call.get("id") or ""),
                    "name": str(function.get("name") or ""),
                    "arguments": str(function.get("arguments") or "{}"),
                }
            )
    return items


def to_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat tool schemas -> Responses function tools. `strict` is off, as in Chat
    Completions: the Responses API would otherwise default it on, and refuse a schema
    with optional parameters."""
    flat = []
    for tool in tools:
        function = tool.get("function") or {}
        flat.append(
            {
                "type": "function",
                "name": function.get("name"),
                "description": function.get("description") or "",
                "parameters": function.get("parameters") or {"type": "object", "properties": {}},
                "strict": False,
            }
        )
    return flat


def parse_response(data: Any, model: str, where: str) -> tuple[dict[str, Any], str, Any, str]:
    """A decoded Responses body -> (assistant message in chat form, finish reason, the
    `usage` as sent, model)."""
    if not isinstance(data, dict):
        raise RunError(f"the model at {where} answered with JSON that is not a response object")
    status = data.get("status")
    error = data.get("error")
    if (status is not None and status not in FINISHED) or error:
        detail = error.get("message", error) if isinstance(error, dict) else error
        said = f": {_short(str(detail))}" if detail else ""
        raise RunError(
            f"the model at {where} did not complete its response "
            f"(status {_short(str(status))!r}){said}"
        )
    output = data.get("output")
    if not isinstance(output, list):
        raise RunError(
            f"the model at {where} returned a response without an output list "
            f"(model {model!r}); expected `output: [...]` of message and function_call items"
        )
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    unknown: list[str] = []
    unfinished = False
    for index, item in enumerate(output):
        if not isinstance(item, dict):
            raise RunError(
                f"the model at {where} returned output item {index} that is not an object "
                f"({type(item).__name__})"
            )
        kind = item.get("type")
        if kind == "message":
            texts.append(_message_text(item.get("content"), index, where))
        elif kind == "function_call" and item.get("status") not in (None, "completed"):
            unfinished = True  # cut off while the model wrote it: not a call it made
        elif kind == "function_call":
            calls.append(_function_call(item, len(calls)))
        elif kind not in SKIPPED_ITEMS:
            unknown.append(_short(str(kind), 40))
    if unknown and not texts and not calls and not unfinished:
        raise RunError(
            f"the model at {where} answered only with output items of unknown types "
            f"({', '.join(sorted(set(unknown)))}); expected 'message' or 'function_call'"
        )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    answered_by = data.get("model")
    return (
        message,
        "length" if unfinished and not calls else _finish_reason(data, bool(calls)),
        data.get("usage"),
        answered_by if isinstance(answered_by, str) and answered_by else model,
    )


def _finish_reason(data: dict[str, Any], called: bool) -> str:
    """Chat's finish reasons, which the loop reads: an incomplete response was cut off
    (`length`) or filtered (`content_filter`)."""
    if data.get("status") == "incomplete":
        details = data.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


def _message_text(content: Any, index: int, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RunError(
            f"the model at {where} returned message item {index} whose content is not a "
            "list of parts"
        )
    out = []
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text") if part.get("type") != "refusal" else part.get("refusal")
        if isinstance(text, str):
            out.append(text)
    return "".join(out)


def _function_call(item: dict[str, Any], index: int) -> dict[str, Any]:
    """A `function_call` item -> a chat tool call. A name that is not a string becomes
    "", which the sandbox answers with unknown_tool and the real names."""
    name = item.get("name")
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    call_id = next(
        (v for v in (item.get("call_id"), item.get("id")) if isinstance(v, str) and v),
        f"call_{index}",
    )
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name if isinstance(name, str) else "", "arguments": arguments},
    }


def _as_text(content: Any) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else json.dumps(content)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
