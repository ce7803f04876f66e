"""Where each tool's `root` and `data_dir` are: resolved once, when the policy is loaded.

A path is made absolute and symlink-free here, and the worker is given that exact
path: it refuses to follow a link met on the way (a tool may have planted one since).
A layout where one tool could plant such a link, or reach the orchestrator's own
state, is refused before any tool runs:

- a `data_dir` inside another `data_dir` (equal ones are fine: tools sharing state,
  as the memory tools do), and a `root` inside or equal to any `data_dir`: a tool
  that writes the outer directory could replace the inner one with a link;
- a `root` or `data_dir` that is, or holds, the user's data directory (the run store
  and sessions) or lies on the stores' files; a `data_dir` that is, or holds, the
  home directory or a system directory, or lies inside /proc, /sys or /dev: the
  worker makes a `data_dir` and its files group-writable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from sandbox.errors import PolicyError

from .paths import user_data_dir

STORE_FILES = ("runs.db", "sessions.db")
"""The orchestrator's SQLite files in the user's data directory (with their -wal,
-shm and -journal companions)."""
SYSTEM_DIRS = (
    "/bin",
    "/boot",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/opt",
    "/root",
    "/sbin",
    "/srv",
    "/tmp",
    "/usr",
    "/var",
)
"""A `data_dir` may lie inside these, never be one or hold one."""
KERNEL_DIRS = ("/dev", "/proc", "/sys")
"""A `data_dir` may not even lie inside these."""


class Place(NamedTuple):
    """One table's directories, absolute and symlink-free (None: not set)."""

    root: str | None
    data_dir: str | None


class _Entry(NamedTuple):
    table: str
    """`defaults` or `tools.NAME`."""
    key: str
    path: str


def resolve(value: str, base_dir: Path) -> str:
    """`value` (relative to `base_dir`, `~` or `{data}`) as an absolute, symlink-free
    path; a part that does not exist yet is kept as written."""
    expanded = os.path.expanduser(value.replace("{data}", str(user_data_dir())))
    return os.path.realpath(os.path.join(base_dir, expanded))


def check(places: Mapping[str, Place], blame: Callable[[str], str]) -> None:
    """Raise PolicyError naming both tables and paths for a layout refused above.
    `places` maps `defaults` and `tools.NAME` to their effective directories;
    `blame(dotted_key)` names the file that set a key."""
    entries = [
        _Entry(table, key, path)
        for table, place in places.items()
        for key, path in (("root", place.root), ("data_dir", place.data_dir))
        if path is not None
    ]
    for entry in entries:
        reason = _protected(entry)
        if reason:
            raise PolicyError(_where(entry, blame) + reason)
    data_dirs = [e for e in entries if e.key == "data_dir"]
    for entry in entries:
        for other in data_dirs:
            if other is entry or (entry.key == "data_dir" and other.path == entry.path):
                continue
            if _within(entry.path, other.path):
                how = "is" if entry.path == other.path else "lies inside"
                raise PolicyError(
                    f"{_where(entry, blame)}{entry.path!r} {how} [{other.table}]'s data_dir "
                    f"{other.path!r}, set in {blame(f'{other.table}.data_dir')}: a tool "
                    "that writes there could replace it with a link to any directory "
                    "(accepted: data_dirs that are equal or apart, and a root outside "
                    "every data_dir)"
                )


def _protected(entry: _Entry) -> str | None:
    path = entry.path
    state = os.path.realpath(user_data_dir())
    if _within(state, path):
        return (
            f"{path!r} is or holds the user's data directory {state!r}, where the run "
            "store and the sessions are kept (accepted: a directory of its own, such as "
            '"{data}/NAME")'
        )
    if _within(path, state):
        first = os.path.relpath(path, state).split(os.sep)[0]
        if first.startswith(STORE_FILES):
            return f"{path!r} is one of the run store's or the sessions' files"
    if entry.key == "root":
        return None
    for kernel in KERNEL_DIRS:
        if _within(path, kernel) or _within(kernel, path):
            return f"{path!r} is a kernel interface ({kernel}), not a place for a tool's data"
    home = os.path.realpath(Path.home())
    protected = [("the home directory", home)] if home != "/" else []
    protected += [("the root directory", "/")] + [("a system directory", d) for d in SYSTEM_DIRS]
    for what, directory in protected:
        if _within(directory, path):
            how = "is" if directory == path else "holds"
            return (
                f"{path!r} {how} {what} ({directory}): the worker makes a data_dir and "
                "its files group-writable (accepted: a directory of its own inside it)"
            )
    return None


def _where(entry: _Entry, blame: Callable[[str], str]) -> str:
    dotted = f"{entry.table}.{entry.key}"
    return f"{blame(dotted)}: [{entry.table}] {entry.key}: "


def _within(path: str, parent: str) -> bool:
    """`path` is `parent` or lies below it (both absolute and normalised)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")
