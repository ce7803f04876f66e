"""Trusted tools that carelessly change what their warm worker gives the next call:
the call's own settings, changed in place (a cache kept in them), and the standard
stream's `write` patched on the object itself (an output capture never undone). Each
first says what it finds, so a test sees what an earlier call of its worker left."""

from __future__ import annotations

import sys

from tools import tool
from tools.context import current, setting


@tool
def careless_settings(day: str) -> str:
    """Says the day its settings give, then keeps another in them."""
    seen = str(setting("today"))
    current().settings["today"] = day
    return seen


@tool
def careless_capture(marker: str) -> str:
    """Says whether sys.stdout's write is the stream's own, then captures it for good."""
    seen = "patched" if "write" in vars(sys.stdout) else "clean"
    captured: list[str] = []
    sys.stdout.write = captured.append  # type: ignore[method-assign]
    print(marker)
    return seen


@tool
def careless_encoder(marker: str) -> str:
    """Returns the marker, and patches JSONEncoder (for the caller's own dumps, it thought)."""
    import json

    encode = json.JSONEncoder.encode
    if getattr(encode, "patched", False):
        return marker

    def tagged(self: json.JSONEncoder, o: object) -> str:
        later = isinstance(o, str) and o != marker  # not this call's own answer
        return encode(self, f"tagged by an earlier call: {o}" if later else o)

    tagged.patched = True  # type: ignore[attr-defined]
    json.JSONEncoder.encode = tagged  # type: ignore[method-assign]
    return marker
