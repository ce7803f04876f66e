"""`chat --session NAME`: conversations kept in a SQLite file between runs.

The file carries a schema version. A file that is not ours, is corrupt, or comes from
another version gives a clear error and is never overwritten.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from policies.paths import user_data_dir
from sandbox.errors import SandboxedAgentError

from .scrubbing import scrub
from .sqlite_file import connect, open_versioned

SCHEMA_VERSION = 1


class SessionError(SandboxedAgentError):
    """The session store cannot be used; nothing was changed."""


def default_path() -> Path:
    return user_data_dir() / "sessions.db"


class SessionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._check_or_create()

    @classmethod
    def open_default(cls) -> SessionStore:
        return cls(default_path())

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    def _check_or_create(self) -> None:
        table = (
            "CREATE TABLE sessions (name TEXT PRIMARY KEY, messages TEXT NOT NULL, "
            "updated REAL NOT NULL)"
        )
        open_versioned(self.path, "session", SCHEMA_VERSION, [table], SessionError)

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
                (name, scrub(json.dumps(messages)), time.time()),
            )
