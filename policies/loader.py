"""TOML file → `Policy`, with one clear error naming the file, the table and the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sandbox.errors import PolicyError
from sandbox.layers import ALWAYS_ON, check_layer_names

from .schema import Policy, Price, RunPolicy, ToolPolicy, build_limits

DEFAULT_POLICY = Path(__file__).with_name("default.toml")
_TOP_LEVEL = ("isolation", "layers", "defaults", "tools", "run")


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and check a policy file; None loads the built-in default."""
    file = Path(path) if path is not None else DEFAULT_POLICY
    shown = str(path) if path is not None else "<built-in policy>"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {shown}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{shown}: cannot read the policy file: {exc}") from None
    return parse_policy(text, shown, file.resolve().parent)


def parse_policy(text: str, source: str, base_dir: Path) -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_describe(source, exc)) from None
    policy.locate(source, base_dir)
    for name, on in policy.layers.items():
        try:
            check_layer_names([name] if not on or name not in ALWAYS_ON else [])
        except ValueError as exc:
            raise PolicyError(f"{source}: [layers] {name}: {exc}") from None
    tables = [("defaults", policy.defaults)]
    tables += [
        (f"tools.{name}", table.over(policy.defaults)) for name, table in policy.tools.items()
    ]
    for name, table in tables:
        _check_table(source, name, table, policy)
    return policy


def _check_table(source: str, name: str, table: ToolPolicy, policy: Policy) -> None:
    try:
        build_limits(table)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0])
        raise PolicyError(
            f"{source}: [{name}] {key}: {err['msg'].lower()} (got {err['input']!r})"
        ) from None
    root = policy.root_path(table)
    if root is not None and not root.is_dir():
        raise PolicyError(f"{source}: [{name}] root: {table.root!r} is not a directory")


def check_tools(policy: Policy, known: list[str]) -> None:
    """Every `[tools.NAME]` must name a tool that exists: a typo would silently not apply."""
    for name in policy.tools:
        if name not in known:
            raise PolicyError(
                f"{policy.source}: [tools.{name}]: there is no tool named {name!r} "
                f"(known tools: {', '.join(known)})"
            )


def _describe(source: str, exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    if len(loc) == 1 and err["type"] == "extra_forbidden":
        return f"{source}: [{loc[0]}]: unknown table (accepted: {', '.join(_TOP_LEVEL)})"
    if loc == ["isolation"]:
        got = _short(err.get("input"))
        return f'{source}: isolation: must be "best-effort" or "strict" (got {got})'
    if loc[0] == "defaults":
        table, rest = "defaults", loc[1:]
    elif loc[0] == "run" and len(loc) >= 3 and loc[1] == "prices":
        table, rest = f"run.prices.{loc[2]}", loc[3:]
    elif loc[0] == "tools" and len(loc) >= 2:
        table, rest = f"tools.{loc[1]}", loc[2:]
    else:
        table, rest = loc[0], loc[1:]
    if not rest:
        return f"{source}: [{table}]: must be a table of keys (got {_short(err.get('input'))})"
    key = ".".join(rest)
    if err["type"] == "extra_forbidden":
        model = {"run": RunPolicy}.get(table, Price if table.startswith("run.") else ToolPolicy)
        accepted = ", ".join(model.model_fields)
        return f"{source}: [{table}] {key}: unknown key (accepted: {accepted})"
    if rest[0] == "settings" and len(rest) > 1:
        key = "settings." + rest[1]  # drop pydantic's union branch names
    return f"{source}: [{table}] {key}: {err['msg'].lower()} (got {_short(err.get('input'))})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
