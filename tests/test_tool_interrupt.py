"""`tool` stopped by Ctrl-C prints its one JSON object with the kind `interrupted` and
exits 130: not `crashed`, which says the worker died."""

from __future__ import annotations

import json

import pytest

import agent.cli as cli


def test_ctrl_c_in_tool_is_interrupted_not_crashed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stopped(args: object) -> int:
        raise KeyboardInterrupt  # as at the approval prompt, or while the call runs

    monkeypatch.setattr(cli, "cmd_tool", stopped)
    assert cli.main(["tool", "calculate", "--args", '{"expression": "1+1"}']) == 130
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["ok"] is False and printed["tool"] == "calculate"
    assert printed["error"] == {"kind": "interrupted", "message": "interrupted"}
    assert err.strip() == "sandboxed-agent: interrupted"
