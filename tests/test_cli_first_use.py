"""What a new user meets first: a run id that is not there is a usage error that says
how to see the known ones; a bad flag's error shows the value given; an approval
prompt names who asked (a script is not "the model")."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import AgentMain

from agent.approval import Approver
from agent.binding import bind
from agent.checkpoints import Outcome, RunStore, default_path
from agent.integrations._mcp_ask import _message
from agent.runner import check_resumed_tools
from policies import load_policy
from tools import Registry

ROOT = Path(__file__).resolve().parent.parent
NOWHERE = ["--base-url", "http://127.0.0.1:9/v1"]


def test_an_unknown_run_id_is_a_usage_error_naming_the_known_ones(agent_main: AgentMain) -> None:
    done = agent_main("run", "--resume", "2026-nope", *NOWHERE)
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert line.startswith("sandboxed-agent: no run '2026-nope' in ")
    assert "holds no run yet (all: sandboxed-agent runs)" in line
    store = RunStore(default_path())
    known = store.start("task", "m", [{"role": "user", "content": "task"}])
    done = agent_main("run", "--resume", "nope\x1b[2J", *NOWHERE)
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert f"the latest: {known} (all: sandboxed-agent runs)" in line
    assert "\x1b" not in line  # the id typed is shown escaped


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["run", "x", "--max-iterations", "0"], "greater than or equal to 1 (got 0)"),
        (
            ["run", "x", "--max-cost-usd", "-1"],
            "--max-cost-usd: input should be greater than 0 (got -1.0)",
        ),
        (["run", "x", "--max-cost-usd", "nan"], "--max-cost-usd: must be a number (got nan)"),
        (
            ["run", "x", "--max-wall-s", "0"],
            "--max-wall-s: input should be greater than 0 (got 0.0)",
        ),
        (
            ["tool", "calculate", "--timeout", "-1"],
            "--timeout: input should be greater than 0 (got -1.0)",
        ),
        (["tool", "calculate", "--memory-mb", "1"], "equal to 16 (got 1)"),
    ],
)
def test_a_bad_flag_value_is_shown_in_its_error(
    agent_main: AgentMain, flags: list[str], said: str
) -> None:
    done = agent_main(*flags, *(NOWHERE if flags[0] == "run" else ["--args", "{}"]))
    assert done.returncode == 2, done
    assert said in done.stderr, done.stderr


def test_the_prompt_names_who_asked() -> None:
    spec = Registry.default().get("calculate")
    bound = bind(spec, '{"expression": "2*3"}')
    asked: list[str] = []
    Approver(interactive=True, ask=lambda p: asked.append(p) or "n").decide(bound)
    Approver(interactive=True, ask=lambda p: asked.append(p) or "n", who="A script").decide(bound)
    assert "The model wants to run calculate" in asked[0]
    assert "A script wants to run calculate" in asked[1] and "model" not in asked[1]
    assert _message(bound).startswith("sandboxed-agent: The MCP client wants to run calculate")


def test_a_ctrl_c_while_the_program_loads_is_one_line_and_130() -> None:
    """Importing the command line takes seconds on a loaded machine: a Ctrl-C in that
    time, right after pressing Enter, was a traceback of whichever import it hit. Here
    the SIGINT comes as `agent.cli` imports its own modules, into the console script's
    entry point as pyproject.toml names it."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = entry["sandboxed-agent"].split(":")
    code = f"""
import os, signal, sys
class CtrlC:
    def find_spec(self, name, path, target=None):
        if name == "agent.runner":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
from {module} import {func}
sys.exit({func}())
"""
    done = subprocess.run(
        [sys.executable, "-c", code, "demo"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert (done.returncode, done.stderr) == (130, "sandboxed-agent: interrupted\n"), done


def test_a_run_resumed_without_the_tools_it_called_is_a_usage_error(
    agent_main: AgentMain,
) -> None:
    """Started with `--tools` (or a policy's load_tools) and resumed without them, the
    call in flight was answered "unknown tool" and the model told that a tool it had
    used was never there. A name the model made up (unknown then too) needs nothing."""
    store = RunStore(default_path())
    run_id = store.start("Hang please", "m", [{"role": "user", "content": "Hang please"}])
    asked = {"id": "call_1", "type": "function"}
    asked["function"] = {"name": "sleep_forever", "arguments": "{}"}
    turn = {"role": "assistant", "content": None, "tool_calls": [asked]}
    store.step(
        run_id, [turn], 1, 0.0, [("call_1", "sleep_forever", "{}"), ("call_2", "mde_up", "{}")]
    )
    made_up = Outcome(sent="unknown tool", ok=False, error_kind="unknown_tool")
    store.call_done(run_id, "call_2", made_up)
    done = agent_main("run", "--resume", run_id, *NOWHERE)
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert line.startswith(
        f"sandboxed-agent: run {run_id} called sleep_forever, which this command does not "
        "load: resume it with the --policy and --tools it was started with (loaded now: "
    ), line
    policy, known = load_policy(), [*Registry.default().names(), "sleep_forever"]
    check_resumed_tools(store.load(run_id), policy, known)  # mde_up: unknown then too


def test_an_answer_that_is_not_one_is_asked_again_saying_what_is_accepted() -> None:
    """`yse` was answered by the same question again, without a word of why."""
    bound = bind(Registry.default().get("calculate"), '{"expression": "2*3"}')
    asked: list[str] = []
    answers = iter(["yse", "\x1b[2Jok", "y"])
    decision = Approver(interactive=True, ask=lambda p: asked.append(p) or next(answers))
    assert decision.decide(bound).how == "approved_tty"
    assert "is not an answer" not in asked[0]
    said = "is not an answer: type y (yes), n (no) or a (always); Enter alone is no\n"
    assert asked[1].startswith(f"\n'yse' {said}") and asked[1].endswith(asked[0])
    assert asked[2].startswith("\n'\\x1b[2jok' ")  # escaped (and lowered, as read)


def test_a_file_the_sandbox_hides_is_said_to_be_hidden(
    agent_main: AgentMain, tmp_path: Path
) -> None:
    """A tool reading a file beside its module got a bare FileNotFoundError naming a
    file its author could see was there."""
    (tmp_path / "data.csv").write_text("a,b\n")
    tools = tmp_path / "csv_tools.py"
    tools.write_text(
        "from pathlib import Path\nfrom tools import tool\n\n\n@tool\ndef read_data() -> str:\n"
        '    """Reads data.csv beside this file."""\n'
        '    return (Path(__file__).parent / "data.csv").read_text()\n'
    )
    done = agent_main("tool", "read_data", "--tools", str(tools))
    assert done.returncode == 1, done
    said = json.loads(done.stdout)["error"]["message"]
    assert said == (
        f"FileNotFoundError: [Errno 2] No such file or directory: '{tmp_path}/data.csv' (in "
        "the sandbox a tool sees only the system's files, its policy's root and data_dir, "
        "and its own working directory)"
    )


def test_version_says_the_version() -> None:
    # It was "the following arguments are required: command", of a flag given.
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.startswith("sandboxed-agent ") and done.stdout.count("\n") == 1
