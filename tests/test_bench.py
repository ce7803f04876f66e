"""The benchmark still runs (its timings are never asserted; bench/ reports them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_benchmark_runs_and_checks_what_it_measures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert set(report) >= {"overhead", "fresh", "kills", "throughput", "memory", "calculator"}
    ours = report["kills"]["sandboxed-agent"]
    assert ours["plain"]["survivors"] == 0
    assert ours["grandchild"]["survivors"] == 0
    assert "| sandboxed-agent |" in (tmp_path / "latest.md").read_text()
