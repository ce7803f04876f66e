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
        messages = request.get("messages") or []
        first = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        if first is None:
            return fail(400, "no user message: not a run of this suite")
        script = steps.get(str(messages[first].get("content")))
        if script is None:
            return fail(400, "no case of this suite has this task")
        turn = sum(1 for m in messages[first:] if m.get("role") == "assistant")
        return script[turn] if turn < len(script) else fail(500, "the script has no more steps")

    return play


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
