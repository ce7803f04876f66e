"""The policy in force, printed: TOML (each value with the file that set it) or JSON.

print(policy_toml(load_policy("mine.toml")))
"""

from __future__ import annotations

import json
import re
from typing import Any

from .schema import Policy

NOT_IN_A_FILE = "(program default)"
"""The source of a value no file set: the schema's own default."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def policy_data(policy: Policy) -> dict[str, Any]:
    """The merged policy as plain data: unset tool keys (inherited) and empty tables left out."""
    return _prune(policy.model_dump(mode="python", exclude_none=True))


def policy_json(policy: Policy) -> str:
    data = policy_data(policy)
    sources = {key: _source(policy, key) for key in _leaves(data)}
    return json.dumps({"files": policy.files, "policy": data, "sources": sources}, indent=2)


def policy_toml(policy: Policy) -> str:
    """Valid TOML that loads (with `extends = "none"`) to the same policy."""
    lines = [
        "# The policy in force: these files, each laid over the one before:",
        *[f"#   {_comment(f)}" for f in policy.files],
        "# Each value names the file that set it.",
    ]
    _table(policy, policy_data(policy), [], lines)
    return "\n".join(lines).rstrip() + "\n"


def _table(policy: Policy, data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if path and plain:
        lines += ["", f"[{'.'.join(_key(p) for p in path)}]"]
    for key, value in plain.items():
        source = _source(policy, ".".join([*path, key]))
        lines.append(f"{_key(key)} = {_value(value)}  # {_comment(source)}")
    for key, value in data.items():
        if isinstance(value, dict):
            _table(policy, value, [*path, key], lines)


def _source(policy: Policy, dotted: str) -> str:
    return policy.source_of(dotted) or NOT_IN_A_FILE


def _leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _prune(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _prune(value)
            if not value:
                continue
        out[key] = value
    return out


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf and nan too: TOML spells them the same
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # JSON's escapes are TOML's; ASCII only, so no control or bidi character reaches a terminal.
    return json.dumps(str(value), ensure_ascii=True)


def _comment(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]
