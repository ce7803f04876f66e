"""A function's signature and docstring → one pydantic model → a strict OpenAI schema.

The same model validates the model's arguments and describes them, so the schema
the model sees and the check its arguments meet cannot drift apart. Strict mode
(`"strict": true`) needs every property listed in `required` and
`additionalProperties: false`; a parameter with a default becomes nullable instead,
and a null from the model means "use the default".
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, create_model
from pydantic_core import PydanticCustomError

_JSON_NATIVE = {str, int, float, bool, type(None), Any}
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")
_SECTION = re.compile(r"^[A-Z]\w*( \w+)?:\s*$")


class ToolDefinitionError(TypeError):
    """A function cannot be a tool as written; the message says what to change."""


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Google-style docstring → (description, {param: description})."""
    if not doc:
        return "", {}
    description: list[str] = []
    params: dict[str, str] = {}
    section = "description"
    indent: int | None = None
    current: str | None = None
    for line in inspect.cleandoc(doc).splitlines():
        if _ARGS_HEADER.match(line):
            section, indent, current = "args", None, None
            continue
        if _SECTION.match(line):
            section = "other"  # Returns:, Raises:, Example: ...
            continue
        if section == "description":
            description.append(line)
        elif section == "args" and line.strip():
            depth = len(line) - len(line.lstrip())
            indent = depth if indent is None else indent
            m = _ARG_LINE.match(line)
            if depth == indent and m:
                current = m.group(1).lstrip("*")
                params[current] = m.group(2).strip()
            elif current:
                params[current] = f"{params[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), params


def is_json_native(hint: Any) -> bool:
    """True when a JSON value already is what the function expects (no re-validation)."""
    if hint in _JSON_NATIVE:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Literal,):
        return True
    if origin in (list, dict, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not str or origin is not dict]
        return all(is_json_native(a) for a in args)
    return False


def build_model(func: Callable[..., Any], name: str) -> tuple[type[BaseModel], set[str], bool]:
    """The argument model, the names of parameters that have defaults, and whether
    every parameter is JSON-native."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)  # Field(...) kept
    except Exception as exc:
        raise ToolDefinitionError(f"tool {name!r}: cannot read its type hints: {exc}") from exc
    _, docs = parse_docstring(func.__doc__)
    fields: dict[str, Any] = {}
    defaults: set[str] = set()
    native = True
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ToolDefinitionError(
                f"tool {name!r}: parameter {param.name!r} must be a plain named parameter "
                "(no *args, **kwargs or positional-only)"
            )
        if param.name not in hints:
            raise ToolDefinitionError(
                f"tool {name!r}: parameter {param.name!r} needs a type hint "
                "(the model's arguments are validated against it)"
            )
        hint = hints[param.name]
        native = native and is_json_native(hint)
        default = ... if param.default is param.empty else param.default
        if default is not ...:
            defaults.add(param.name)
        fields[param.name] = (exact_types(hint), Field(default, description=docs.get(param.name)))
    model = create_model(
        f"{name}_arguments",
        __config__=ConfigDict(extra="forbid", coerce_numbers_to_str=True),
        **fields,
    )
    return model, defaults, native


def exact_types(hint: Any) -> Any:
    """`hint` with every `bool`, `int` and `float` in it taking only its own JSON type.

    pydantic's lax mode reads `true` as 1.0, `"12.5"` as 12.5 and `1` or `"yes"` as
    true: a model that sent the wrong type would have its call run with a value it did
    not mean, and never learn. Here each is refused with what was sent and what is
    accepted. JSON's own sameness stays (12 for a float, 3.0 for an int), and so does
    the one repair made on purpose, a number where a string is wanted (`agent.repair`
    counts it). A tool that wants pydantic's coercion asks for it:
    `Annotated[float, Strict(False)]` is left as written."""
    exact = _EXACT.get(hint)
    if exact is not None:
        return exact
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        inner, *metadata = args
        if any(isinstance(m, Strict) for m in metadata):
            return hint  # the tool said how strict
        if inner in _CHECKS:
            # After the tool's constraints, so they stay in the schema (`minimum`); it
            # still runs first, before the type's own validation.
            return typing.Annotated[(inner, *metadata, _CHECKS[inner])]  # type: ignore[misc]
        return typing.Annotated[(exact_types(inner), *metadata)]  # type: ignore[misc]
    if origin is typing.Literal:
        return _exact_literal(hint, args)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(exact_types(a) for a in args)]  # noqa: UP007
    if origin in (list, set, frozenset) and len(args) == 1:
        return origin[exact_types(args[0])]
    if origin is dict and len(args) == 2:
        return dict[args[0], exact_types(args[1])]  # type: ignore[valid-type]
    if origin is tuple and args:
        return tuple[tuple(a if a is Ellipsis else exact_types(a) for a in args)]
    return hint


def _exact_literal(hint: Any, values: tuple[Any, ...]) -> Any:
    """`Literal[1, 2]` took `true` for 1, and `Literal[True]` took 1 (equal in Python)."""
    numbers = any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    bools = any(isinstance(v, bool) for v in values)
    if numbers == bools:
        return hint  # no numbers and no booleans, or both: pydantic's own matching
    accepts: tuple[type, ...] = (bool,) if bools else (int, float, str, type(None))
    refuses: tuple[type, ...] = () if bools else (bool,)
    shown = ", ".join(json.dumps(v) for v in values)
    wanted = f"one of {shown}"
    return typing.Annotated[hint, _only(accepts, refuses, wanted, f"{wanted}, as JSON")]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "an array" if isinstance(value, list | tuple) else "an object"


def _only(accepts: tuple[type, ...], refuses: tuple[type, ...], wanted: str, send: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, refuses) or not isinstance(value, accepts):
            raise PydanticCustomError(
                "wrong_json_type",
                "expected {wanted}, got {got}; send {send}",
                {"wanted": wanted, "got": _json_type(value), "send": send},
            )
        return value

    return BeforeValidator(check)


_NUMBER = "a JSON number without quotes, such as 12.5"
_CHECKS: dict[Any, Any] = {
    float: _only((int, float), (bool,), "a number", _NUMBER),
    int: _only((int, float), (bool,), "a whole number", "a JSON number such as 3"),
    bool: _only((bool,), (), "true or false", "the JSON literal true or false, no quotes"),
}
_EXACT: dict[Any, Any] = {kind: typing.Annotated[kind, check] for kind, check in _CHECKS.items()}
"""Python mode sees JSON's types as these: a number is an int or a float, never a bool."""


