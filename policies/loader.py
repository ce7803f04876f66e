"""TOML files → `Policy`, with one clear error naming the file, the table and the key.

A policy file is a layer over the built-in policy (`default.toml`): it changes only
what it names. `extends = "none"` at the top starts from nothing instead, and
`extends = "PATH"` from another file (itself a layer over what it extends).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from sandbox.errors import PolicyError
from sandbox.layers import ALWAYS_ON, check_layer_names

from .merge import absolute_paths, absolute_server_paths, merge
from .schema import (
    MCP_SEPARATOR,
    EgressPolicy,
    McpServerPolicy,
    Policy,
    Price,
    RunPolicy,
    ToolPolicy,
    build_limits,
)

if TYPE_CHECKING:
    from tools.registry import Registry

DEFAULT_POLICY = Path(__file__).with_name("default.toml")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BUILT_IN = "<built-in policy>"
MAX_EXTENDS = 32
"""Files in one chain of `extends`: deep enough for any real layering, and a clear
error long before Python's recursion limit."""
_TOP_LEVEL = (
    "extends",
    "isolation",
    "load_tools",
    "layers",
    "accept_unwalled_signals",
    "defaults",
    "tools",
    "mcp_servers",
    "run",
    "egress",
)
_TOP_LEVEL_KEYS = ("extends", "isolation", "load_tools", "accept_unwalled_signals")
"""The top-level keys that are not tables: written after a `[table]` line, TOML puts
them in that table, where they are unknown."""


def _top_level_hint(key: str) -> str:
    if key not in _TOP_LEVEL_KEYS:
        return ""
    return f"; {key} is a top-level key: put it at the top of the file, before any [table]"


