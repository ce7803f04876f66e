"""A third-party server's JSON Schema, checked here without letting the server decide how
long the check takes or whether it raises.

The server writes the schema and the model writes the arguments, and the check runs in
the agent's own process. A hostile schema could hang or crash the agent there: a
regular expression that backtracks for ever (`^(a+)+$`; Python's `re` cannot be
interrupted), `anyOf`s that refer to each other down to 2**40 checks, a `$ref` to
itself, a keyword of the wrong type. So a schema that is not valid JSON Schema is
refused (the tool is not offered); the regular expressions (`pattern`,
`patternProperties`) are left to the server, whose SDK checks its own arguments; every
keyword checked counts against `MAX_STEPS`; and anything else that goes wrong while
checking is an `ArgumentError` naming it, never an exception in the agent.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import jsonschema

MAX_STEPS = 20_000
"""Keywords one check may evaluate (about a second here): a model's arguments to a real
tool need a few hundred."""

_steps: contextvars.ContextVar[list[int]] = contextvars.ContextVar("mcp_schema_steps")


class InvalidSchema(ValueError):
    """The server's schema is not a JSON Schema this checker uses."""


class _TooManySteps(Exception):
    pass


class SchemaChecker:
    """One tool's schema, ready to check arguments against."""

    def __init__(self, schema: dict[str, Any]) -> None:
        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            stripped = _without_regexes(schema)
        except jsonschema.SchemaError as exc:
            raise InvalidSchema(exc.message) from None
        except Exception as exc:  # RecursionError included: nested too deeply to check
            raise InvalidSchema(type(exc).__name__) from None
        counted = {name: _counted(check) for name, check in cls.VALIDATORS.items()}
        self._validator = jsonschema.validators.extend(cls, counted)(stripped)

    def problems(self, arguments: Any) -> list[str]:
        """What is wrong with `arguments`, each as `where: what` (empty: nothing)."""
        token = _steps.set([0])
        try:
            errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.path))
            return [
                f"{'.'.join(str(p) for p in error.absolute_path) or 'arguments'}: {error.message}"
                for error in errors
            ]
        except _TooManySteps:
            return [f"arguments: the server's schema takes more than {MAX_STEPS} checks"]
        except RecursionError:
            return ["arguments: the server's schema nests (or refers to itself) too deeply"]
        except Exception as exc:  # a $ref nobody can resolve, a keyword of a wrong type
            return [f"arguments: the server's schema cannot be checked ({type(exc).__name__})"]
        finally:
            _steps.reset(token)


def _counted(check: Callable[..., Any]) -> Callable[..., Any]:
    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        steps = _steps.get()
        steps[0] += 1
        if steps[0] > MAX_STEPS:
            raise _TooManySteps
        return check(validator, value, instance, schema)

    return counted


def _without_regexes(schema: Any) -> Any:
    """A copy without `pattern` and `patternProperties`. Where
    `patternProperties` went, `additionalProperties` goes too (it would refuse keys the
    patterns admit), and if any went anywhere, so does every `unevaluatedProperties`."""
    found = False

    def walk(node: Any) -> Any:
        nonlocal found
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                continue
            if key == "patternProperties" and isinstance(value, dict):
                found = True
                continue
            out[key] = walk(value)
        if isinstance(node.get("patternProperties"), dict):
            out.pop("additionalProperties", None)
        return out

    def unevaluated(node: Any) -> Any:
        if isinstance(node, list):
            return [unevaluated(item) for item in node]
        if isinstance(node, dict):
            return {k: unevaluated(v) for k, v in node.items() if k != "unevaluatedProperties"}
        return node

    stripped = walk(schema)
    return unevaluated(stripped) if found else stripped
