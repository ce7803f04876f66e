"""`chat --session NAME`: conversations kept in a SQLite file between runs.

The file carries a schema version. A file that is not ours, is corrupt, or comes from
another version gives a clear error and is never overwritten.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxedAgentError

SCHEMA_VERSION = 1


class SessionError(SandboxedAgentError):
    """The session store cannot be used; nothing was changed."""


def default_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "sandboxed-agent" / "sessions.db"


class SessionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._check_or_create()

    @classmethod
    def open_default(cls) -> SessionStore:
        return cls(default_path())

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def _check_or_create(self) -> None:
        fresh = not self.path.exists()
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(self._connect()) as db, db:
                if fresh:
                    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                    db.execute(
                        "CREATE TABLE sessions (name TEXT PRIMARY KEY, messages TEXT NOT NULL, "
                        "updated REAL NOT NULL)"
                    )
                    return
                row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SessionError(
                f"{self.path} is not a usable session file ({exc}); it was left untouched: "
                "move it away or set XDG_DATA_HOME to use another place"
            ) from None
        if row is None or row[0] != str(SCHEMA_VERSION):
            found = row[0] if row else "none"
            raise SessionError(
                f"{self.path} has session schema version {found}, this program reads "
                f"version {SCHEMA_VERSION}; it was left untouched"
            )

    def load(self, name: str) -> list[dict[str, Any]] | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT messages FROM sessions WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            messages = json.loads(row[0])
        except ValueError:
            raise SessionError(
                f"session {name!r} in {self.path} is corrupt; it was left untouched"
            ) from None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SessionError(f"session {name!r} in {self.path} is corrupt; it was left untouched")
        return messages

    def save(self, name: str, messages: list[dict[str, Any]]) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO sessions (name, messages, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET messages = excluded.messages, "
                "updated = excluded.updated",
                (name, json.dumps(messages), time.time()),
            )
