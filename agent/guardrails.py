"""The run's guardrails: budgets checked before each model call, repeated-call
detection, and the cut that keeps a huge tool result out of the context."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from policies import Price, RunPolicy

from .model import Usage


def model_calls(n: int) -> str:
    """'1 model call', '3 model calls': a count as a person reads it in an error line."""
    return f"{n} model call" if n == 1 else f"{n} model calls"


StopReason = Literal[
    "answer",
    "max_iterations",
    "max_cost",
    "max_wall_time",
    "repeated_call",
    "length",
    "content_filter",
    "model_error",
    "interrupted",
    "out_of_resources",
]


class RunStopped(Exception):
    """A guardrail ends the run; `reason` is stable, `message` is for people."""

    def __init__(self, reason: StopReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Budget:
    """Steps, dollars and seconds of one run."""

    limits: RunPolicy
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    cost_usd: float = 0.0
    unpriced: set[str] = field(default_factory=set)
    clock: Callable[[], float] = time.monotonic
    """Seconds, for the wall budget: a Temporal workflow gives its own deterministic
    clock (then `started` must be given from it too)."""

    def before_model_call(self) -> float:
        """Raise `RunStopped` if a budget is spent; else return the seconds left."""
        if self.steps >= self.limits.max_iterations:
            raise RunStopped(
                "max_iterations",
                f"stopped after {model_calls(self.steps)} (max_iterations = "
                f"{self.limits.max_iterations}) without a final answer",
            )
        if self.cost_usd >= self.limits.max_cost_usd:
            raise RunStopped(
                "max_cost",
                f"stopped: ${self.cost_usd:.4f} spent, the budget is "
                f"${self.limits.max_cost_usd:g} (max_cost_usd)",
            )
        left = self.time_left()
        if left <= 0:
            raise RunStopped(
                "max_wall_time",
                f"stopped: the run used its {self.limits.max_wall_s:g} s (max_wall_s)",
            )
        return left

    def time_left(self) -> float:
        return self.limits.max_wall_s - (self.clock() - self.started)

    def charge(self, model: str, usage: Usage, asked: str | None = None) -> float:
        """Count one model call; return its cost in dollars. `model` is the name the
        answer gave, `asked` the model the run asked for: the endpoint names the one
        it answered with, so a price is looked up under both and the higher charged
        (a name without a price made a run free, and its cost budget moot)."""
        self.steps += 1
        prices = [_price_for(self.limits.prices, name) for name in {model, asked or model}]
        costs = [
            (
                usage.input_tokens * price.input_per_million
                + usage.output_tokens * price.output_per_million
            )
            / 1_000_000
            for price in prices
            if price is not None
        ]
        if not costs:
            self.unpriced.add(model)
            return 0.0
        cost = max(costs)
        self.cost_usd += cost
        return cost


def _price_for(prices: dict[str, Price], model: str) -> Price | None:
    if model in prices:
        return prices[model]
    # Endpoints often answer with a dated name ("gpt-4o-mini-2024-07-18").
    matches = [name for name in prices if model.startswith(name + "-")]
    return prices[max(matches, key=len)] if matches else None


class RepeatGuard:
    """The same tool with the same arguments again: a note first, then stop."""

    def __init__(self, max_repeats: int) -> None:
        self.max_repeats = max_repeats
        self.seen: Counter[tuple[str, str]] = Counter()
        self.last_output: dict[tuple[str, str], str] = {}

    @staticmethod
    def key(tool: str, arguments: str) -> tuple[str, str]:
        try:
            canonical = json.dumps(json.loads(arguments or "{}"), sort_keys=True)
        except (ValueError, RecursionError):
            canonical = arguments
        return tool, canonical

    def check(self, tool: str, arguments: str) -> Literal["run", "note", "stop"]:
        key = self.key(tool, arguments)
        self.seen[key] += 1
        count = self.seen[key]
        if count == 1:
            return "run"
        return "note" if count - 1 <= self.max_repeats else "stop"

    def remember(self, tool: str, arguments: str, text: str) -> None:
        self.last_output[self.key(tool, arguments)] = text

    def note(self, tool: str, arguments: str) -> str:
        earlier = self.last_output.get(self.key(tool, arguments), "")
        return (
            f"note: you already called {tool} with exactly these arguments; it was not run "
            f"again. Its result was: {earlier}\nUse it, try something different, or answer. "
            "Repeating the same call again ends the run."
        )


def truncate(text: str, limit: int) -> str:
    """Cut `text` to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"\n[truncated: {len(text) - limit} of {len(text)} characters cut]"
    return text[: max(0, limit - len(marker))] + marker


def tool_schemas(specs: list[Any]) -> list[dict[str, Any]]:
    return [spec.openai_schema for spec in specs]
