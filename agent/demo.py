"""`sandboxed-agent demo`: the worked example, end to end.

With an endpoint configured (OPENAI_API_KEY or OPENAI_BASE_URL) the real model answers.
Without one, a recorded model transcript is replayed through a loopback
OpenAI-compatible server, labelled as a replay; either way the real agent loop and the
real `openai` client run, and every tool call runs for real in the sandbox, including a
hung carrier tool killed on time and a path escape refused.

The replay is honest about what it replays: each live tool result is checked against
the one recorded with the transcript (`agent.recording`). At the first that differs,
the demo says which, what was recorded and what happened, stops the recorded model
(its later turns were written for the recorded results), shows no answer, and exits 1.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from policies import load_policy
from sandbox import Pool
from sandbox.reaper import survivors
from tools import Registry

from .approval import Approver
from .demo_view import DemoView
from .loop import Agent, ToolOutcome
from .model import ModelClient
from .progress import describe_tool
from .recording import RecordedCall, Transcript, describe_recorded, differs
from .replay import ScriptedModelServer, Step, fail
from .terminal import safe

DEMO_POLICY = Path(__file__).resolve().parent.parent / "policies" / "demo.toml"
TRANSCRIPT = Path(__file__).resolve().parent / "data" / "demo_transcript.json"
STOPPED = (
    "the replay stopped: a live tool result differs from the recording, so the recorded "
    "model turns that follow would not follow from this run"
)


class Replay:
    """The recorded model, played only while the live results agree with the recording."""

    def __init__(self, transcript: Transcript) -> None:
        self.steps, self.calls = transcript.steps()
        self.seen: set[str] = set()
        self.differences: list[str] = []

    def __call__(self, request: dict[str, Any]) -> Step:
        """The scripted server's next step: the recorded turn, or a refusal to go on."""
        if self.differences:
            return fail(400, STOPPED)
        turn = sum(1 for m in request.get("messages", []) if m.get("role") == "assistant")
        return self.steps[turn] if turn < len(self.steps) else fail(400, "no recorded turn")

    def turn(self, step: int) -> Step | None:
        return self.steps[step - 1] if 0 < step <= len(self.steps) else None

    def check(self, outcome: ToolOutcome) -> str | None:
        """What differs from the recording in this live outcome, in plain words."""
        recorded: RecordedCall | None = self.calls.get(outcome.call_id)
        if recorded is None:
            return None
        self.seen.add(outcome.call_id)
        how = differs(recorded.recorded, outcome)
        if how is None:
            return None
        said = f"{outcome.tool} {outcome.arguments}: {describe_recorded(recorded.recorded)}; {how}"
        self.differences.append(said)
        return said

    def not_run(self) -> list[str]:
        return [f"{c.tool} {c.args}" for i, c in self.calls.items() if i not in self.seen]


