"""Retrieval memory as tools: the model decides when to remember, recall and forget.

They run in the sandbox like any tool. Their policy gives them a `data_dir` (the one
place they may write) and, in `settings`, the namespace and the limits; the model
chooses none of these. With an embeddings endpoint, the agent embeds the fact or the
query before the call (the key never reaches the worker) and the tool stores or
searches by vector; without one, full-text search answers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import context
from .memory_store import MemoryRequestError, MemoryStore
from .registry import tool

DEFAULT_NAMESPACE = "default"
DEFAULT_MAX_FACT_CHARS = 2000
DEFAULT_MAX_FACTS = 10_000


def _store() -> MemoryStore:
    directory = Path(context.data_dir())
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise MemoryRequestError(
            f"cannot write to the memory directory {directory} as uid {os.getuid()}: give "
            "the memory tools a data_dir every worker can reach (see the README, Memory)"
        )
    return MemoryStore(
        directory,
        namespace=str(context.setting("memory_namespace", DEFAULT_NAMESPACE)),
        max_fact_chars=int(context.setting("memory_max_fact_chars", DEFAULT_MAX_FACT_CHARS)),
        max_facts=int(context.setting("memory_max_facts", DEFAULT_MAX_FACTS)),
        use_sqlite_vec=context.setting("memory_vector_search", "auto") != "python",
    )


@tool(embed="fact")
def remember(fact: str) -> dict[str, Any]:
    """Keep a fact for later conversations: a preference, a decision, a detail the
    user gave. Use it when the user asks you to remember something. Not for facts a
    tool can look up (orders, dates, policies). A fact already kept is not stored twice.

    Args:
        fact: One self-contained statement, in the user's own terms.
    """
    memory_id, new = _store().remember(fact, context.embedding())
    return {"id": memory_id, "stored": new, "note": "" if new else "already remembered"}


@tool(embed="query")
def recall(query: str, k: int = 5) -> list[dict[str, Any]]:
    """Search the facts kept from earlier conversations; the best matches first, each
    with its id, score and date. Use it when the user refers to something said before.
    Not for orders, dates or policies: other tools look those up.

    Args:
        query: What to look for, in words.
        k: How many facts at most (1 to 50).
    """
    if not 1 <= k <= 50:
        raise MemoryRequestError(f"k must be from 1 to 50 (got {k})")
    hits = _store().recall(query, k, context.embedding())
    return [
        {"id": h.id, "fact": h.fact, "score": h.score, "created": h.created, "via": h.via}
        for h in hits
    ]


@tool
def forget(memory_id: int) -> str:
    """Delete a kept fact for good, by its id (from `recall` or `remember`). Use it only
    when the user asks to forget that fact; a person must approve it.

    Args:
        memory_id: The fact's id.
    """
    if not _store().forget(memory_id):
        raise MemoryRequestError(f"no memory with id {memory_id}")
    return f"forgot memory {memory_id}"
