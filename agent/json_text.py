"""JSON read and written again token for token: a repeated key stays repeated, and a
number keeps the digits it was written with.

    value, end = decode_at('{"amount": 1.00, "amount": 89.99}', 0)
    dump(value)   # '{"amount":1.00,"amount":89.99}'

Where the agent takes a model's JSON apart to fix its shape (a call read from text, an
extra wrapper around arguments), what it hands on must still be what the model wrote,
so that the one strict reader (`tools.arguments`) judges that and nothing cleaner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Obj:
    """A JSON object as its pairs, in order, repeats kept."""

    pairs: list[tuple[str, Any]]

    def get(self, key: str) -> Any:
        """The value of `key` when it appears exactly once; else None."""
        found = [v for k, v in self.pairs if k == key]
        return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class Num:
    text: str
    """The number (or NaN, Infinity) exactly as written."""


_DECODER = json.JSONDecoder(
    object_pairs_hook=Obj, parse_float=Num, parse_int=Num, parse_constant=Num
)


def decode_at(text: str, at: int) -> tuple[Any, int] | None:
    """The JSON value that starts at `at`, and where it ends; None if there is none.
    RecursionError passes through (nesting too deep to decode)."""
    try:
        return _DECODER.raw_decode(text, at)
    except ValueError:
        return None


def decode(text: str) -> Any:
    """The one JSON value `text` holds (whitespace around it allowed); ValueError if not."""
    stripped = text.strip()
    found = decode_at(stripped, 0)
    if found is None or found[1] != len(stripped):
        raise ValueError("not one JSON value")
    return found[0]


def dump(value: Any) -> str:
    """JSON text again, compact, every key and number as it was written."""
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    if isinstance(value, Num):
        return value.text
    return json.dumps(value)


def without_trailing_commas(text: str) -> str:
    """`{"a": 1,}` → `{"a": 1}`: a comma before a closing bracket, outside strings."""
    out: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            out.append(ch)
            continue
        if ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < len(text) and text[j].isspace():
                j += 1
            if j < len(text) and text[j] in "}]":
                continue
        out.append(ch)
    return "".join(out)
