"""The real-model benchmark still runs and reports what it saw, here against a scripted
loopback model (the real one is never part of the suite: see bench/real_model.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.replay import ScriptedModelServer, Step, say
from bench.real_model import main


def sloppy_model(request: dict[str, Any]) -> Step:
    """Looks the order up once, as fenced text with a trailing comma, then answers."""
    if not any(m["role"] == "tool" for m in request["messages"]):
        lookup = '{"name": "get_order_status", "arguments": {"order_id": "12345",}}'
        return say(f"```json\n{lookup}\n```")
    return say("No: the 30-day window closed on 2025-05-10.")


def test_the_benchmark_writes_its_report(tmp_path: Path) -> None:
    with ScriptedModelServer(sloppy_model) as server:
        flags = ["--model", "scripted", "--runs", "2", "--suite-runs", "0"]
        status = main(["--base-url", server.base_url, *flags, "--out", str(tmp_path)])
    assert status == 0
    data = json.loads((tmp_path / "real_model.json").read_text())
    assert (data["model"], data["server"]) == ("scripted", "serves scripted (owned by ?)")
    worked = data["results"]["worked_example"]
    # Right answer, but one lookup of three: the path check fails, and the report says so.
    assert (worked["runs"], worked["outcome"], worked["path"], worked["ok"]) == (2, 2, 0, 0)
    assert worked["guardrails"]["turns with calls read from text"] == 2
    assert worked["guardrails"]["text calls repaired (trailing_commas)"] == 2
    report = (tmp_path / "real_model.md").read_text()
    assert "**The worked example**: 0/2 right on outcome and path" in report
    assert "| order 12345 is past its return window | 2 | 2/2 | 0/2 |" in report
