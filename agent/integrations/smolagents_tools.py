"""smolagents: our tools as its `Tool`s, and a `CodeAgent` executor backed by `run_python`.

    from agent.integrations.smolagents_tools import SandboxExecutor, sandboxed_tools

    agent = ToolCallingAgent(tools=sandboxed_tools(pool), model=model)
    agent = CodeAgent(tools=[], model=model, executor=SandboxExecutor(pool))

Each tool's `forward` is one `pool.call`: the worker is killed at the policy's deadline
with everything it started, and a failure raises `SandboxToolError`, which smolagents
hands to the model as the step's error (`error (timeout): ...`), so it can try again.

`SandboxExecutor` runs each code step in a fresh `run_python` worker. What a step
defines is there in the next: its variables travel as dill text that only the next
worker unpickles (`tools.python_state`); a value that cannot be pickled is dropped, and
the logs of the step that made it say so. `final_answer(x)` ends the run with `x` (as JSON data, or
its repr). Tools other than `final_answer` cannot be called from the code: they would
run inside `run_python`'s worker under its policy, not their own; give them to a
`ToolCallingAgent` instead. Variables passed to `agent.run(additional_args=...)` must be
JSON data.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from smolagents import Tool
from smolagents.local_python_executor import CodeOutput, PythonExecutor

from sandbox import Pool, ToolResult
from tools.python_state import KEEP, MAX_STATE_CHARS, STATE, VARIABLES

from ..audit import Trace
from ._bridge import Bridge, BridgedTool
from ._sync import run_sync, strict_arguments

_TYPES = {"string", "boolean", "integer", "number", "array", "object"}


class SandboxToolError(Exception):
    """A sandboxed call failed; `str()` is what the model reads: `error (KIND): ...`."""

    def __init__(self, result: ToolResult) -> None:
        super().__init__(result.text)
        self.result = result


def sandboxed_tools(
    pool: Pool,
    *,
    tools: Iterable[str] | None = None,
    trace: Trace | None = None,
    approve: Collection[str] = (),
) -> list[Tool]:
    """A smolagents `Tool` for each of the pool's tools (or those named). smolagents has
    no approval step: a tool whose policy requires approval runs only if `approve`
    names it, and is `denied` otherwise."""
    bridge = Bridge(pool, tools=tools, trace=trace)
    return [_SandboxTool(bridge, tool, tool.name in approve) for tool in bridge.tools()]


class _SandboxTool(Tool):
    skip_forward_signature_validation = True
    output_type = "string"

    def __init__(self, bridge: Bridge, tool: BridgedTool, approved: bool) -> None:
        self.name = tool.name.replace("-", "_")  # smolagents wants an identifier
        self.description = tool.description
        self.inputs = _inputs(tool.parameters)
        self._bridge, self._tool, self._approved = bridge, tool, approved
        super().__init__()

    def forward(self, **kwargs: Any) -> str:
        args = strict_arguments(self._tool.parameters, kwargs)
        result = run_sync(self._bridge.call(self._tool.name, args, approved=self._approved))
        if not result.ok:
            raise SandboxToolError(result)  # the agent shows it to the model as the error
        return result.output or ""


def _inputs(parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    inputs = {}
    for name, schema in parameters["properties"].items():
        kinds = schema.get("type")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
        concrete = [k for k in kinds if k != "null"]
        inputs[name] = {
            "type": concrete[0] if len(concrete) == 1 and concrete[0] in _TYPES else "any",
            "description": schema.get("description") or name,
        }
        if "null" in kinds or not concrete:
            inputs[name]["nullable"] = True
    return inputs


class SandboxExecutor(PythonExecutor):
    """A `CodeAgent`'s Python, each step in a fresh `run_python` worker of `pool`."""

    def __init__(self, pool: Pool, *, tool: str = "run_python", trace: Trace | None = None):
        if tool not in pool.registry:
            raise ValueError(
                f"the pool has no {tool!r} tool: load it first (registry.load('tools.python'))"
            )
        self._pool, self._tool = pool, tool
        self._bridge = Bridge(pool, tools=[tool], trace=trace)
        self._state = ""
        self._variables: dict[str, Any] = {}
        self.state: dict[str, Any] = {}  # what CodeAgent reads for `_print_outputs`

    def send_tools(self, tools: dict[str, Tool]) -> None:
        others = sorted(name for name in tools if name != "final_answer")
        if others:
            raise ValueError(
                "tools cannot be called from sandboxed code (they would run in "
                f"run_python's worker, under its policy): {', '.join(others)}; give them "
                "to a ToolCallingAgent with sandboxed_tools(pool) instead"
            )

    def send_variables(self, variables: dict[str, Any]) -> None:
        try:
            json.dumps(variables, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"variables for sandboxed code must be JSON data (str, numbers, lists, "
                f"dicts): {exc}"
            ) from None
        self._variables.update(variables)

    def __call__(self, code_action: str) -> CodeOutput:
        limits = self._pool.policy.limits_for(self._tool)
        room = max(limits.max_output_chars, MAX_STATE_CHARS + 200_000)
        settings: dict[str, Any] = {KEEP: True, STATE: self._state}
        if self._variables:
            settings[VARIABLES] = self._variables
        call = self._bridge.call(
            self._tool,
            {"code": code_action},
            limits=limits.model_copy(update={"max_output_chars": room}),
            settings=settings,
        )
        result = run_sync(call)
        if not result.ok:
            self.state["_print_outputs"] = ""  # the step's output and variables died with it
            raise SandboxToolError(result)
        out = _answer(result.output)
        self._state, self._variables = str(out.get("state") or ""), {}
        logs = str(out.get("stdout") or "")
        notes = (
            [str(n) for n in out.get("notes") or []] if isinstance(out.get("notes"), list) else []
        )
        if notes:
            logs += "\n[sandbox] " + "\n[sandbox] ".join(notes)
        self.state["_print_outputs"] = logs
        if out.get("error"):
            raise SandboxCodeError(str(out["error"]), str(out.get("stderr") or ""), logs)
        if out.get("final"):
            return CodeOutput(output=out.get("final_value"), logs=logs, is_final_answer=True)
        return CodeOutput(output=out.get("value"), logs=logs, is_final_answer=False)

    def cleanup(self) -> None:
        self._state, self._variables = "", {}


def _answer(output: str | None) -> dict[str, Any]:
    """run_python's JSON, which the code can forge: anything else is the step's error."""
    try:
        out = json.loads(output or "")
    except (ValueError, RecursionError):
        out = None
    if not isinstance(out, dict):
        raise SandboxCodeError("the sandbox's answer is not run_python's JSON", "", "")
    return out


class SandboxCodeError(Exception):
    """The step's code raised: its one-line error, then the end of its traceback."""

    def __init__(self, error: str, stderr: str, logs: str) -> None:
        super().__init__(f"{error}\n{stderr}".rstrip())
        self.logs = logs