@dataclass(frozen=True)
class _File:
    """One layer: a policy file's data, as read, and where it came from."""

    shown: str
    base_dir: Path
    data: dict[str, Any]
    path: Path | None


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and check a policy file, layered over the built-in one; None: the built-in.

    >>> load_policy("mine.toml").requires_approval("issue_refund")  # still True
    """
    if path is None:
        return _build([_built_in()])
    return _build(_chain(_read(Path(path), str(path)), []))


def parse_policy(text: str, source: str, base_dir: Path) -> Policy:
    """A policy file's text (named `source`, its paths relative to `base_dir`), layered
    as `load_policy` layers a file."""
    return _build(_chain(_File(source, base_dir, _parse(text, source), None), []))


def check_tools(policy: Policy, known: list[str]) -> None:
    """Every `[tools.NAME]` a file set must name a tool that exists: a typo would
    silently not apply. The built-in policy's own tables are for tools that may not be
    loaded (the memory tools), so they are not checked."""
    for name in policy.tools:
        source = policy.source_of(f"tools.{name}") or policy.source
        if policy.mcp_server_of(name) is not None:
            continue  # known once the server lists its tools (mcp_sources checks then)
        if source != BUILT_IN and name not in known:
            raise PolicyError(f"{source}: [tools.{name}]: {unknown_tool(name, known)}")
        for key in ("after", "then"):
            for other in getattr(policy.tools[name], key) or []:
                if other not in known and policy.mcp_server_of(other) is None:
                    said = unknown_tool(other, known)
                    raise PolicyError(f"{source}: [tools.{name}] {key}: {said}")
    for name in policy.run.offer or []:
        if name not in known:
            source = policy.source_of("run.offer") or policy.source
            raise PolicyError(f"{source}: [run] offer: {unknown_tool(name, known)}")
    _check_offered_chains(policy)
    cycle = _after_cycle(policy, known)
    if cycle:
        own = policy.tools.get(cycle[0])
        table = f"tools.{cycle[0]}" if own is not None and own.after is not None else "defaults"
        source = policy.source_of(f"{table}.after") or policy.source
        said = (
            f"{cycle[0]} waits for itself to answer first, so it can never run"
            if len(cycle) == 2
            else f"{' -> '.join(cycle)}: each waits for the next to answer first, so none "
            "of them can ever run"
        )
        raise PolicyError(f"{source}: [{table}] after: {said}")


def _check_offered_chains(policy: Policy) -> None:
    """With `[run] offer`, an offered tool's `after` or `then` naming a tool the run
    does not offer would wait for ever (never offered) or ask for a call that cannot
    be made: said at load, not found out in a run."""
    offered = policy.run.offer
    if offered is None:
        return
    for name in offered:
        for key in ("after", "then"):
            missing = [t for t in getattr(policy, key)(name) if t not in offered]
            if not missing:
                continue
            own = policy.tools.get(name)
            table = (
                f"tools.{name}" if own is not None and getattr(own, key) is not None else "defaults"
            )
            source = policy.source_of(f"{table}.{key}") or policy.source
            what = "can never run" if key == "after" else "asks for a call the run cannot make"
            raise PolicyError(
                f"{source}: [{table}] {key}: {', '.join(missing)} is not in [run] offer, so "
                f"{name} {what}; add it to offer ({', '.join(offered)}) or take it out of {key}"
            )


def _after_cycle(policy: Policy, known: list[str]) -> list[str]:
    """A chain of `after` that leads back to where it started (`[defaults] after =
    ["x"]` makes `x` wait for itself), as the tools on it; [] if there is none."""
    done: set[str] = set()

    def walk(name: str, trail: list[str]) -> list[str]:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done:
            return []
        for first in policy.after(name):
            found = walk(first, [*trail, name])
            if found:
                return found
        done.add(name)
        return []

    for name in known:
        found = walk(name, [])
        if found:
            return found
    return []


def check_registry(policy: Policy, registry: Registry) -> None:
    """What the command line checks, for tools put together in Python (the framework
    adapters): the policy's `load_tools` are in the registry, and every `[tools.NAME]`
    a file set names one of its tools. Otherwise a tool table, its `requires_approval`
    with it, would silently not apply."""
    missing = [source for source in policy.load_tools if source not in registry.sources]
    if missing:
        where = policy.source_of("load_tools") or policy.source
        raise PolicyError(
            f"{where}: load_tools: {', '.join(missing)} not loaded in the pool's registry; "
            "load them first (for s in policy.load_tools: registry.load(s)) and give it "
            "to the pool (Pool(policy, registry=registry))"
        )
    check_tools(policy, registry.names())


def unknown_tool(name: str, known: list[str]) -> str:
    """`there is no tool named 'x'; did you mean 'y'? (known tools: ...)`."""
    hint = _did_you_mean(name, known) or _on_request(name)
    return f"there is no tool named {name!r}{hint} (known tools: {', '.join(known)})"


def _on_request(name: str) -> str:
    from tools.registry import ON_REQUEST_MODULES, Registry

    for module in ON_REQUEST_MODULES:
        if name in Registry().load(module):
            how = f'--tools {module}, or load_tools = ["{module}"]'
            return f"; it is offered only when asked for: {how}"
    return ""


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _built_in() -> _File:
    return _read(DEFAULT_POLICY, BUILT_IN)


def _read(file: Path, shown: str) -> _File:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {shown}") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"{shown}: not UTF-8 text (byte {exc.start}); a policy file is TOML in UTF-8"
        ) from None
    except OSError as exc:
        raise PolicyError(f"{shown}: cannot read the policy file: {exc}") from None
    return _File(shown, file.resolve().parent, _parse(text, shown), file.resolve())


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None


def _chain(top: _File, trail: list[_File]) -> list[_File]:
    """The files under `top`, bottom first, following `extends`."""
    extends = top.data.get("extends")
    if top.path == DEFAULT_POLICY.resolve() and top.shown != BUILT_IN:
        return [_built_in()]  # `extends` naming the built-in file: the same thing
    if extends is None:
        return [_built_in(), top]
    if not isinstance(extends, str) or not extends:
        raise PolicyError(
            f'{top.shown}: extends: must be "none" or the path of another policy file '
            f"(got {_short(extends)})"
        )
    if extends == "none":
        return [top]
    if len(trail) + 1 >= MAX_EXTENDS:
        raise PolicyError(f"{top.shown}: extends: more than {MAX_EXTENDS} files in one chain")
    file = (top.base_dir / extends).resolve()
    seen = [f.path for f in [*trail, top]]
    if file in seen:
        names = [f.shown for f in [*trail, top]][seen.index(file) :]
        loop = " -> ".join([*names, names[0]])
        raise PolicyError(f"{top.shown}: extends: {extends!r} leads back to itself ({loop})")
    shown = str(file)
    if top.path is not None and not Path(extends).is_absolute():
        shown = os.path.normpath(os.path.join(os.path.dirname(top.shown), extends))
    try:
        below = _read(file, shown)
    except PolicyError as exc:
        raise PolicyError(f"{top.shown}: extends: {exc}") from None
    return [*_chain(below, [*trail, top]), top]


def _build(files: list[_File]) -> Policy:
    """Check each file alone (so an error names its file), then lay them in order."""
    for file in files:
        _check_file(file)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for file in files:
        data = {k: v for k, v in file.data.items() if k != "extends"}
        merged = merge(merged, absolute_paths(data, file.base_dir), file.shown, sources)
    top = files[-1]

    def blame(loc: list[str]) -> str:
        for end in range(len(loc), 0, -1):
            if ".".join(loc[:end]) in sources:
                return sources[".".join(loc[:end])]
        return top.shown

    policy = _validate(merged, blame)
    policy.locate(top.shown, top.base_dir, sources=sources, files=[f.shown for f in files])
    _check_values(policy, blame)
    _check_warm_keys(policy, blame)
    policy.places()  # resolved once, here; a refused layout is a load error
    return policy


def _check_file(file: _File) -> None:
    data = {k: v for k, v in file.data.items() if k != "extends"}
    data = absolute_server_paths(data, file.base_dir)  # checked where they lead
    # A key this file leaves out may come from a file below it (a price's other half).
    policy = _validate(data, lambda loc: file.shown, allow_missing=True)
    policy.locate(file.shown, file.base_dir)
    _check_values(policy, lambda loc: file.shown)


def _validate(
    data: dict[str, Any], blame: Callable[[list[str]], str], allow_missing: bool = False
) -> Policy:
    while True:
        try:
            return Policy.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            real = [e for e in errors if not (allow_missing and _completable(e))]
            if real:
                loc = [str(p) for p in real[0]["loc"]]
                raise PolicyError(_describe(blame(loc), real[0], loc)) from None
            # Check the rest without the incomplete tables: a file below may complete
            # them, and the merged result is checked whole.
            for err in errors:
                data = _without(data, [str(p) for p in err["loc"][:-1]])


def _completable(err: Any) -> bool:
    return bool(err["type"] == "missing" and len(err["loc"]) > 1)


def _without(data: dict[str, Any], loc: list[str]) -> dict[str, Any]:
    out = dict(data)
    if len(loc) == 1:
        out.pop(loc[0], None)
    elif isinstance(out.get(loc[0]), dict):
        out[loc[0]] = _without(out[loc[0]], loc[1:])
    return out


def _check_values(policy: Policy, blame: Callable[[list[str]], str]) -> None:
    for name, on in policy.layers.items():
        try:
            check_layer_names([name] if not on or name not in ALWAYS_ON else [])
        except ValueError as exc:
            said = _top_level_hint(name).removeprefix("; ") or str(exc)
            raise PolicyError(f"{blame(['layers', name])}: [layers] {name}: {said}") from None
    try:
        policy.egress.config()
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise PolicyError(f"{blame(['egress', 'resolve'])}: [egress] {message}") from None
    tables = [(["defaults"], policy.defaults)]
    tables += [
        (["tools", name], table.over(policy.defaults)) for name, table in policy.tools.items()
    ]
    for loc, table in tables:
        _check_table(".".join(loc), table, policy, blame, loc)
    for name, server in policy.mcp_servers.items():
        check_mcp_server(name, server, lambda key, n=name: blame(["mcp_servers", n, key]))


def _check_warm_keys(policy: Policy, blame: Callable[[list[str]], str]) -> None:
    """`max_warm_calls` and `max_warm_age_s` bound a trusted tool's warm workers: in the
    table of a tool that is not trusted they did nothing, and said nothing. Checked on
    the layers laid together, since `trusted` may come from a file below."""
    for name, table in policy.tools.items():
        for key in ("max_warm_calls", "max_warm_age_s"):
            if getattr(table, key) is not None and not policy.effective(name).trusted:
                raise PolicyError(
                    f"{blame(['tools', name, key])}: [tools.{name}] {key}: {name} is not "
                    "trusted, so it has no warm workers (each call gets a fresh one): set "
                    f"trusted = true in [tools.{name}], or take {key} out"
                )


def check_mcp_server(name: str, server: McpServerPolicy, blame: Callable[[str], str]) -> None:
    """A server's name, its limits' ranges, its paths and its environment's names."""
    where = f"[mcp_servers.{name}]"
    if not _SERVER_NAME.fullmatch(name) or MCP_SEPARATOR in name:
        raise PolicyError(
            f"{blame('command')}: {where}: the name must be 1-32 letters, digits, - or "
            f"single _ (its tools are called {name}{MCP_SEPARATOR}TOOL)"
        )
    try:
        server.limits()
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0])
        raise PolicyError(f"{blame(key)}: {where} {key}: {_said(err)}") from None
    if not 0 < server.startup_timeout_s <= 600:
        raise PolicyError(
            f"{blame('startup_timeout_s')}: {where} startup_timeout_s: must be above 0 and "
            f"at most 600 (got {server.startup_timeout_s!r})"
        )
    if not all(server.command):
        raise PolicyError(f"{blame('command')}: {where} command: an empty word")
    for key in ("read_paths", "write_paths"):
        for path in getattr(server, key):
            if not os.path.exists(path):
                raise PolicyError(f"{blame(key)}: {where} {key}: {path!r} does not exist")
            if key == "write_paths" and not os.path.isdir(path):
                raise PolicyError(f"{blame(key)}: {where} {key}: {path!r} is not a directory")
    for variable in server.env:
        if not _ENV_NAME.fullmatch(variable):
            raise PolicyError(
                f"{blame('env')}: {where} env: {variable!r} is not a variable name "
                "(letters, digits and _, not starting with a digit)"
            )


