"""Memory namespaces isolated in every observable way: scores, ids and counts are a
namespace's own whatever others store; hostile names cannot point elsewhere; a memory
file of the old shared layout is split without losing a fact."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policies import parse_policy
from sandbox import Pool
from tools import Registry
from tools.memory_files import LEGACY_KEPT_AS, MemoryRequestError, namespace_file
from tools.memory_store import MemoryStore

POLICY = """
[tools.remember]
data_dir = "{dir}"
settings = {{ memory_max_facts = 60 }}
[tools.recall]
data_dir = "{dir}"
[tools.forget]
data_dir = "{dir}"
"""


@pytest.fixture
def memory_dir() -> Iterator[Path]:
    """Where workers of any uid can pass (pytest's own tmp is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="sandboxed-agent-memory-"))
    path.chmod(0o711)
    yield path / "memory"
    shutil.rmtree(path)


@pytest.fixture
def pool(memory_dir: Path, tmp_path: Path) -> Iterator[Pool]:
    policy = parse_policy(POLICY.format(dir=memory_dir), "memory.toml", tmp_path)
    registry = Registry.default()
    registry.load("tools.memory")  # offered only on request
    with Pool(policy, registry=registry, size=2) as pool:
        yield pool


def use(pool: Pool, tool: str, namespace: str, **args: Any) -> Any:
    result = pool.call(tool, args, settings={"memory_namespace": namespace})
    assert result.ok, result
    return json.loads(result.output) if result.output[:1] in "[{" else result.output


def test_scores_ids_and_counts_do_not_move_when_others_store(pool: Pool) -> None:
    first = use(pool, "remember", "alice", fact="hiv test results came back negative")
    for fact in ["prefers mornings", "lives in Lyon", "speaks French", "allergic to nuts"]:
        use(pool, "remember", "alice", fact=fact)
    before = use(pool, "recall", "alice", query="hiv", k=5)
    assert first["id"] == 1 and [h["id"] for h in before] == [1]
    assert before[0]["score"] > 0.1  # a rare word among her facts: it weighs
    for i in range(50):
        use(pool, "remember", "bob", fact=f"hiv note number {i}: hiv clinic visit")
    after = use(pool, "recall", "alice", query="hiv", k=5)
    # BM25 over alice's facts only: bob's fifty do not change her score by a bit.
    assert after == before
    # Ids count from 1 in each namespace, whatever the others store ...
    assert use(pool, "remember", "carol", fact="hiv")["id"] == 1
    assert use(pool, "remember", "alice", fact="a sixth fact")["id"] == 6
    # ... and so does max_facts (60): bob's 50 leave carol all of hers.
    for i in range(59):
        use(pool, "remember", "carol", fact=f"carol fact {i}")
    full = pool.call("remember", {"fact": "one more"}, settings={"memory_namespace": "carol"})
    assert "the memory is full: 60 facts" in full.error.message
    assert use(pool, "remember", "bob", fact="bob still has room")["stored"]


HOSTILE_NAMES = [
    "../x",
    "../../../../etc/passwd",
    "a/b",
    "ab",
    "/abs",
    ".",
    "..",
    "a\\b",
    " ",
    "-",
    "x" * 200,
    "é",
    "e\u0301",
    "日本語",
    "\u202eevil",
    "namespaces",
    "memory.db",
]


def test_hostile_namespace_names_stay_in_their_own_file(pool: Pool, memory_dir: Path) -> None:
    for name in HOSTILE_NAMES:
        use(pool, "remember", name, fact=f"the fact of {name!r}")
    for name in HOSTILE_NAMES:
        hits = use(pool, "recall", name, query="the fact of", k=50)
        assert [h["fact"] for h in hits] == [f"the fact of {name!r}"], name
    # One file each, directly in the data_dir, named only from safe characters.
    files = [p.name for p in memory_dir.iterdir()]
    assert len(files) == len(HOSTILE_NAMES)
    assert all(re.fullmatch(r"ns-([A-Za-z0-9_-]{1,40}-)?[0-9a-f]{32}\.db", f) for f in files)
    assert [p.name for p in memory_dir.parent.iterdir()] == ["memory"]
    assert not Path("/etc/passwd.db").exists() and not Path("/abs").exists()


@pytest.mark.parametrize("name", ["", "x" * 201, "a\x00b", "line\nbreak", "tab\there", "\x1b[2J"])
def test_impossible_namespace_names_are_clear_errors(pool: Pool, name: str) -> None:
    result = pool.call("recall", {"query": "x"}, settings={"memory_namespace": name})
    assert not result.ok and result.error.kind == "tool_error"
    assert "a memory namespace is 1 to 200 characters" in result.error.message


def test_a_file_of_another_namespace_is_refused(tmp_path: Path) -> None:
    MemoryStore(tmp_path, "bob", 100, 10).remember("bob's fact", None)
    alice = namespace_file(tmp_path, "alice")
    shutil.copy(namespace_file(tmp_path, "bob"), alice)
    with pytest.raises(MemoryRequestError, match="holds the memories of another namespace"):
        MemoryStore(tmp_path, "alice", 100, 10)


V1_SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE facts (id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, fact TEXT NOT NULL, "
    "digest TEXT NOT NULL, created REAL NOT NULL, embedding BLOB, UNIQUE (namespace, digest))",
    "CREATE INDEX facts_namespace ON facts (namespace)",
    "CREATE VIRTUAL TABLE facts_fts USING fts5(fact, content='facts', content_rowid='id')",
    "CREATE TRIGGER facts_added AFTER INSERT ON facts BEGIN "
    "INSERT INTO facts_fts (rowid, fact) VALUES (new.id, new.fact); END",
]


def shared_file(directory: Path, facts: list[tuple[str, str]], version: str = "1") -> bytes:
    """A memory file of the shared layout (schema version 1), as the old code made it."""
    directory.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(directory / "memory.db") as db:
        for statement in V1_SCHEMA:
            db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (version,))
        for i, (namespace, fact) in enumerate(facts):
            db.execute(
                "INSERT INTO facts (namespace, fact, digest, created) VALUES (?, ?, ?, ?)",
                (namespace, fact, f"d{i}", 1_700_000_000.0 + i),
            )
    db.close()
    return (directory / "memory.db").read_bytes()


