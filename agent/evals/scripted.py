"""One scripted model for a whole suite, for runs that are not on this machine.

    python -m agent.evals.scripted evals/worked_example.toml [--port P]
    # prints: scripted model for 4 cases at http://127.0.0.1:P/v1

`eval --scripted` gives each run its own loopback server; runs on Temporal workers
talk to the workers' endpoint instead, so this serves every case's script at once:
a request is matched to its case by the task (the conversation's first user
message) and to its step by the model turns since then. Many runs can play at once,
in any order, on any worker (start the workers with `--base-url` this URL).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..replay import ScriptedModelServer, Step, fail
from .runner import script_steps
from .suite import Suite, load_suite


def suite_script(suite: Suite) -> Any:
    """A script (a function of the request) that plays each case's steps by task."""
    steps = {case.task: script_steps(case) for case in reversed(suite.cases) if case.script}

    def play(request: dict[str, Any]) -> Step:
        # Chat Completions sends `messages`; the Responses API (`--api responses`) sends
        # `input` items, where one model turn is a run of assistant text and function_call items.
        items = request.get("messages") or request.get("input") or []
        if not isinstance(items, list):
            items = []
        items = [item for item in items if isinstance(item, dict)]
        first = next((i for i, m in enumerate(items) if m.get("role") == "user"), None)
        if first is None:
            return fail(
                400, "no user message (neither `messages` nor `input`): not a run of this suite"
            )
        script = steps.get(str(items[first].get("content")))
        if script is None:
            return fail(400, "no case of this suite has this task")
        turn = sum(1 for i in range(first, len(items)) if _opens_turn(items, i))
        return script[turn] if turn < len(script) else fail(500, "the script has no more steps")

    return play


def _by_model(item: dict[str, Any]) -> bool:
    return item.get("role") == "assistant" or item.get("type") == "function_call"


def _opens_turn(items: list[dict[str, Any]], i: int) -> bool:
    """An assistant message opens a model turn; a function_call opens one unless it follows
    the text or the calls of its own turn (the Responses API lists a turn's parts apart)."""
    item = items[i]
    if item.get("role") == "assistant":
        return True
    return item.get("type") == "function_call" and not (i > 0 and _by_model(items[i - 1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.evals.scripted", description=__doc__)
    p.add_argument("suite")
    p.add_argument("--port", type=int, default=0, help="default: one the OS picks")
    args = p.parse_args(argv)
    try:
        suite = load_suite(args.suite)
    except Exception as exc:
        print(f"scripted: {exc}", file=sys.stderr)
        return 2
    server = ScriptedModelServer(suite_script(suite), port=args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(f"scripted model for {len(suite.cases)} cases at {server.base_url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