def _check_table(
    name: str,
    table: ToolPolicy,
    policy: Policy,
    blame: Callable[[list[str]], str],
    loc: list[str],
) -> None:
    try:
        build_limits(table)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0])
        raise PolicyError(f"{blame([*loc, key])}: [{name}] {key}: {_said(err)}") from None
    root = policy.root_path(table)
    if root is not None and not root.is_dir():
        raise PolicyError(
            f"{blame([*loc, 'root'])}: [{name}] root: {table.root!r} is not a directory"
        )


def _describe(source: str, err: Any, loc: list[str]) -> str:
    if len(loc) == 1 and err["type"] == "extra_forbidden":
        what = (
            f"[{loc[0]}]: unknown table"
            if isinstance(err["input"], dict)
            else (f"{loc[0]}: unknown top-level key")
        )
        hint = _did_you_mean(loc[0], _TOP_LEVEL) or _table_of(loc[0])
        return f"{source}: {what}{hint} (accepted: {', '.join(_TOP_LEVEL)})"
    if loc[0] == "load_tools":
        got = _short(err.get("input"))
        return f"{source}: load_tools: must be a list of module names or .py files (got {got})"
    if loc == ["isolation"]:
        got = _short(err.get("input"))
        return f'{source}: isolation: must be "best-effort" or "strict" (got {got})'
    if loc == ["accept_unwalled_signals"]:
        got = _short(err.get("input"))
        return f"{source}: accept_unwalled_signals: must be true or false (got {got})"
    if loc[0] == "defaults":
        table, rest = "defaults", loc[1:]
    elif loc[0] == "run" and len(loc) >= 3 and loc[1] == "prices":
        table, rest = f"run.prices.{loc[2]}", loc[3:]
    elif loc[0] in ("tools", "mcp_servers") and len(loc) >= 2:
        table, rest = f"{loc[0]}.{loc[1]}", loc[2:]
    else:
        table, rest = loc[0], loc[1:]
    if not rest:
        return f"{source}: [{table}]: must be a table of keys (got {_short(err.get('input'))})"
    key = ".".join(rest)
    model: type[BaseModel] = {"run": RunPolicy, "egress": EgressPolicy}.get(
        table, Price if table.startswith("run.") else ToolPolicy
    )
    if table.startswith("mcp_servers."):
        model = McpServerPolicy
    if err["type"] == "extra_forbidden":
        accepted = ", ".join(model.model_fields)
        hint = (
            _top_level_hint(key)
            or _other_table_hint(key, model)
            or _did_you_mean(key, list(model.model_fields))
        )
        return f"{source}: [{table}] {key}: unknown key{hint} (accepted: {accepted})"
    if err["type"] == "missing":
        return f"{source}: [{table}] {key}: missing (a [{table}] table needs it)"
    if rest[0] == "settings" and len(rest) > 1:
        key = "settings." + rest[1]  # drop pydantic's union branch names
        value = err.get("input")
        if isinstance(value, dt.date | dt.time):  # TOML's own dates are no setting's type
            return (
                f"{source}: [{table}] {key}: a TOML date, which settings do not take; "
                f'write it as a string: {rest[1]} = "{value.isoformat()}"'
            )
    if rest[0] == "network" and model is ToolPolicy:
        got = _short(err.get("input"))
        return (
            f'{source}: [{table}] network: must be true, false or a list of "host:port" '
            f"strings (got {got})"
        )
    return f"{source}: [{table}] {key}: {_said(err)}{_top_level_hint(key)}"


