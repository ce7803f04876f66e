"""The orchestrator: the model loop with its guardrails, approval, the audit trail,
checkpointed runs, and the `sandboxed-agent` command line.

    from agent import Agent, ModelClient
    from policies import load_policy
    from sandbox import Pool

    policy = load_policy()
    with Pool(policy, **policy.pool_options()) as pool:
        model = ModelClient(model="gpt-4o-mini", base_url=None, api_key=KEY)
        print(Agent(pool, policy, model).run("Can I still return order 12345?").answer)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .approval import Approver as Approver
    from .audit import Trace as Trace
    from .checkpoints import RunStore as RunStore
    from .embeddings import Embedder as Embedder
    from .loop import Agent as Agent
    from .loop import RunResult as RunResult
    from .model import ModelClient as ModelClient

_WHERE = {
    "Agent": "loop",
    "Approver": "approval",
    "Embedder": "embeddings",
    "ModelClient": "model",
    "RunResult": "loop",
    "RunStore": "checkpoints",
    "Trace": "audit",
}


def __getattr__(name: str) -> Any:
    """Each name imported on first use: the console script imports this package before
    anything else (`agent.__main__`), and a Ctrl-C there must not meet a traceback."""
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")


__all__ = ["Agent", "Approver", "Embedder", "ModelClient", "RunResult", "RunStore", "Trace"]
