"""Retrieval memory: facts in SQLite, one file per namespace (user or agent).

Full-text search (FTS5, BM25) needs no model at all. When the agent has an embeddings
endpoint, each fact is stored with its vector (float32, the layout sqlite-vec reads) and
`recall` ranks by cosine similarity instead; facts without a vector are still found by
full text. With the `vector` extra installed, sqlite-vec computes the similarity in SQL
(through pysqlite3 where this Python's sqlite3 cannot load extensions); without it, the
same ranking is computed here. Namespaces never see each other: each has its own file
(`tools.memory_files`), so its scores, ids and counts are its own.

Exact business facts do not belong here: they live in relational tables behind tools
(the orders database), where a lookup returns them exactly or not at all.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
import struct
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .memory_files import (
    MemoryRequestError,
    check_namespace,
    legacy_rows,
    namespace_file,
    retire_legacy,
)

__all__ = ["Hit", "MemoryRequestError", "MemoryStore", "sqlite_vec_engine"]

SCHEMA_VERSION = 2
"""Version 1 was one file shared by every namespace (`memory_files` splits it)."""
_SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE facts (id INTEGER PRIMARY KEY, fact TEXT NOT NULL, "
    "digest TEXT NOT NULL UNIQUE, created REAL NOT NULL, embedding BLOB)",
    "CREATE VIRTUAL TABLE facts_fts USING fts5(fact, content='facts', content_rowid='id')",
    "CREATE TRIGGER facts_added AFTER INSERT ON facts BEGIN "
    "INSERT INTO facts_fts (rowid, fact) VALUES (new.id, new.fact); END",
    "CREATE TRIGGER facts_removed AFTER DELETE ON facts BEGIN "
    "INSERT INTO facts_fts (facts_fts, rowid, fact) VALUES ('delete', old.id, old.fact); END",
]
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Hit:
    id: int
    fact: str
    score: float
    created: str
    via: str
    """How this hit was found: "full-text", "vector/sqlite-vec" or "vector/python"."""


def sqlite_vec_engine() -> tuple[Any, Any] | None:
    """(a sqlite3 module that can load extensions, sqlite_vec), when both are here."""
    try:
        import sqlite_vec
    except ImportError:
        return None
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3, sqlite_vec
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        return None
    return dbapi2, sqlite_vec


class MemoryStore:
    """One namespace's facts, in its own file under `directory`.

    >>> MemoryStore(Path("memory"), "alice", max_fact_chars=2000, max_facts=10_000)
    """

    def __init__(
        self,
        directory: Path,
        namespace: str,
        max_fact_chars: int,
        max_facts: int,
        use_sqlite_vec: bool = True,
        *,
        split_legacy: bool = True,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self.directory = directory
        self.path = namespace_file(directory, namespace)
        self.max_fact_chars = max_fact_chars
        self.max_facts = max_facts
        engine = sqlite_vec_engine() if use_sqlite_vec else None
        self._sqlite, self._vec = engine if engine else (sqlite3, None)
        self.vector_engine = "sqlite-vec" if self._vec else "python"
        directory.mkdir(parents=True, exist_ok=True)
        if split_legacy:
            self._split_legacy()
        self._open()

    def _split_legacy(self) -> None:
        """Move the facts of a shared (version 1) file into a file per namespace."""
        found = legacy_rows(self.directory)
        if found is None:
            return
        legacy, rows = found
        try:
            by_namespace: dict[str, list[tuple[Any, ...]]] = {}
            for namespace, *fact in rows:
                by_namespace.setdefault(namespace, []).append(tuple(fact))
            for namespace, facts in by_namespace.items():
                try:
                    check_namespace(namespace)
                except MemoryRequestError:
                    continue  # no tool could name it now; it stays in the kept old file
                store = MemoryStore(
                    self.directory,
                    namespace,
                    self.max_fact_chars,
                    self.max_facts,
                    use_sqlite_vec=self._vec is not None,
                    split_legacy=False,
                )
                with closing(store._connect()) as db, db:
                    db.executemany(
                        "INSERT OR IGNORE INTO facts (id, fact, digest, created, embedding) "
                        "VALUES (?, ?, ?, ?, ?)",
                        facts,
                    )
        except BaseException:
            legacy.close()  # untouched: the split is tried again next time
            raise
        retire_legacy(self.directory, legacy)

    def _connect(self) -> sqlite3.Connection:
        try:
            db = self._sqlite.connect(self.path, timeout=10)
        except self._sqlite.OperationalError as exc:
            raise MemoryRequestError(f"cannot open the memory file {self.path}: {exc}") from None
        if self._vec is not None:
            db.enable_load_extension(True)
            self._vec.load(db)
            db.enable_load_extension(False)
        return db  # type: ignore[no-any-return]

    def _open(self) -> None:
        try:
            with closing(self._connect()) as db, db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                if not tables:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("schema_version", str(SCHEMA_VERSION)), ("namespace", self.namespace)],
                    )
                    return
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except self._sqlite.DatabaseError as exc:
            raise MemoryRequestError(
                f"{self.path} is not a usable memory file ({exc}); it was left untouched"
            ) from None
        version = meta.get("schema_version", "none")
        if version != str(SCHEMA_VERSION):
            raise MemoryRequestError(
                f"{self.path} has memory schema version {version}, this "
                f"program reads version {SCHEMA_VERSION}; it was left untouched"
            )
        if meta.get("namespace") != self.namespace:
            raise MemoryRequestError(
                f"{self.path} holds the memories of another namespace; it was left untouched"
            )

    def remember(self, fact: str, vector: Sequence[float] | None) -> tuple[int, bool]:
        """Store a fact; return its id and whether it is new (not a duplicate)."""
        fact = fact.strip()
        if not fact:
            raise MemoryRequestError("an empty fact cannot be remembered")
        if len(fact) > self.max_fact_chars:
            raise MemoryRequestError(
                f"the fact has {len(fact)} characters; at most {self.max_fact_chars} are kept "
                "(memory_max_fact_chars): store a shorter summary"
            )
        digest = hashlib.sha256(" ".join(fact.casefold().split()).encode()).hexdigest()
        with closing(self._connect()) as db, db:
            db.execute("BEGIN IMMEDIATE")  # the count and the insert see the same state
            row = db.execute("SELECT id FROM facts WHERE digest = ?", (digest,)).fetchone()
            if row is not None:
                return int(row[0]), False
            (count,) = db.execute("SELECT COUNT(*) FROM facts").fetchone()
            if count >= self.max_facts:
                raise MemoryRequestError(
                    f"the memory is full: {count} facts (memory_max_facts = {self.max_facts}); "
                    "forget some first"
                )
            cursor = db.execute(
                "INSERT INTO facts (fact, digest, created, embedding) VALUES (?, ?, ?, ?)",
                (fact, digest, time.time(), _pack(vector)),
            )
            return int(cursor.lastrowid or 0), True

    def recall(self, query: str, k: int, vector: Sequence[float] | None) -> list[Hit]:
        vector = vector if _usable(vector) else None
        with closing(self._connect()) as db:
            hits = self._by_vector(db, vector, k) if vector else []
            seen = {h.id for h in hits}
            if len(hits) < k:
                more = self._by_text(db, query, k, vector_only_missing=bool(vector))
                hits += [h for h in more if h.id not in seen][: k - len(hits)]
        return hits

    def _by_vector(self, db: sqlite3.Connection, vector: Sequence[float], k: int) -> list[Hit]:
        if self._vec is not None:
            rows = db.execute(
                "SELECT id, fact, created, 1 - vec_distance_cosine(embedding, ?) AS score "
                "FROM facts WHERE embedding IS NOT NULL "
                "AND length(embedding) = ? ORDER BY score DESC, id LIMIT ?",
                (_pack(vector), 4 * len(vector), k),
            ).fetchall()
            return [Hit(i, f, round(s, 4), _iso(c), "vector/sqlite-vec") for i, f, c, s in rows]
        rows = db.execute(
            "SELECT id, fact, created, embedding FROM facts WHERE embedding IS NOT NULL"
        ).fetchall()
        scored = []
        for fact_id, fact, created, blob in rows:
            other = _unpack(blob)
            if len(other) == len(vector):
                scored.append((_cosine(vector, other), fact_id, fact, created))
        scored.sort(key=lambda s: (-s[0], s[1]))
        return [Hit(i, f, round(s, 4), _iso(c), "vector/python") for s, i, f, c in scored[:k]]

    def _by_text(
        self, db: sqlite3.Connection, query: str, k: int, vector_only_missing: bool
    ) -> list[Hit]:
        words = _WORD.findall(query)
        if not words:
            return []
        # Each word quoted: the query is the model's text, never FTS5 syntax.
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words[:32])
        extra = " AND f.embedding IS NULL" if vector_only_missing else ""
        rows = db.execute(
            "SELECT f.id, f.fact, f.created, bm25(facts_fts) AS rank FROM facts_fts "
            "JOIN facts f ON f.id = facts_fts.rowid "
            f"WHERE facts_fts MATCH ?{extra} ORDER BY rank LIMIT ?",
            (match, k),
        ).fetchall()
        return [Hit(i, f, round(-rank, 6), _iso(c), "full-text") for i, f, c, rank in rows]

    def forget(self, memory_id: int) -> bool:
        with closing(self._connect()) as db, db:
            cursor = db.execute("DELETE FROM facts WHERE id = ?", (memory_id,))
            return cursor.rowcount > 0


def _usable(vector: Sequence[float] | None) -> bool:
    """A vector with a direction: a zero vector has no cosine with anything."""
    return bool(vector) and any(x != 0 for x in vector)  # type: ignore[union-attr]


def _pack(vector: Sequence[float] | None) -> bytes | None:
    if not _usable(vector):
        return None
    return struct.pack(f"<{len(vector)}f", *vector)  # type: ignore[arg-type]


def _unpack(blob: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(blob) // 4}f", blob)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
