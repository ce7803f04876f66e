"""Small slips in a model's arguments, fixed where the fix is certain, and counted.

    bound = bind_leniently(spec, '{"arguments": {"order_id": "12345",}}')
    bound.repairs   # ('trailing_commas', 'arguments_wrapper')

Small models send arguments that are almost right: a trailing comma, the object
stringified once more, the call's own `{"arguments": ...}` wrapper around it, a number
where the tool wants a string. Each fix here changes the shape only, never a value,
and a fixed text is accepted only if the one strict reader and the schema accept it
(`binding.bind`): a repair can make a call valid, never make one say what the schema
refuses. What it did is named in `BoundCall.repairs`, which the trace records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tools import ArgumentError, ToolSpec

from .binding import BoundCall, bind
from .json_text import Obj, decode, dump, without_trailing_commas

Fix = Callable[[ToolSpec, str], str | None]


def bind_leniently(spec: ToolSpec, raw: str) -> BoundCall:
    """`bind`, and when that fails, again after the shape fixes that apply (each at
    most once). When none makes the call valid, raises the `ArgumentError` of the text
    with every fix that applied: the slip that is left, not one already fixed."""
    try:
        bound, text = bind(spec, raw), raw
    except ArgumentError as first:
        repaired = _repaired(spec, raw)
        if isinstance(repaired, ArgumentError):
            raise repaired from None
        if repaired is None:
            raise first from None
        bound, text = repaired
    if _numbers_as_strings(text, bound.args):
        bound = replace(bound, repairs=(*bound.repairs, "number_as_string"), model_arguments=raw)
    return bound


def _repaired(spec: ToolSpec, raw: str) -> tuple[BoundCall, str] | ArgumentError | None:
    """The call valid after some fixes, and the text they made; else the error of the
    most fixed text, or None when no fix applied."""
    text, done = raw, []
    last: ArgumentError | None = None
    while True:
        for name, fix in FIXES:
            if name in done:
                continue
            try:
                fixed = fix(spec, text)
            except (ValueError, RecursionError):
                fixed = None
            if fixed is not None and fixed != text:
                text = fixed
                done.append(name)
                break
        else:
            return last  # no fix left that changes anything
        try:
            return replace(bind(spec, text), repairs=tuple(done), model_arguments=raw), text
        except ArgumentError as exc:
            last = exc  # a second slip, maybe: try the fixes left on the new text


def trailing_commas(spec: ToolSpec, text: str) -> str | None:
    """`{"a": 1,}` → `{"a": 1}`: a comma before a closing bracket, outside strings."""
    return without_trailing_commas(text)


def stringified_arguments(spec: ToolSpec, text: str) -> str | None:
    """`"{\\"order_id\\": \\"12345\\"}"` → the object the string holds."""
    value = decode(text)
    if isinstance(value, str) and value.strip().startswith("{"):
        return value
    return None


def arguments_wrapper(spec: ToolSpec, text: str) -> str | None:
    """`{"arguments": {...}}` (or `parameters`, or the whole call again with this tool's
    name) → the inner object, unless the tool has a parameter of that name."""
    value = decode(text)
    if not isinstance(value, Obj):
        return None
    keys = sorted(k for k, _ in value.pairs)
    fields = spec.model.model_fields
    for key in ("arguments", "parameters"):
        if key in fields:
            continue
        if keys == [key] or (keys == sorted(["name", key]) and value.get("name") == spec.name):
            inner = value.get(key)
            return inner if isinstance(inner, str) else dump(inner)
    return None


FIXES: tuple[tuple[str, Fix], ...] = (
    ("trailing_commas", trailing_commas),
    ("stringified_arguments", stringified_arguments),
    ("arguments_wrapper", arguments_wrapper),
)


def _numbers_as_strings(raw: str, validated: Any) -> bool:
    """Did a number arrive where the tool wanted a string? (The argument model
    coerces those itself; here they are only counted.)"""
    try:
        sent = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return _coerced(sent, validated)


def _coerced(sent: Any, validated: Any) -> bool:
    if isinstance(sent, dict) and isinstance(validated, dict):
        return any(_coerced(v, validated[k]) for k, v in sent.items() if k in validated)
    if isinstance(sent, list) and isinstance(validated, list) and len(sent) == len(validated):
        return any(_coerced(a, b) for a, b in zip(sent, validated, strict=True))
    number = isinstance(sent, int | float) and not isinstance(sent, bool)
    return number and isinstance(validated, str)
