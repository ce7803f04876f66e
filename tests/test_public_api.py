"""The names each package exports are a contract: adding one is a decision."""

from __future__ import annotations

import pytest

import agent
import policies
import sandbox
import tools
from sandbox import Limits, Pool
from sandbox.errors import CpuLimit, ToolCallError, ToolTimeout, UnknownTool


def test_exported_names() -> None:
    assert sorted(sandbox.__all__) == [
        "CallCancelled",
        "CancelToken",
        "ErrorKind",
        "IsolationWarning",
        "Limits",
        "LimitsPolicy",
        "Pool",
        "SandboxUnavailable",
        "SandboxedAgentError",
        "ToolCallError",
        "ToolError",
        "ToolResult",
    ]
    assert sorted(tools.__all__) == [
        "ArgumentError",
        "Registry",
        "ToolContext",
        "ToolDefinitionError",
        "ToolSpec",
        "tool",
    ]
    assert sorted(policies.__all__) == [
        "DEFAULT_POLICY",
        "Policy",
        "Price",
        "RunPolicy",
        "ToolPolicy",
        "check_registry",
        "check_tools",
        "load_policy",
        "parse_policy",
    ]
    assert sorted(agent.__all__) == [
        "Agent",
        "Approver",
        "Embedder",
        "ModelClient",
        "RunResult",
        "RunStore",
        "Trace",
    ]
    for module in (sandbox, tools, policies, agent):
        for name in module.__all__:
            assert hasattr(module, name), name


def test_a_failed_result_raises_its_typed_error() -> None:
    with Pool(size=1) as pool:
        unknown = pool.call("nope")
        slow = pool.call("calculate", {"expression": "1 + 1"}, limits=Limits(timeout_s=30))
    with pytest.raises(UnknownTool, match="available tools: calculate"):
        unknown.raise_for_error()
    slow.raise_for_error()  # ok: nothing raised
    assert issubclass(ToolTimeout, ToolCallError) and not issubclass(CpuLimit, ToolTimeout)


def test_an_unknown_tool_names_the_one_meant() -> None:
    said = UnknownTool("calculat", ["calculate", "read_file"]).message
    assert said.startswith("unknown tool 'calculat' (did you mean 'calculate'?); available")
    assert "did you mean" not in UnknownTool("weather", ["calculate"]).message


def test_commands_that_call_no_model_do_not_import_the_openai_sdk() -> None:
    """`openai` takes about a second to import; only a model call needs it."""
    import subprocess
    import sys

    probe = "import sys, agent.cli; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
