"""The SQLite files the agent keeps (sessions, runs): versioned, never overwritten.

A file carries its kind and schema version in a `meta` table. A file that is not ours,
is corrupt, or comes from another version gives a clear error and is left untouched.

They hold conversations, so they are private: each file is created 0600 (SQLite gives
its journal, WAL and SHM files the mode of the database), in a directory created 0700;
a file an older version made readable by others is narrowed to 0600 when opened.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

from sandbox.errors import SandboxedAgentError


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=10)


def open_versioned(
    path: Path, kind: str, version: int, tables: list[str], error: type[SandboxedAgentError]
) -> None:
    """Create `path` with `tables`, or check that it is a `kind` file of `version`."""
    try:
        fresh = _create_private(path)
    except OSError as exc:
        raise error(f"cannot create the {kind} file {path}: {exc.strerror or exc}") from None
    try:
        with closing(connect(path)) as db, db:
            if fresh:
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
                for table in tables:
                    db.execute(table)
                return
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise error(
            f"{path} is not a usable {kind} file ({exc}); it was left untouched: "
            "move it away or set XDG_DATA_HOME to use another place"
        ) from None
    if row is None or row[0] != str(version):
        found = row[0] if row else "none"
        raise error(
            f"{path} has {kind} schema version {found}, this program reads "
            f"version {version}; it was left untouched"
        )


def _create_private(path: Path) -> bool:
    """Make `path` (and each directory it needs) private; True when it is new or empty,
    an empty file being an empty database to SQLite (one made just before a crash)."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        info = os.stat(path)
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            with contextlib.suppress(OSError):  # a read-only file system: still usable
                os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
        return info.st_size == 0
    os.close(fd)
    return True