def strict_schema(model: type[BaseModel], nullable: set[str]) -> dict[str, Any]:
    """The model's JSON schema in the form OpenAI's strict mode accepts."""
    schema = model.model_json_schema()
    _strictify(schema)
    for name in nullable:
        prop = schema["properties"][name]
        if not _accepts_null(prop):
            schema["properties"][name] = _nullable(prop)
    return schema


_TYPED = ("type", "anyOf", "allOf", "oneOf", "$ref", "enum", "const")
_SUBSCHEMAS = ("anyOf", "allOf", "oneOf", "prefixItems")


def is_strict(schema: dict[str, Any]) -> bool:
    """Whether OpenAI's strict mode takes the schema: every value has a type (`Any`, a
    bare `list`'s items or `object` have none) and every object lists its properties
    with `additionalProperties: false` (a `dict[str, X]` has neither). Otherwise the
    endpoint refuses the whole request (HTTP 400), so such a tool is sent not strict;
    its arguments are validated by the same model either way."""

    def ok(node: Any) -> bool:
        if not isinstance(node, dict):
            return True
        if not any(key in node for key in _TYPED):
            return False
        if node.get("type") == "object" and (
            "properties" not in node or node.get("additionalProperties") is not False
        ):
            return False
        inner: list[Any] = []
        for key, value in node.items():
            if key in ("properties", "$defs") and isinstance(value, dict):
                inner += value.values()
            elif key in ("items", "additionalProperties"):
                inner.append(value)
            elif key in _SUBSCHEMAS and isinstance(value, list):
                inner += value
        return all(ok(v) for v in inner)

    return ok(schema)


def _accepts_null(prop: dict[str, Any]) -> bool:
    if prop.get("type") == "null":
        return True
    return any(p.get("type") == "null" for p in prop.get("anyOf", []))


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    desc = prop.pop("description", None)
    out: dict[str, Any] = {"anyOf": [prop, {"type": "null"}]}
    if desc:
        out["description"] = desc
    return out


def _strictify(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("title", None)
        node.pop("default", None)
        if node.get("type") == "object" and "properties" in node:
            node["additionalProperties"] = False
            node["required"] = list(node["properties"])
        for key, value in node.items():
            if key == "properties":
                for prop in value.values():
                    _strictify(prop)
            else:
                _strictify(value)
    elif isinstance(node, list):
        for item in node:
            _strictify(item)
