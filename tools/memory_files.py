"""Where each memory namespace keeps its facts: one SQLite file per namespace.

One shared file let namespaces see each other through what they share: BM25
statistics (alice's score fell as bob stored facts with her words), ids (they showed
how much others stored) and the time a query took. A file each shares nothing.

    directory/ns-alice-<hash>.db

The file name is `ns-`, the namespace's letters, digits, `-` and `_` (at most 40, for people
looking at the directory) and the first 128 bits of the SHA-256 of its UTF-8 bytes, so
no name, however hostile (`../x`, `a/b`, a dot, 200 characters, any script), can point
elsewhere or meet another's file. The namespace is also kept inside the file and
checked on open.

A memory file of the shared layout (`directory/memory.db`, schema version 1) is split
into these files the first time a memory tool runs, ids kept; the old file is kept as
`memory.db.split`. One that cannot be read is left untouched, and said so. The files
lie directly in the data_dir, where the sandbox gives every worker's uid their group.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import unicodedata
from contextlib import closing
from pathlib import Path

NAMESPACE_MAX_CHARS = 200
LEGACY_FILE = "memory.db"
LEGACY_KEPT_AS = "memory.db.split"
_SLUG = re.compile(r"[^A-Za-z0-9_-]")


class MemoryRequestError(ValueError):
    """A memory request that cannot be met; the message says why and what is accepted."""


def check_namespace(namespace: object) -> str:
    """The namespace, or a MemoryRequestError saying what is accepted."""
    accepted = (
        f"a memory namespace is 1 to {NAMESPACE_MAX_CHARS} characters, any letters, "
        "digits or punctuation, no control characters"
    )
    if not isinstance(namespace, str) or not 1 <= len(namespace) <= NAMESPACE_MAX_CHARS:
        length = (
            f"{len(namespace)} characters"
            if isinstance(namespace, str)
            else f"a {type(namespace).__name__}"
        )
        raise MemoryRequestError(f"{accepted} (got {length})")
    bad = [c for c in namespace if unicodedata.category(c) in ("Cc", "Cs")]
    if bad:
        raise MemoryRequestError(f"{accepted} (got {bad[0]!a} in {namespace[:60]!a})")
    return namespace


def namespace_file(directory: Path, namespace: str) -> Path:
    """The file that holds `namespace`'s facts, always a direct child of `directory`."""
    check_namespace(namespace)
    digest = hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:32]
    slug = _SLUG.sub("", namespace)[:40]
    return directory / (f"ns-{slug}-{digest}.db" if slug else f"ns-{digest}.db")


def legacy_rows(
    directory: Path,
) -> tuple[sqlite3.Connection, list[tuple[str, int, str, str, float, bytes | None]]] | None:
    """The shared file's facts as (namespace, id, fact, digest, created, embedding),
    with the connection that holds its write lock (so two workers do not split it at
    once); None when there is no shared file. Raises when it cannot be read."""
    path = directory / LEGACY_FILE
    if not path.exists():
        return None
    unusable = f"{path} is not a usable memory file"
    untouched = (
        "it was left untouched: memories are now kept in one file per namespace "
        f"(ns-*.db in {directory}); move it away to use the memory"
    )
    try:
        db = sqlite3.connect(path, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        raise MemoryRequestError(f"{unusable} ({exc}); {untouched}") from None
    try:
        db.execute("BEGIN IMMEDIATE")
        if not path.exists():  # another worker split it while we waited
            db.close()
            return None
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != "1":
            found = row[0] if row else "none"
            raise MemoryRequestError(
                f"{path} has memory schema version {found}, the shared layout this program "
                f"splits is version 1; {untouched}"
            )
        rows = db.execute(
            "SELECT namespace, id, fact, digest, created, embedding FROM facts ORDER BY id"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise MemoryRequestError(f"{unusable} ({exc}); {untouched}") from None
    except BaseException:
        db.close()
        raise
    return db, rows


def retire_legacy(directory: Path, db: sqlite3.Connection) -> None:
    """Keep the split shared file under another name, then let go of its lock."""
    with closing(db):
        try:
            os.replace(directory / LEGACY_FILE, directory / LEGACY_KEPT_AS)
        except FileNotFoundError:
            pass  # split and renamed by another worker
        db.execute("ROLLBACK")  # nothing was written to it
