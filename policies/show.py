"""The policy in force, printed: TOML (each value with the file that set it) or JSON.

print(policy_toml(load_policy("mine.toml")))
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

from .loader import BUILT_IN
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


def policy_toml(policy: Policy, loaded: Collection[str] | None = None) -> str:
    """Valid TOML that loads (with `extends = "none"`) to the same policy. `loaded`:
    the tools loaded; the built-in policy's tables of any other are left out (a file
    may configure only tools that are loaded, so `--policy` on this text would refuse
    them), and a comment names them."""
    lines = [
        "# The policy in force: these files, each laid over the one before:",
        *[f"#   {_comment(f)}" for f in policy.files],
        "# Each value names the file that set it.",
    ]
    data = policy_data(policy)
    tables = data.get("tools", {})
    unused = [
        name
        for name in tables
        if loaded is not None
        and name not in loaded
        and policy.source_of(f"tools.{name}") == BUILT_IN
        and policy.mcp_server_of(name) is None
    ]
    if unused:
        names = ", ".join(f"[tools.{_key(n)}]" for n in unused)
        lines.append(f"# Left out: the built-in policy's {names}, for tools not loaded.")
        data["tools"] = {k: v for k, v in tables.items() if k not in unused}
    _table(policy, data, [], lines)
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
