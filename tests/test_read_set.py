"""What a worker may read comes from what the tools import, never from where you start
or what the import path holds; and the shipped tools work however they were installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)


def test_import_path_entries_do_not_widen_the_read_set(tmp_path: Path) -> None:
    """An entry above a module (the directory you started in, say) must not open that
    module's neighbours: only the module itself, or its package, is read."""
    start = tmp_path / "x"
    (start / "sub").mkdir(parents=True)
    (start / "sub" / "secret.txt").write_text("next to a module")
    (start / "sub" / "helper_module.py").write_text("VALUE = 1\n")
    (start / "pkg" / "data").mkdir(parents=True)
    (start / "pkg" / "__init__.py").write_text("")
    script = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(start)!r}, {str(start / 'sub')!r}]\n"
        "import helper_module, pkg\n"
        "from sandbox.read_set import base_read_paths\n"
        "print(json.dumps(base_read_paths([])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=start,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr
    paths = json.loads(proc.stdout)
    assert str(start / "sub" / "helper_module.py") in paths
    assert str(start / "pkg") in paths  # a package: with its data
    assert str(start) not in paths
    assert str(start / "sub") not in paths
    assert not any(p.startswith(str(start)) and "secret" in p for p in paths)


def _console_script() -> str:
    script = Path(sys.executable).with_name("sandboxed-agent")
    if not script.exists():
        pytest.skip("sandboxed-agent is not installed in this interpreter's environment")
    return str(script)


def test_the_shipped_tools_work_from_any_directory(tmp_path: Path) -> None:
    """The console script of the README's `pip install -e .`, from a directory that is
    not the project's: the tools' package data (the orders database, the documents)
    must be readable in the worker."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for tool, args in (
        ("get_order_status", {"order_id": "12345"}),
        ("check_return_eligibility", {"order_id": "12345"}),
        ("read_file", {"path": "policy.txt"}),
    ):
        proc = subprocess.run(
            [_console_script(), "tool", tool, "--args", json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=elsewhere,
            env=env,
        )
        answer = json.loads(proc.stdout)
        assert proc.returncode == 0 and answer["ok"], (tool, answer, proc.stderr)


def test_python_dash_m_from_a_clone_elsewhere_reads_nothing_beside_it(tmp_path: Path) -> None:
    """`python -m agent` puts the directory it starts in on the import path; files there
    must stay out of the tools' reach."""
    start = tmp_path / "x"
    (start / "notes").mkdir(parents=True)
    (start / "notes" / "secret.txt").write_text("mine")
    shutil.copy(Path(__file__).with_name("host_attack_tools.py"), start / "attack.py")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "tool",
            "attack_stat",
            "--tools",
            str(start / "attack.py"),
            "--args",
            json.dumps({"path": str(start / "notes" / "secret.txt")}),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=start,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    )
    answer = json.loads(proc.stdout)
    assert answer["ok"], (answer, proc.stderr)
    assert answer["output"].startswith("denied"), answer
