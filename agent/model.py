"""One model call through the official `openai` client, and its failures in one line.

The client retries what retrying can fix (connection errors, 408, 409, 429 honouring
`Retry-After`, 5xx) with exponential backoff; what is left is translated here, once,
into a `RunError` whose message says what happened and what to check. No message
includes the API key or a request header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import openai

from sandbox.errors import RunError


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class ModelTurn:
    message: dict[str, Any]
    """The assistant message, ready to append to the conversation."""
    finish_reason: str
    usage: Usage
    latency_s: float
    model: str


class ModelClient:
    """Chat Completions with tools against any OpenAI-compatible endpoint."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",  # local servers take any key
            timeout=timeout_s,
            max_retries=max_retries,
        )

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], timeout_s: float
    ) -> ModelTurn:
        start = time.monotonic()
        client = self._client
        if timeout_s < self.timeout_s:
            # The run's wall budget is the binding limit: a retry would only overrun it.
            client = client.with_options(max_retries=0)
        try:
            response = client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                tools=tools or openai.NOT_GIVEN,  # type: ignore[arg-type]
                timeout=timeout_s,
            )
        except openai.APIError as exc:
            raise RunError(describe_api_error(exc, self.model, self.base_url)) from None
        latency = time.monotonic() - start
        if not response.choices:
            raise RunError(f"the model endpoint returned no choices (model {self.model!r})")
        choice = response.choices[0]
        message = choice.message.model_dump(exclude_none=True)
        message.setdefault("content", None)
        for key in ("refusal", "audio", "function_call", "annotations"):
            message.pop(key, None)
        return ModelTurn(
            message=message,
            finish_reason=choice.finish_reason or "stop",
            usage=read_usage(response.usage),
            latency_s=latency,
            model=response.model or self.model,
        )


def read_usage(usage: Any) -> Usage:
    """Token counts under either naming (`prompt_tokens` or `input_tokens`)."""
    if usage is None:
        return Usage()
    data = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
    extra = getattr(usage, "model_extra", None) or {}
    data.update(extra)

    def first(*names: str) -> int:
        for name in names:
            value = data.get(name)
            if isinstance(value, int | float) and value >= 0:
                return int(value)
        return 0

    return Usage(
        input_tokens=first("prompt_tokens", "input_tokens"),
        output_tokens=first("completion_tokens", "output_tokens"),
    )


def describe_api_error(exc: openai.APIError, model: str, base_url: str | None) -> str:
    where = base_url or "the OpenAI API"
    if isinstance(exc, openai.APITimeoutError):
        return f"the model at {where} did not answer in time (after retries)"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the model at {where}: connection failed (is the server running?)"
    if isinstance(exc, openai.AuthenticationError):
        return f"the model at {where} refused the API key (401): check OPENAI_API_KEY"
    if isinstance(exc, openai.PermissionDeniedError):
        return f"the model at {where} denied access (403)"
    if isinstance(exc, openai.NotFoundError):
        return f"the model at {where} does not know model {model!r} or the route (404)"
    if isinstance(exc, openai.RateLimitError):
        return f"the model at {where} is rate limiting (429) and retries did not help"
    if isinstance(exc, openai.APIStatusError):
        detail = _short(_error_message(exc))
        return f"the model at {where} failed with HTTP {exc.status_code}: {detail}"
    return f"the model call failed: {_short(str(exc))}"


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
