"""One scenario every framework adapter is tried with, through the real framework and
the scripted OpenAI-compatible server on 127.0.0.1.

In one turn the model asks for three calls: a normal one (its result must reach the
model), a hung one that leaves a setsid grandchild (killed at its 1 s deadline, nothing
left, the model told `timeout` and the run going on), and one that reads /etc/shadow
(refused; none of the file reaches the model). Then it answers. The audit trail must
hold the three calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOSTILE, shared, sleepers

from agent.audit import read_trace
from agent.replay import Step, call, say
from policies import Policy, parse_policy
from sandbox import Pool
from tools import Registry

INTEGRATION_TOOLS = str(Path(__file__).with_name("integration_tools.py"))
ANSWER = "All three calls came back."

POLICY = """
[tools.double_fork]
timeout_s = 1

[tools.read_secret]
timeout_s = 10
"""


def registry() -> Registry:
    registry = Registry.default()
    registry.load(HOSTILE)
    registry.load(INTEGRATION_TOOLS)
    return registry


def policy(tmp_path: Path) -> Policy:
    """Over the built-in policy, so `issue_refund` asks for approval."""
    return parse_policy(POLICY, "adapters.toml", tmp_path)


def module_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """The body of each adapter test module's pool fixture: one pool for its tests."""
    with Pool(policy(tmp_path_factory.mktemp("policy")), registry=registry(), size=3) as pool:
        yield shared(pool)


def script(marker: str):
    def step(request: dict[str, Any]) -> Step:
        if not tool_messages(request):
            return call(
                ("calculate", {"expression": "6*7"}),
                ("double_fork", {"marker": marker, "hang": True}),
                ("read_secret", {}),
            )
        return say(ANSWER)

    return step


def tool_messages(request: dict[str, Any]) -> list[str]:
    """What the model was shown of each tool call, in order."""
    return [str(m.get("content")) for m in request.get("messages", []) if m.get("role") == "tool"]


def check(requests: list[dict[str, Any]], marker: str, trace: Path | None) -> None:
    assert len(requests) == 2, f"the model was asked {len(requests)} times"
    shown = tool_messages(requests[-1])
    assert len(shown) == 3, shown
    by_content = " | ".join(shown)
    assert any(text.strip() == "42" for text in shown), by_content
    assert any("timeout" in text and "1 s" in text for text in shown), by_content
    secret = [text for text in shown if "shadow" in text]
    assert secret and all("error" in text for text in secret), by_content
    if os.access("/etc/shadow", os.R_OK):  # root: the test may read it, the tool must not
        with open("/etc/shadow", "rb") as f:
            first = f.readline().decode(errors="replace").strip()
        assert first not in json.dumps(requests)
    assert sleepers(marker) == []
    if trace is not None:
        calls = {e["tool"]: e for e in read_trace(trace) if e["event"] == "tool_call"}
        assert set(calls) == {"calculate", "double_fork", "read_secret"}, calls
        assert calls["calculate"]["ok"] and calls["calculate"]["output"] == "42"
        assert calls["double_fork"]["error_kind"] == "timeout"
        assert calls["read_secret"]["error_kind"] == "tool_error"
        assert all(e["call_id"] for e in calls.values())
