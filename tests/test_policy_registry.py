"""A policy and the tools put together in Python must match, as on the command line:
a `[tools.NAME]` that names no tool of the pool (a typo, or a `load_tools` file the
registry never loaded) would silently not apply, its `requires_approval` with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.integrations._bridge import Bridge
from policies import check_registry, parse_policy
from sandbox import Pool
from sandbox.errors import PolicyError
from tools import Registry

TOOL = '''
from tools import tool


@tool
def fetch_report(name: str) -> str:
    """A report by name.

    Args:
        name: Report name.
    """
    return name
'''


def _policy(tmp_path: Path, table: str) -> tuple[str, str]:
    (tmp_path / "mytools.py").write_text(TOOL)
    text = f'load_tools = ["mytools.py"]\n[tools.{table}]\nrequires_approval = true\n'
    return text, str(tmp_path / "mytools.py")


def test_a_table_for_no_tool_of_the_registry_is_refused(tmp_path: Path) -> None:
    text, source = _policy(tmp_path, "fetch_reprot")
    policy = parse_policy(text, "mine.toml", tmp_path)
    registry = Registry.default()
    registry.load(source)
    with pytest.raises(PolicyError, match=r"mine\.toml: \[tools\.fetch_reprot\]: .*'fetch_report'"):
        check_registry(policy, registry)


def test_load_tools_the_registry_lacks_are_refused_and_loading_them_passes(
    tmp_path: Path,
) -> None:
    text, _ = _policy(tmp_path, "fetch_report")
    policy = parse_policy(text, "mine.toml", tmp_path)
    registry = Registry.default()
    with pytest.raises(PolicyError, match=r"mine\.toml: load_tools: .*mytools\.py.*registry\.load"):
        check_registry(policy, registry)
    for s in policy.load_tools:
        registry.load(s)
    check_registry(policy, registry)
    assert policy.requires_approval("fetch_report")


def test_an_adapter_refuses_a_pool_whose_policy_names_tools_it_lacks(tmp_path: Path) -> None:
    # The README's `Pool(load_policy("policy.toml"))`, with a policy of one's own tools:
    # the pool has only the built-ins, so the adapter would offer the tool unguarded
    # or not at all, and say nothing.
    text, _ = _policy(tmp_path, "fetch_report")
    policy = parse_policy(text, "mine.toml", tmp_path)
    with Pool(policy, size=1, spares=1) as pool, pytest.raises(PolicyError, match="load_tools"):
        Bridge(pool)
