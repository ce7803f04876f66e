"""Retrieval memory in the sandbox: namespaces kept apart, full-text recall with no
model, vector recall through the loopback embeddings endpoint, limits, and a memory
file no other tool can reach."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FILE_LAYERS, pool_without

from agent.embeddings import Embedder
from agent.loop import Agent
from agent.model import ModelClient
from agent.replay import ScriptedModelServer, Step, call, say
from policies import parse_policy
from sandbox import Pool
from tools import Registry
from tools.memory_files import namespace_file
from tools.memory_store import MemoryStore, sqlite_vec_engine

ATTACKS = str(Path(__file__).with_name("attack_tools.py"))
POLICY = """
[tools.remember]
data_dir = "{dir}"
settings = {{ memory_max_fact_chars = 80, memory_max_facts = 4 }}
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


@pytest.fixture(params=list(FILE_LAYERS), ids=list(FILE_LAYERS))
def pool(request: pytest.FixtureRequest, memory_dir: Path, tmp_path: Path) -> Iterator[Pool]:
    """The data_dir is granted by a read-write bind in the worker's root and by
    Landlock inside it, then by each alone."""
    registry = Registry.default()
    registry.load("tools.memory")  # offered only on request
    registry.load(ATTACKS)
    policy = parse_policy(POLICY.format(dir=memory_dir), "memory.toml", tmp_path)
    with pool_without(*FILE_LAYERS[request.param], policy, registry=registry, size=2) as pool:
        yield pool


def use(pool: Pool, tool: str, namespace: str = "alice", **args: Any) -> Any:
    result = pool.call(tool, args, settings={"memory_namespace": namespace})
    assert result.ok, result
    return json.loads(result.output) if result.output[:1] in "[{" else result.output


def test_full_text_recall_needs_no_model(pool: Pool) -> None:
    use(pool, "remember", fact="The customer prefers email over phone calls")
    use(pool, "remember", fact="Order 12345 was a birthday present")
    use(pool, "remember", fact="The customer lives in Lyon")
    hits = use(pool, "recall", query="how to contact: email?", k=2)
    assert hits[0]["fact"] == "The customer prefers email over phone calls"
    assert hits[0]["via"] == "full-text" and {"id", "score", "created"} <= set(hits[0])
    assert use(pool, "recall", query='NEAR("x" *) AND OR NOT "', k=3) == []  # words, not syntax


def test_namespaces_never_see_each_other(pool: Pool) -> None:
    mine = use(pool, "remember", fact="Alice's secret: the door code is 4711")
    assert use(pool, "recall", "bob", query="door code secret") == []
    result = pool.call("forget", {"memory_id": mine["id"]}, settings={"memory_namespace": "bob"})
    assert not result.ok and f"no memory with id {mine['id']}" in result.error.message
    assert use(pool, "recall", query="door code")[0]["id"] == mine["id"]  # still there


def test_limits_and_duplicates(pool: Pool) -> None:
    first = use(pool, "remember", fact="Prefers email")
    again = use(pool, "remember", fact="  prefers   EMAIL ")
    assert again == {"id": first["id"], "stored": False, "note": "already remembered"}
    long = pool.call("remember", {"fact": "x" * 81}, settings={"memory_namespace": "alice"})
    assert "the fact has 81 characters; at most 80 are kept" in long.error.message
    for i in range(3):
        use(pool, "remember", fact=f"fact number {i}")
    full = pool.call("remember", {"fact": "one too many"}, settings={"memory_namespace": "alice"})
    assert "the memory is full: 4 facts (memory_max_facts = 4); forget some first" in (
        full.error.message
    )
    assert use(pool, "forget", memory_id=first["id"]) == f"forgot memory {first['id']}"
    assert use(pool, "remember", fact="one too many")["stored"]


def test_other_tools_cannot_read_or_write_the_memory(pool: Pool, memory_dir: Path) -> None:
    use(pool, "remember", fact="Alice's secret: the door code is 4711")
    database = namespace_file(memory_dir, "alice")
    assert database.exists()
    assert pool.call("attack_read", {"path": str(database)}).output.startswith("denied")
    write = pool.call("attack_write", {"path": str(memory_dir / "planted.db")})
    assert write.output.startswith("denied") and not (memory_dir / "planted.db").exists()


CONCEPTS = {"email": 0, "inbox": 0, "mail": 0, "phone": 1, "telephone": 1, "call": 1}


