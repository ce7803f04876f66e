"""Red team: a hostile model server names its tool calls. On Temporal, a call waiting
for approval is announced with the command a person copies into a shell; the call's
id is the model's. Pasted, that command must be the approval of exactly that call and
nothing more: no `;`, `$(...)`, backtick or `|` of an id runs anything."""

from __future__ import annotations

import shlex

import pytest

pytest.importorskip("temporalio")

from agent.integrations.temporal_command import announce
from agent.integrations.temporal_plan import PendingCall

HOSTILE_IDS = [
    "call_1; touch /tmp/pwned #",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a | sh",
    'it\'s "quoted"',
    "new\nline",
]


@pytest.mark.parametrize("call_id", HOSTILE_IDS)
def test_the_announced_approve_command_names_the_call_and_runs_nothing_else(
    call_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    call = PendingCall(
        call_id=call_id,
        tool="issue_refund",
        arguments='{"amount":1.0,"order_id":"12345"}',
        sha256="ab" * 32,
        prompt="The model wants to run issue_refund\nAllow?",
    )
    announce("run-1", call, "127.0.0.1:7233")
    lines = capsys.readouterr().err.splitlines()
    command = next(line for line in lines if "sandboxed-agent approve" in line)
    words = shlex.split(command)
    assert words[:4] == ["sandboxed-agent", "approve", "run-1", words[3]]
    assert words[4:] == ["--temporal", "127.0.0.1:7233"]  # the whole line pastes as is
    if "\n" not in call_id:  # a control character is shown escaped: no call has that id
        assert words[3] == call_id