def test_a_shared_memory_file_is_split_per_namespace_without_loss(
    pool: Pool, memory_dir: Path
) -> None:
    facts = [("alice", "alice likes tea"), ("bob", "bob likes tea"), ("alice", "alice in Lyon")]
    facts += [("a\x00b", "an old name no tool can give now")]
    old = shared_file(memory_dir, facts)
    hits = use(pool, "recall", "alice", query="alice", k=10)
    assert sorted((h["id"], h["fact"]) for h in hits) == [
        (1, "alice likes tea"),
        (3, "alice in Lyon"),
    ]
    assert hits[0]["created"].startswith("2023-11-14")  # its date came along
    assert [(h["id"], h["fact"]) for h in use(pool, "recall", "bob", query="tea")] == [
        (2, "bob likes tea")
    ]
    # The old file is kept whole under another name; it is not read again.
    assert not (memory_dir / "memory.db").exists()
    assert (memory_dir / LEGACY_KEPT_AS).read_bytes() == old
    assert use(pool, "remember", "alice", fact="a new fact")["id"] == 4
    assert use(pool, "forget", "bob", memory_id=2) == "forgot memory 2"
    assert use(pool, "recall", "alice", query="tea")[0]["fact"] == "alice likes tea"


def test_an_unreadable_shared_file_is_left_untouched_and_said_so(tmp_path: Path) -> None:
    old = shared_file(tmp_path, [("alice", "kept")], version="7")
    with pytest.raises(MemoryRequestError) as info:
        MemoryStore(tmp_path, "alice", 100, 10)
    message = str(info.value)
    assert "schema version 7" in message and "left untouched" in message
    assert "move it away" in message
    assert (tmp_path / "memory.db").read_bytes() == old
