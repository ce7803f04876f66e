"""Layering policy files: each file changes only the keys it names.

Tables merge key by key at every depth (`[defaults]`, `[tools.NAME]` and its
`settings`, `[run]`, `[run.prices.MODEL]`, `[layers]`); a list (`load_tools`) adds
to the one below it; any other value replaces the one below it. Relative paths
are made absolute first, against the file that set them, so a key keeps its meaning
whichever file ends up on top.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PATH_KEYS = ("root", "data_dir")
"""Keys of `[defaults]` and `[tools.NAME]` that name a directory relative to their file."""


def absolute_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of one file's data with its relative `root` and `data_dir` made absolute."""
    out = dict(data)
    if isinstance(out.get("load_tools"), list):
        out["load_tools"] = [_tool_source(s, base_dir) for s in out["load_tools"]]
    tables: list[tuple[str, ...]] = [("defaults",)]
    tables += [("tools", name) for name in data.get("tools", {})]
    for path in tables:
        table = _get(out, path)
        if not isinstance(table, dict):
            continue
        table = dict(table)
        for key in PATH_KEYS:
            value = table.get(key)
            if isinstance(value, str) and value and not _is_anchored(value):
                table[key] = str((base_dir / value).resolve())
        _set(out, path, table)
    return absolute_server_paths(out, base_dir)


def absolute_server_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy with the paths of each `[mcp_servers.NAME]` table made absolute."""
    out = dict(data)
    servers = out.get("mcp_servers")
    if isinstance(servers, dict):
        out["mcp_servers"] = {
            name: _server_paths(server, base_dir) if isinstance(server, dict) else server
            for name, server in servers.items()
        }
    return out


def _server_paths(server: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """`read_paths` and `write_paths` of an `[mcp_servers.NAME]` table, absolute (`~`
    expanded; links resolved, since the sandbox binds what they lead to), and the words
    of its `command` that start with `./` or `../`."""
    out = dict(server)
    if isinstance(out.get("command"), list):
        # The server starts in an empty home: `./server.py` means beside the policy file.
        out["command"] = [
            str((base_dir / w).resolve())
            if isinstance(w, str) and w.startswith(("./", "../"))
            else w
            for w in out["command"]
        ]
    for key in ("read_paths", "write_paths"):
        if isinstance(out.get(key), list):
            out[key] = [
                str((base_dir / os.path.expanduser(p)).resolve()) if isinstance(p, str) else p
                for p in out[key]
            ]
    return out


def merge(
    below: dict[str, Any],
    above: dict[str, Any],
    source: str,
    sources: dict[str, str],
    prefix: str = "",
) -> dict[str, Any]:
    """`above` laid over `below`; `sources` records, per dotted key, the file that set it."""
    out = dict(below)
    for key, value in above.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, source, sources, dotted + ".")
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *[v for v in value if v not in out[key]]]
        else:
            out[key] = value
            for old in [k for k in sources if k.startswith(dotted + ".")]:
                del sources[old]  # a whole table replaced: its keys below come from here
            if isinstance(value, dict):
                _record_all(value, source, sources, dotted + ".")
        sources[dotted] = source
    return out


def _record_all(table: dict[str, Any], source: str, sources: dict[str, str], prefix: str) -> None:
    for key, value in table.items():
        sources[prefix + key] = source
        if isinstance(value, dict):
            _record_all(value, source, sources, f"{prefix}{key}.")


def _tool_source(source: str, base_dir: Path) -> str:
    """A `.py` file or a path is relative to the policy file; a module name stays."""
    if source.endswith(".py") or "/" in source:
        return str((base_dir / os.path.expanduser(source)).resolve())
    return source


def _is_anchored(value: str) -> bool:
    """Absolute, or relative to something other than the file: `~`, `{data}`."""
    return os.path.isabs(value) or value.startswith(("~", "{data}"))


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    *parents, last = path
    for key in parents:
        data[key] = dict(data[key])
        data = data[key]
    data[last] = value
