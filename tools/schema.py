"""A function's signature and docstring → one pydantic model → a strict OpenAI schema.

The same model validates the model's arguments and describes them, so the schema
the model sees and the check its arguments meet cannot drift apart. Strict mode
(`"strict": true`) needs every property listed in `required` and
`additionalProperties: false`; a parameter with a default becomes nullable instead,
and a null from the model means "use the default".
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

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
        hints = typing.get_type_hints(func)
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
        fields[param.name] = (hint, Field(default, description=docs.get(param.name)))
    model = create_model(
        f"{name}_arguments",
        __config__=ConfigDict(extra="forbid", coerce_numbers_to_str=True),
        **fields,
    )
    return model, defaults, native


def strict_schema(model: type[BaseModel], nullable: set[str]) -> dict[str, Any]:
    """The model's JSON schema in the form OpenAI's strict mode accepts."""
    schema = model.model_json_schema()
    _strictify(schema)
    for name in nullable:
        prop = schema["properties"][name]
        if not _accepts_null(prop):
            schema["properties"][name] = _nullable(prop)
    return schema


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