def concept_embedding(text: str) -> list[float]:
    """Words of one concept point the same way: "inbox" finds "email" with no shared word."""
    vector = [0.0, 0.0, 0.01]
    for word in text.lower().replace("?", " ").split():
        if word in CONCEPTS:
            vector[CONCEPTS[word]] += 1.0
    return vector


def test_vector_recall_through_the_loopback_embeddings_endpoint(pool: Pool) -> None:
    turns = [
        call(("remember", {"fact": "The customer prefers email"})),
        call(("remember", {"fact": "Never telephone before noon"})),
        call(("recall", {"query": "which inbox should we use?", "k": 2})),
    ]

    def model(request: dict[str, Any]) -> Step:
        done = sum(1 for m in request["messages"] if m["role"] == "assistant")
        if done < len(turns):
            return turns[done]
        return say(request["messages"][-1]["content"])

    with ScriptedModelServer(model, embed=concept_embedding) as server:
        client = ModelClient(model="m", base_url=server.base_url, api_key=None, max_retries=0)
        embedder = Embedder(model="e", base_url=server.base_url, api_key=None)
        settings = {"memory_namespace": "v"}
        agent = Agent(pool, pool.policy, client, embedder=embedder, call_settings=settings)  # type: ignore[arg-type]
        result = agent.run("Remember and recall")
    hits = json.loads(result.answer or "[]")
    assert [h["fact"] for h in hits] == [
        "The customer prefers email",
        "Never telephone before noon",
    ]
    engine = "sqlite-vec" if sqlite_vec_engine() else "python"
    assert hits[0]["via"] == f"vector/{engine}" and hits[0]["score"] > hits[1]["score"]
    # The orchestrator embedded what the tools asked for; the workers got only vectors.
    assert server.embedded == [
        "The customer prefers email",
        "Never telephone before noon",
        "which inbox should we use?",
    ]


def test_a_corrupt_memory_file_is_a_clear_error(pool: Pool, memory_dir: Path) -> None:
    memory_dir.mkdir(parents=True)
    (memory_dir / "memory.db").write_bytes(b"garbage" * 200)
    result = pool.call("recall", {"query": "anything", "k": 1})
    assert not result.ok and "is not a usable memory file" in result.error.message
    assert (memory_dir / "memory.db").read_bytes() == b"garbage" * 200


def test_a_memory_tool_without_a_data_dir_says_so(tmp_path: Path) -> None:
    registry = Registry.default()
    registry.load("tools.memory")
    with Pool(registry=registry, size=1) as pool:
        result = pool.call("remember", {"fact": "x"})
    assert "needs a data_dir in its policy table" in result.error.message


def test_sqlite_vec_and_the_python_scan_rank_alike(tmp_path: Path) -> None:
    if sqlite_vec_engine() is None:
        pytest.skip("the vector extra (sqlite-vec) is not installed")  # pragma: no cover
    facts = ["prefers email", "never telephone", "email and phone both fine", "lives in Lyon"]
    stores = [MemoryStore(tmp_path, "ns", 100, 10, use_sqlite_vec=flag) for flag in (True, False)]
    assert [s.vector_engine for s in stores] == ["sqlite-vec", "python"]
    for fact in facts:
        stores[0].remember(fact, concept_embedding(fact))
    stores[0].remember("no vector at all", [0.0, 0.0, 0.0])  # a zero vector is kept as none
    query = concept_embedding("which inbox?")
    vec, scan = (s.recall("which inbox?", 3, query) for s in stores)
    assert [h.fact for h in vec] == [h.fact for h in scan]
    assert [h.score for h in vec] == pytest.approx([h.score for h in scan], abs=1e-3)
    assert [h.fact for h in vec][:2] == ["prefers email", "email and phone both fine"]
    assert {h.via for h in vec} == {"vector/sqlite-vec"} and {h.via for h in scan} == {
        "vector/python"
    }


def test_the_model_cannot_make_the_orchestrator_upload_a_huge_text() -> None:
    with ScriptedModelServer([], embed=concept_embedding) as server:
        embedder = Embedder(model="e", base_url=server.base_url, api_key=None)
        assert embedder.embed("x" * 40_000) is None
        assert "not embedded: 40000 characters" in (embedder.last_error or "")
        assert embedder.embed("email") == [1.0, 0.0, 0.01]
    assert server.embedded == ["email"]
