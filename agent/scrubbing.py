"""Secrets kept out of everything the agent writes or prints.

The API key goes to the endpoint in the Authorization header and nowhere else; but an
endpoint may echo it back (in an error body, in the answer), and from there it would
reach the conversation, the checkpoints, the sessions, the eval report and the
terminal. Every secret this process is given is registered here, and scrubbed:

    remember_secret(api_key)
    scrub("Bearer sk-...")        # -> "Bearer [redacted]"
"""

from __future__ import annotations

import json
import threading
from typing import Any

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8
"""Shorter "keys" (a local server's `none`) are not secrets, and replacing them would
mangle ordinary text."""

_secrets: set[str] = set()
_lock = threading.Lock()


def remember_secret(secret: str | None) -> None:
    """Scrub `secret` (as it is, and as it reads inside a JSON string) from now on."""
    if not secret or len(secret) < MIN_SECRET_CHARS:
        return
    with _lock:
        _secrets.add(secret)
        _secrets.add(json.dumps(secret)[1:-1])


def scrub(text: str, extra: list[str] | None = None) -> str:
    """`text` with every known secret (and `extra`) replaced by [redacted]."""
    with _lock:
        secrets = set(_secrets)
    secrets.update(s for s in extra or [] if s and len(s) >= MIN_SECRET_CHARS)
    for secret in sorted(secrets, key=len, reverse=True):  # the longest form first
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub_data(value: Any) -> Any:
    """A JSON-like value (a message, a tool call) with every string scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(str(k)): scrub_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_data(v) for v in value]
    return value
