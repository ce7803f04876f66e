"""A model's arguments text → one JSON object, read strictly.

    parse_object('{"order_id": "12345", "amount": 1.00}')  # {'order_id': '12345', 'amount': 1.0}

`json.loads` alone keeps the last of two equal keys (`{"amount": 1.00, "amount": 89.99}`
is 89.99), reads `NaN` and `1e400` as numbers, and lets lone surrogates through. A
person who approves a call must see what runs, and every value must survive the pipe
to the worker, so here each of these is an `ArgumentError` that says what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


class ArgumentError(ValueError):
    """The model's arguments do not fit the tool; the message names each field."""


def parse_object(arguments: Mapping[str, Any] | str | bytes | None) -> dict[str, Any]:
    """A JSON object text (or a mapping, checked the same way) → a new dict.
    Empty text or None is `{}`."""
    if arguments is None:
        return {}
    if isinstance(arguments, str | bytes):
        if not arguments.strip():
            return {}
        try:
            arguments = json.loads(
                arguments,
                object_pairs_hook=_unique_keys,
                parse_constant=_no_constant,
                parse_float=_finite_float,
            )
        except ArgumentError:
            raise
        except (ValueError, RecursionError) as exc:
            raise ArgumentError(
                f"arguments are not valid JSON ({exc}); send one JSON object"
            ) from None
    if not isinstance(arguments, Mapping):
        raise ArgumentError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    _check(arguments)
    return dict(arguments)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Called for every object at every depth, so a repeat anywhere is caught.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ArgumentError(
                f"arguments are not accepted: the key {json.dumps(key)} appears more than "
                "once in one object; send each key once"
            )
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise ArgumentError(
        f"arguments are not valid JSON: {name} is not a JSON number; send a finite number"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ArgumentError(
            f"arguments are not accepted: {text[:40]} is too large for a number; "
            "send a finite number"
        )
    return value


def _check(value: Any, depth: int = 0) -> None:
    """Strings that are not Unicode (lone surrogates) and non-finite floats cannot be
    shown, hashed or sent to the worker: refuse them here, in a mapping from Python
    as in parsed text."""
    if depth > 200:
        raise ArgumentError("arguments are nested too deeply (more than 200 levels)")
    kind = type(value)
    if kind is int or kind is bool or value is None:
        return  # the commonest values first: an ABC's isinstance is slow
    if kind is dict:
        for key, item in value.items():
            _check(key, depth + 1)
            _check(item, depth + 1)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ArgumentError(
                "arguments are not accepted: a string holds a lone surrogate "
                "(not Unicode text); send valid UTF-8"
            ) from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ArgumentError(f"arguments are not accepted: {value} is not a finite number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check(key, depth + 1)
            _check(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check(item, depth + 1)