def _table_of(key: str) -> str:
    """A tool's or the run's key at the top of the file (`timeout_s = 5`, `model =
    "llama3.1"`), which belongs in a table: say which."""
    if key in ToolPolicy.model_fields:
        return f"; {key} is a tool's key: put it in [defaults] (every tool) or a [tools.NAME] table"
    if key in RunPolicy.model_fields:
        return f"; {key} is a key of the run: put it in the [run] table"
    return ""


def _other_table_hint(key: str, model: type[BaseModel]) -> str:
    """A run's key in a tool's table, or a tool's in `[run]` (`decides`, `then` are a
    tool's; `tools_sent`, `required_as` the run's): say where it goes."""
    if model is RunPolicy and key in ToolPolicy.model_fields:
        return f"; {key} is a tool's key: put it in a [tools.NAME] table (or [defaults])"
    if model is ToolPolicy and key in RunPolicy.model_fields:
        return f"; {key} is a key of the run: put it in the [run] table"
    return ""


def _said(err: Any) -> str:
    """Pydantic's message for one error, in our words: a check of our own already names
    the bad value ("'evil' has no port: ..."), pydantic's own checks get it added."""
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, float) and value != value:  # TOML's nan fails every bound
        return "must be a number (got nan)"
    return f"{str(err['msg']).lower()} (got {_short(value)})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