def run_demo(
    policy_path: Path = DEMO_POLICY, out: TextIO | None = None, model: str | None = None
) -> int:
    """`model`: a live endpoint's (Ollama and vLLM know only the models they serve)."""
    live = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))
    if model is not None and not live:
        from .runner import UsageError

        raise UsageError(
            "--model names a live endpoint's model, and none is configured: set "
            "OPENAI_BASE_URL (or OPENAI_API_KEY); without either the demo replays a recording"
        )
    view = DemoView(out or sys.stdout)
    registry = Registry.default()
    registry.load("tools.demo")
    policy = load_policy(policy_path)
    if model is not None:
        policy = policy.model_copy(update={"run": policy.run.model_copy(update={"model": model})})
    transcript = Transcript.load(TRANSCRIPT)
    if os.environ.get("OPENAI_BASE_URL"):
        from .runner import check_base_url

        check_base_url("OPENAI_BASE_URL", os.environ["OPENAI_BASE_URL"])
    replay = None if live else Replay(transcript)
    if replay and policy.run.offer is not None:
        # The recorded model was offered the hung carrier tool, and called it: the
        # replay shows the kill. A live model is offered the policy's tools alone.
        offer = [*policy.run.offer, *(c.tool for turn in transcript.turns for c in turn.tool_calls)]
        run = policy.run.model_copy(update={"offer": sorted(set(offer))})
        policy = policy.model_copy(update={"run": run})
    server = ScriptedModelServer(replay).start() if replay else None
    outcomes: list[ToolOutcome] = []

    def show(kind: str, details: dict[str, Any]) -> None:
        if kind == "thinking" and replay is None:
            view.spin(f"model thinking (step {details['step']})")
        elif kind == "model":
            _show_turn(view, replay.turn(details["step"]) if replay else None)
        elif kind == "tool":
            outcome = details["outcome"]
            outcomes.append(outcome)
            view.say("tool", describe_tool(outcome))
            differs_here = replay.check(outcome) if replay else None
            if differs_here:
                view.say("DIFFERS", differs_here)

    if live:
        model_name = safe(policy.run.model)
        view.plain(f"Live run of the worked example against {_endpoint()}, model {model_name}.\n")
    else:
        view.plain(
            "REPLAY of a recorded model transcript (no endpoint configured: set "
            "OPENAI_API_KEY or OPENAI_BASE_URL for a live model). The model's turns are "
            "recorded, and marked so; every tool call below runs for real in a sandboxed "
            "worker (policy: policies/demo.toml), and its result is checked against the "
            "one recorded with the transcript. Two failures are part of the recording, on "
            "purpose: a carrier tool that never answers is killed at its deadline "
            "(timeout), and a path outside the document root is refused (tool_error).\n"
        )
    already = set(_sleepers())
    started = time.monotonic()
    try:
        client = ModelClient(
            model=policy.run.model,
            base_url=server.base_url if server else os.environ.get("OPENAI_BASE_URL"),
            api_key=os.environ.get("OPENAI_API_KEY") if live else "replay",
            max_retries=policy.run.max_retries,
            api=policy.run.api,
            tools_sent=policy.run.tools_sent,  # a live server's prompt cache holds
        )
        with Pool(policy, registry=registry, size=2, **policy.pool_options()) as pool:
            agent = Agent(pool, policy, client, approver=Approver(), progress=show)
            view.say("user", transcript.question)
            result = agent.run(transcript.question)
    finally:
        view.halt()
        if server:
            server.stop()
    left = survivors(sorted(set(_sleepers()) - already))
    problems = []
    if replay and replay.differences:
        view.plain(
            "\nNo answer is shown. The recorded model wrote its later turns and its answer "
            "after seeing the recorded tool results; this run's results differ, so the "
            "recorded answer would not follow from them. What differed:"
        )
        for said in replay.differences:
            view.say("", f"- {said}")
        problems.append(
            f"{len(replay.differences)} tool result(s) differ from the recording; "
            "the replay stopped there"
        )
    elif not result.ok:
        view.say("", f"(no answer: {result.message})")
        problems.append(f"the run ended without an answer: {result.message}")
    else:
        view.say("assistant", f"[recorded] {result.answer}" if replay else result.answer or "")
        if replay:
            missing = replay.not_run()
            problems += [f"the recorded call {call} was never made" for call in missing]
            if not missing:
                view.plain("\nEvery tool result matched the recording.")
    view.plain(
        f"\n{result.steps} model calls, {len(outcomes)} tool calls, "
        f"{time.monotonic() - started:.1f} s; processes left behind by tools: {len(left)}"
    )
    if left:
        problems.append(f"{len(left)} tool processes survived")
    for problem in problems:
        print(f"demo: {safe(problem)}", file=sys.stderr)
    if result.reason == "interrupted":
        return 130  # Ctrl-C: as every command ends on one, not as a replay that differed
    return 1 if problems else 0


def _show_turn(view: DemoView, step: Step | None) -> None:
    """A recorded model turn as it replays, then a spinner while its tools run."""
    calls = (step.message or {}).get("tool_calls") if step else None
    names = ", ".join(c["function"]["name"] for c in calls or [])
    if calls:
        asked = "; ".join(f"{c['function']['name']} {c['function']['arguments']}" for c in calls)
        view.say("model", f"[recorded] asks for {asked}")
    if step is None or calls:
        view.spin(f"running {names}" if names else "running the model's tool calls")


def _endpoint() -> str:
    return os.environ.get("OPENAI_BASE_URL") or "OpenAI"


def _sleepers() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [])[:2] == ["sleep", "3600"]
    ]
