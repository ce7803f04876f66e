"""Small slips in a model's arguments, fixed where the fix is certain, and counted.

    bound = bind_leniently(spec, '{"arguments": {"order_id": "12345",}}')
    bound.repairs   # ('trailing_commas', 'arguments_wrapper')

Small models send arguments that are almost right: a trailing comma, the object
stringified once more, the call's own `{"arguments": ...}` wrapper around it, a number
where the tool wants a string, a number in quotes. Each fix here changes the shape
only, never a value, and a fixed text is accepted only if the one strict reader and
the schema accept it (`binding.bind`): a repair can make a call valid, never make one
say what the schema refuses. What it did is named in `BoundCall.repairs`, which the trace records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tools import ArgumentError, ToolSpec

from .binding import BoundCall, bind
from .json_text import Num, Obj, decode, dump, without_trailing_commas

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


def strings_as_numbers(spec: ToolSpec, text: str) -> str | None:
    """`{"amount": "89.99"}` → `{"amount": 89.99}`: a string that is exactly a JSON
    number, where the tool's schema takes a number and no string. Its digits are kept
    as written; `"12.5 dollars"`, `"1,5"`, `" 3"` or `"NaN"` stay strings, refused."""
    value = decode(text)
    fixed = _numbers_unquoted(value, spec.parameters, spec.parameters.get("$defs", {}))
    return None if fixed is value else dump(fixed)


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _numbers_unquoted(value: Any, schema: Any, defs: dict[str, Any]) -> Any:
    """`value` with the quotes taken off where `schema` wants a number; the very same
    object when nothing changed."""
    branches = _branches(schema, defs)
    if isinstance(value, str):
        types = {t for b in branches for t in _types(b)}
        wants = types & {"number", "integer"} and "string" not in types
        return Num(value) if wants and _JSON_NUMBER.fullmatch(value) else value
    if isinstance(value, Obj):
        objects = [b for b in branches if "object" in _types(b)]
        if len(objects) != 1:
            return value
        props, extra = objects[0].get("properties", {}), objects[0].get("additionalProperties")
        pairs = [(k, _numbers_unquoted(v, props.get(k, extra), defs)) for k, v in value.pairs]
        changed = any(new is not old for (_, new), (_, old) in zip(pairs, value.pairs, strict=True))
        return Obj(pairs) if changed else value
    if isinstance(value, list):
        arrays = [b for b in branches if "array" in _types(b)]
        if len(arrays) != 1:
            return value
        items = [_numbers_unquoted(v, arrays[0].get("items"), defs) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _branches(schema: Any, defs: dict[str, Any], depth: int = 0) -> list[dict[str, Any]]:
    """The plain schemas a value may match: `$ref`s followed, `anyOf`/`oneOf` opened."""
    if not isinstance(schema, dict) or depth > 16:
        return []
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _branches(defs.get(ref.removeprefix("#/$defs/")), defs, depth + 1)
    alternatives = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(alternatives, list):
        return [b for alt in alternatives for b in _branches(alt, defs, depth + 1)]
    return [schema]


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    return {"string"} if "enum" in schema or "const" in schema else set()


FIXES: tuple[tuple[str, Fix], ...] = (
    ("trailing_commas", trailing_commas),
    ("stringified_arguments", stringified_arguments),
    ("arguments_wrapper", arguments_wrapper),
    ("string_as_number", strings_as_numbers),
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
