"""Retrieval memory: facts in one SQLite file, a namespace per user or agent.

Full-text search (FTS5, BM25) needs no model at all. When the agent has an embeddings
endpoint, each fact is stored with its vector (float32, the layout sqlite-vec reads) and
`recall` ranks by cosine similarity instead; facts without a vector are still found by
full text. With the `vector` extra installed, sqlite-vec computes the similarity in SQL
(through pysqlite3 where this Python's sqlite3 cannot load extensions); without it, the
same ranking is computed here. Namespaces never see each other: every statement is
scoped to one.

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

SCHEMA_VERSION = 1
_SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE facts (id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, fact TEXT NOT NULL, "
    "digest TEXT NOT NULL, created REAL NOT NULL, embedding BLOB, UNIQUE (namespace, digest))",
    "CREATE INDEX facts_namespace ON facts (namespace)",
    "CREATE VIRTUAL TABLE facts_fts USING fts5(fact, content='facts', content_rowid='id')",
    "CREATE TRIGGER facts_added AFTER INSERT ON facts BEGIN "
    "INSERT INTO facts_fts (rowid, fact) VALUES (new.id, new.fact); END",
    "CREATE TRIGGER facts_removed AFTER DELETE ON facts BEGIN "
    "INSERT INTO facts_fts (facts_fts, rowid, fact) VALUES ('delete', old.id, old.fact); END",
]
_WORD = re.compile(r"\w+", re.UNICODE)


class MemoryRequestError(ValueError):
    """A memory request that cannot be met; the message says why and what is accepted."""


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
    def __init__(
        self,
        path: Path,
        namespace: str,
        max_fact_chars: int,
        max_facts: int,
        use_sqlite_vec: bool = True,
    ) -> None:
        if not namespace or len(namespace) > 200:
            raise MemoryRequestError("the memory namespace must be 1 to 200 characters")
        self.path = path
        self.namespace = namespace
        self.max_fact_chars = max_fact_chars
        self.max_facts = max_facts
        engine = sqlite_vec_engine() if use_sqlite_vec else None
        self._sqlite, self._vec = engine if engine else (sqlite3, None)
        self.vector_engine = "sqlite-vec" if self._vec else "python"
        self._open()

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
                    version = str(SCHEMA_VERSION)
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (version,))
                    return
                row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except self._sqlite.DatabaseError as exc:
            raise MemoryRequestError(
                f"{self.path} is not a usable memory file ({exc}); it was left untouched"
            ) from None
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise MemoryRequestError(
                f"{self.path} has memory schema version {row[0] if row else 'none'}, this "
                f"program reads version {SCHEMA_VERSION}; it was left untouched"
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
            row = db.execute(
                "SELECT id FROM facts WHERE namespace = ? AND digest = ?", (self.namespace, digest)
            ).fetchone()
            if row is not None:
                return int(row[0]), False
            (count,) = db.execute(
                "SELECT COUNT(*) FROM facts WHERE namespace = ?", (self.namespace,)
            ).fetchone()
            if count >= self.max_facts:
                raise MemoryRequestError(
                    f"the memory is full: {count} facts (memory_max_facts = {self.max_facts}); "
                    "forget some first"
                )
            cursor = db.execute(
                "INSERT INTO facts (namespace, fact, digest, created, embedding) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.namespace, fact, digest, time.time(), _pack(vector)),
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
                "FROM facts WHERE namespace = ? AND embedding IS NOT NULL "
                "AND length(embedding) = ? ORDER BY score DESC, id LIMIT ?",
                (_pack(vector), self.namespace, 4 * len(vector), k),
            ).fetchall()
            return [Hit(i, f, round(s, 4), _iso(c), "vector/sqlite-vec") for i, f, c, s in rows]
        rows = db.execute(
            "SELECT id, fact, created, embedding FROM facts "
            "WHERE namespace = ? AND embedding IS NOT NULL",
            (self.namespace,),
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
            f"WHERE facts_fts MATCH ? AND f.namespace = ?{extra} ORDER BY rank LIMIT ?",
            (match, self.namespace, k),
        ).fetchall()
        return [Hit(i, f, round(-rank, 6), _iso(c), "full-text") for i, f, c, rank in rows]

    def forget(self, memory_id: int) -> bool:
        with closing(self._connect()) as db, db:
            cursor = db.execute(
                "DELETE FROM facts WHERE id = ? AND namespace = ?", (memory_id, self.namespace)
            )
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
