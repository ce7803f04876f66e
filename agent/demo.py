"""`sandboxed-agent demo`: the worked example, end to end.

With an endpoint configured (OPENAI_API_KEY or OPENAI_BASE_URL) the real model answers.
Without one, a recorded model transcript is replayed through a loopback
OpenAI-compatible server, labelled as a replay; either way the real agent loop and the
real `openai` client run, and every tool call runs for real in the sandbox, including a
hung carrier tool killed on time and a path escape refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from policies import load_policy
from sandbox import Pool
from sandbox.reaper import survivors
from tools import Registry

from .approval import Approver
from .loop import Agent, ToolOutcome
from .model import ModelClient
from .progress import describe_tool
from .replay import ScriptedModelServer, Step, call, say
from .terminal import safe, safe_text

DEMO_POLICY = Path(__file__).resolve().parent.parent / "policies" / "demo.toml"
TRANSCRIPT = Path(__file__).resolve().parent / "data" / "demo_transcript.json"


def recorded_steps() -> tuple[str, list[Step]]:
    data = json.loads(TRANSCRIPT.read_text())
    steps = []
    for turn in data["turns"]:
        usage = turn.get("usage", {})
        if "tool_calls" in turn:
            steps.append(call(*[(name, args) for name, args in turn["tool_calls"]], usage=usage))
        else:
            steps.append(say(turn["content"], usage=usage))
    return data["question"], steps


def run_demo() -> int:
    registry = Registry.default()
    registry.load("tools.demo")
    policy = load_policy(DEMO_POLICY)
    question, steps = recorded_steps()
    live = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))
    server = None if live else ScriptedModelServer(steps).start()
    outcomes: list[ToolOutcome] = []

    def show(kind: str, details: dict[str, Any]) -> None:
        if kind == "tool":
            outcomes.append(details["outcome"])
            print(f"tool      {describe_tool(details['outcome'])}", flush=True)

    if live:
        endpoint = os.environ.get("OPENAI_BASE_URL") or "OpenAI"
        print(f"Live run of the worked example against {endpoint}.\n")
    else:
        print(
            "REPLAY of a recorded model transcript (no endpoint configured: set OPENAI_API_KEY\n"
            "or OPENAI_BASE_URL for a live model). The model's turns are recorded; every tool\n"
            "call below runs for real in a sandboxed worker (policy: policies/demo.toml).\n"
        )
    already = set(_sleepers())
    try:
        model = ModelClient(
            model=policy.run.model,
            base_url=server.base_url if server else os.environ.get("OPENAI_BASE_URL"),
            api_key=os.environ.get("OPENAI_API_KEY") if live else "replay",
            max_retries=policy.run.max_retries,
        )
        with Pool(policy, registry=registry, size=2, **policy.pool_options()) as pool:
            agent = Agent(pool, policy, model, approver=Approver(), progress=show)
            print(f"user      {question}", flush=True)
            started = time.monotonic()
            result = agent.run(question)
    finally:
        if server:
            server.stop()
    left = survivors(sorted(set(_sleepers()) - already))
    print(f"assistant {safe_text(result.answer or '(no answer: ' + result.message + ')')}")
    print(
        f"\n{result.steps} model calls, {len(outcomes)} tool calls, "
        f"{time.monotonic() - started:.1f} s; processes left behind by tools: {len(left)}"
    )
    problems = [] if result.ok else [f"the run ended without an answer: {result.message}"]
    if left:
        problems.append(f"{len(left)} tool processes survived")
    if not live:
        problems += _check_replay(outcomes)
    for problem in problems:
        print(f"demo: {safe(problem)}", file=sys.stderr)
    return 1 if problems else 0


def _check_replay(outcomes: list[ToolOutcome]) -> list[str]:
    """The replay exists to show these; fail loudly if the sandbox did not do them."""
    by_tool = {(o.tool, o.arguments): o.result for o in outcomes}
    hung = next((r for (t, _), r in by_tool.items() if t == "track_shipment"), None)
    escape = next((r for (t, a), r in by_tool.items() if t == "read_file" and ".." in a), None)
    problems = []
    if hung is None or hung.error is None or hung.error.kind != "timeout":
        problems.append("the hung tool was not killed at its deadline")
    if escape is None or escape.ok:
        problems.append("read_file was not refused outside its root")
    return problems


def _sleepers() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [])[:2] == ["sleep", "3600"]
    ]
