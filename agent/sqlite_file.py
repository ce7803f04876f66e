"""The SQLite files the agent keeps (sessions, runs): versioned, never overwritten.

A file carries its kind and schema version in a `meta` table. A file that is not ours,
is corrupt, or comes from another version gives a clear error and is left untouched.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sandbox.errors import SandboxedAgentError


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=10)


def open_versioned(
    path: Path, kind: str, version: int, tables: list[str], error: type[SandboxedAgentError]
) -> None:
    """Create `path` with `tables`, or check that it is a `kind` file of `version`."""
    fresh = not path.exists()
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
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
