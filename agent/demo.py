"""`sandboxed-agent demo`: the worked example, replayed through the real sandbox.

No model is called (that comes with the agent loop): the tool calls a model would
make are scripted, but each one runs for real in a sandboxed worker, and the answer
is composed from what the tools actually returned. It shows a hung tool killed on
time with everything it started, and a path escape refused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from policies import load_policy
from sandbox import Pool, ToolResult
from sandbox.reaper import survivors
from tools import Registry

DEMO_POLICY = Path(__file__).resolve().parent.parent / "policies" / "demo.toml"
QUESTION = "Can I still return order 12345?"


def _say(who: str, text: str) -> None:
    print(f"{who:<10}{text}", flush=True)


def _show(result: ToolResult, args: dict[str, Any]) -> ToolResult:
    _say("tool", f"{result.tool} {json.dumps(args)}")
    where = f"{result.duration_ms:.1f} ms, worker pid {result.worker_pid}"
    if result.ok:
        _say("  ok", f"{(result.output or '').strip()}   ({where})")
    else:
        assert result.error is not None
        _say("  error", f"{result.error.kind}: {result.error.message}   ({where})")
    return result


def run_demo() -> int:
    registry = Registry.default()
    registry.load("tools.demo")
    policy = load_policy(DEMO_POLICY)
    print(
        "Replay of the worked example: the model's tool calls are scripted, and each one\n"
        "runs for real in a sandboxed worker process (policy: policies/demo.toml).\n"
    )
    problems: list[str] = []
    with Pool(policy, registry=registry, size=2) as pool:

        def call(tool: str, **args: Any) -> ToolResult:
            return _show(pool.call(tool, args), args)

        _say("user", QUESTION)
        order = call("get_order_status", order_id="12345")
        policy_text = call("read_file", path="policy.txt")
        today = call("get_current_date")
        verdict = call("check_return_eligibility", order_id="12345")

        _say("", "-- a carrier tool that hangs, with a helper process of its own --")
        already = set(_sleepers())
        started = time.monotonic()
        hung = call("track_shipment", order_id="12345")
        waited = time.monotonic() - started
        left = survivors(sorted(set(_sleepers()) - already))
        limit = policy.limits_for("track_shipment").timeout_s
        _say("", f"killed after {waited:.2f} s (deadline {limit:g} s); processes left: {len(left)}")
        if hung.ok or hung.error is None or hung.error.kind != "timeout" or left:
            problems.append("the hung tool was not killed cleanly")

        _say("", "-- a path that tries to leave the document root --")
        escape = call("read_file", path="../../../etc/passwd")
        if escape.ok:
            problems.append("read_file read outside its root")

    for name, result in [
        ("order", order),
        ("policy", policy_text),
        ("date", today),
        ("eligibility", verdict),
    ]:
        if not result.ok:
            problems.append(f"the {name} lookup failed")
    if not problems:
        details = json.loads(order.output or "{}")
        _say(
            "assistant",
            f"Order {details['order_id']} was delivered on {details['delivered_on']}. "
            f'The policy says: "{(policy_text.output or "").strip()}" '
            f"Today is {today.output}, so: {verdict.output}.",
        )
    for problem in problems:
        print(f"demo: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _sleepers() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [])[:2] == ["sleep", "3600"]
    ]
