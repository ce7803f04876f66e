"""Tools for the Temporal tests: one that hangs leaving a grandchild, one that says it
started (a file in its data_dir) and waits to be killed, and runs again to the end,
and one whose arguments' validator raises."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pydantic import BaseModel, field_validator

from tools import tool
from tools.context import data_dir, embedding


def _hang_with_grandchild(marker: str) -> str:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execvp("sleep", ["sleep", marker])
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(3600)
    return "woke up"


@tool
def hang(marker: str) -> str:
    """Leave a daemon grandchild (`sleep MARKER`), then hang past any deadline.

    Args:
        marker: A unique sleep length, so the test can find the grandchild.
    """
    return _hang_with_grandchild(marker)


@tool
def hang_long(marker: str) -> str:
    """`hang`, under a longer deadline (its policy's).

    Args:
        marker: A unique sleep length, so the test can find the grandchild.
    """
    return _hang_with_grandchild(marker)


def _step() -> str:
    here = Path(data_dir())
    with open(here / "runs", "a") as runs:
        runs.write("run\n")
    if (here / "started").exists():
        return f"finished on run {len((here / 'runs').read_text().splitlines())}"
    (here / "started").write_text("")  # the test kills the worker once this appears
    time.sleep(3600)
    return "woke up"


@tool
def step_again() -> str:
    """Count a run in data_dir/runs; the first run then hangs, a later one finishes."""
    return _step()


@tool
def step_once() -> str:
    """`step_again`, for a tool the policy does not call idempotent."""
    return _step()


@tool
def finish_soon(seconds: float) -> str:
    """Say it started (data_dir/started), then finish after `seconds`.

    Args:
        seconds: How long it takes once started.
    """
    (Path(data_dir()) / "started").write_text("")
    time.sleep(seconds)
    return "finished"


class Crashing(BaseModel):
    text: str

    @field_validator("text")
    @classmethod
    def crash(cls, value: str) -> str:
        raise RuntimeError("the validator of crash_binding crashed")


@tool
def crash_binding(word: Crashing) -> str:
    """A tool whose argument model's validator raises, as a buggy tool module's may: not
    a ValueError, so pydantic lets it out of the validation (in the workflow's code).

    Args:
        word: Anything.
    """
    return word.text


class Slow(BaseModel):
    text: str

    @field_validator("text")
    @classmethod
    def slow(cls, value: str) -> str:
        time.sleep(float(os.environ.get("SLOW_BINDING_S", "3")))  # blocks the workflow task
        return value


@tool
def slow_binding(word: Slow) -> str:
    """A tool whose argument model's validator blocks for seconds (in the workflow's
    code, which Temporal takes for a deadlock past 2 s).

    Args:
        word: Anything.
    """
    return word.text


@tool(embed="text")
def embedded(text: str) -> str:
    """Say how many values the agent's embedding of `text` has.

    Args:
        text: Anything to embed.
    """
    vector = embedding()
    return f"{len(vector)} values" if vector else "no embedding"
