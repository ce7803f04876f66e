"""A tool's `root` and `data_dir`: resolved once at load, never reached through a link.

The red team's two holes (tests/redteam_findings.py on its branch): a tool that writes
one directory replaced another tool's `data_dir` or `root` inside it with a link, and
the other tool's worker, as root before its lock-down, re-owned, bound and allowed
whatever the link pointed to. Such layouts are now refused when the policy is loaded;
and a link planted after load (by anything) makes the call fail closed.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import pytest

from policies import ToolPolicy, load_policy, parse_policy
from policies.paths import user_data_dir
from sandbox import IsolationWarning, Limits, Pool
from sandbox._nofollow import PathChanged
from sandbox.errors import PolicyError
from sandbox.worker import own_data_dir
from tools import Registry
from tools.context import ToolContext

pytestmark = pytest.mark.attack
TOOLS = str(Path(__file__).with_name("path_attack_tools.py"))
POLICIES = Path(__file__).resolve().parent.parent / "policies"


LAYERS = [(), ("landlock",), ("bind_mounts",)]
"""Every file layer on, then each of the two alone (the other turned off)."""


def make_pool(policy: object, off: tuple[str, ...] = ()) -> Pool:
    registry = Registry.default()
    registry.load(TOOLS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)
        return Pool(policy, registry=registry, size=1, disable=off)  # type: ignore[arg-type]


def refusal(text: str, base: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml", base)
    return str(caught.value)


class Unchecked:
    """Directories handed to tools with no load-time check (a `LimitsPolicy` made by
    hand): what the worker itself refuses."""

    def __init__(self, contexts: dict[str, ToolContext]) -> None:
        self.contexts = contexts

    def limits_for(self, tool: str) -> Limits:
        return Limits()

    def context_for(self, tool: str) -> ToolContext:
        return self.contexts.get(tool, ToolContext())


def untouched(victim: Path) -> None:
    info = victim.stat()
    assert os.listdir(victim) == [], os.listdir(victim)
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_gid == os.getegid(), info.st_gid


def failed_closed(result: object, kind: str = "crashed") -> str:
    """The call did not run: its worker refused (`crashed`), or the pool refused to
    measure a data_dir reached through a link (`data_limit`), before any worker."""
    assert not result.ok, result  # type: ignore[attr-defined]
    error = result.error  # type: ignore[attr-defined]
    assert error.kind == kind, error
    assert ("failed closed" if kind == "crashed" else "refusing to follow") in error.message
    return str(error.message)


# Refused at load: layouts where one tool can plant a link for another.


def test_nested_data_dirs_are_refused_naming_both_tools(tmp_path: Path) -> None:
    message = refusal(
        '[tools.pa_plant_link]\ndata_dir = "outer"\n'
        '[tools.pa_write_data]\ndata_dir = "outer/inner"\n',
        tmp_path,
    )
    assert "[tools.pa_write_data] data_dir" in message, message
    assert "[tools.pa_plant_link]" in message, message
    assert str(tmp_path / "outer" / "inner") in message, message
    assert repr(str(tmp_path / "outer")) in message, message


def test_a_data_dir_inside_one_set_in_defaults_is_refused(tmp_path: Path) -> None:
    message = refusal(
        '[defaults]\ndata_dir = "shared"\n[tools.pa_write_data]\ndata_dir = "shared/mine"\n',
        tmp_path,
    )
    assert "[defaults]" in message and "[tools.pa_write_data]" in message, message


@pytest.mark.parametrize("root", ["shared/docs", "shared"])
def test_a_root_inside_or_equal_to_a_data_dir_is_refused(tmp_path: Path, root: str) -> None:
    (tmp_path / "shared" / "docs").mkdir(parents=True)
    message = refusal(
        f'[tools.pa_plant_link]\ndata_dir = "shared"\n[tools.read_file]\nroot = "{root}"\n',
        tmp_path,
    )
    assert "[tools.read_file] root" in message and "[tools.pa_plant_link]" in message, message


def test_a_root_inside_its_own_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state" / "docs").mkdir(parents=True)
    message = refusal('[tools.read_file]\ndata_dir = "state"\nroot = "state/docs"\n', tmp_path)
    assert "[tools.read_file] root" in message, message


def test_a_link_in_the_file_does_not_hide_the_nesting(tmp_path: Path) -> None:
    """`alias -> outer`: outer/inner written as alias/inner is the same directory."""
    (tmp_path / "outer").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "outer")
    message = refusal(
        '[tools.pa_plant_link]\ndata_dir = "outer"\n'
        '[tools.pa_write_data]\ndata_dir = "alias/inner"\n',
        tmp_path,
    )
    assert str(tmp_path / "outer" / "inner") in message, message


@pytest.mark.parametrize(
    "data_dir", ["{data}", "{data}/..", "{data}/runs.db", "{data}/sessions.db-wal"]
)
def test_a_data_dir_on_the_run_store_is_refused(tmp_path: Path, data_dir: str) -> None:
    message = refusal(f'[tools.pa_write_data]\ndata_dir = "{data_dir}"\n', tmp_path)
    assert "[tools.pa_write_data] data_dir" in message, message
    assert "run store" in message, message


def test_a_root_holding_the_run_store_is_refused(tmp_path: Path) -> None:
    user_data_dir().mkdir(parents=True)
    message = refusal('[tools.read_file]\nroot = "{data}"\n', tmp_path)
    assert "[tools.read_file] root" in message and "run store" in message, message


@pytest.mark.parametrize("data_dir", ["/", "~", "/etc", "/usr", "/tmp", "/proc/sys", "/dev/shm"])
def test_a_data_dir_on_a_host_directory_is_refused(tmp_path: Path, data_dir: str) -> None:
    message = refusal(f'[tools.pa_write_data]\ndata_dir = "{data_dir}"\n', tmp_path)
    assert "[tools.pa_write_data] data_dir" in message, message


def test_what_is_accepted_still_loads(tmp_path: Path) -> None:
    """Equal data_dirs (tools sharing state), a data_dir of its own inside {data} or a
    system directory, and a data_dir inside a root."""
    (tmp_path / "docs").mkdir()
    policy = parse_policy(
        '[tools.pa_plant_link]\ndata_dir = "{data}/mine"\n'
        '[tools.pa_write_data]\ndata_dir = "{data}/mine"\n'
        '[tools.read_file]\nroot = "."\ndata_dir = "docs/state"\n',
        "p.toml",
        tmp_path,
    )
    assert policy.context_for("pa_write_data").data_dir == str(user_data_dir() / "mine")
    assert policy.context_for("read_file").root == str(tmp_path)


@pytest.mark.parametrize("name", ["default.toml", "demo.toml"])
def test_the_shipped_policies_load(name: str) -> None:
    policy = load_policy(POLICIES / name)
    memory = str(user_data_dir() / "memory")
    assert {policy.context_for(t).data_dir for t in ("remember", "recall", "forget")} == {memory}


def test_paths_are_resolved_once_at_load(tmp_path: Path) -> None:
    """What the file said is fixed when it is loaded: a link made afterwards does not
    move the path a call is given."""
    (tmp_path / "docs").mkdir()
    policy = parse_policy('[tools.read_file]\nroot = "docs"\n', "p.toml", tmp_path)
    (tmp_path / "docs").rename(tmp_path / "old")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "docs").symlink_to(tmp_path / "elsewhere")
    assert policy.context_for("read_file").root == str(tmp_path / "docs")


# Planted after load: the call fails closed, nothing is followed.


@pytest.mark.parametrize("off", LAYERS)
def test_nested_data_dir_symlink_is_not_followed(tmp_path: Path, off: tuple[str, ...]) -> None:
    """The red team's first hole, handed to the worker without the load-time check:
    outer/inner planted as a link to a 0700 directory of the host. The inner tool's
    call fails closed; the host directory is not re-owned, re-moded, bound or written,
    nor even measured for its quota (which would tell its size)."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    outer = tmp_path / "outer"
    outer.mkdir()
    policy = Unchecked(
        {
            "pa_plant_link": ToolContext(data_dir=str(outer)),
            "pa_write_data": ToolContext(data_dir=str(outer / "inner")),
        }
    )
    with make_pool(policy, off) as pool:
        planted = pool.call("pa_plant_link", {"name": "inner", "target": str(victim)})
        assert planted.ok, planted
        written = pool.call("pa_write_data", {"name": "written-by-tool"})
        message = failed_closed(written, "data_limit")
    assert "symbolic link" in message and str(outer / "inner") in message, message
    untouched(victim)


def test_a_planted_link_does_not_move_read_files_root(tmp_path: Path) -> None:
    """The red team's second hole, handed to the worker without the load-time check:
    shared/docs replaced by a link to a host directory; read_file fails closed."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_text("host secret")
    (tmp_path / "shared" / "docs").mkdir(parents=True)
    policy = Unchecked(
        {
            "pa_plant_link": ToolContext(data_dir=str(tmp_path / "shared")),
            "read_file": ToolContext(root=str(tmp_path / "shared" / "docs")),
        }
    )
    with make_pool(policy) as pool:
        planted = pool.call("pa_plant_link", {"name": "docs", "target": str(private)})
        assert planted.ok, planted
        result = pool.call("read_file", {"path": "secret.txt"})
    assert "host secret" not in (result.output or ""), result
    assert "symbolic link" in failed_closed(result)


@pytest.mark.parametrize("where", ["outer/inner", "alias/inner"])
def test_the_worker_never_owns_a_data_dir_through_a_link(tmp_path: Path, where: str) -> None:
    """What the worker does as root before its lock-down, on its own (the pool's quota
    check stops a call earlier): a link as the data_dir, or on the way to it, raises
    before anything is made, re-owned or re-moded."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "inner").symlink_to(victim)
    (tmp_path / "alias").symlink_to(victim)
    with pytest.raises(PathChanged, match="symbolic link"):
        own_data_dir(str(tmp_path / where), 4242)
    untouched(victim)


@pytest.mark.parametrize("off", LAYERS)
@pytest.mark.parametrize("where", ["docs", "."])
def test_a_root_replaced_by_a_link_after_load_fails_closed(
    tmp_path: Path, where: str, off: tuple[str, ...]
) -> None:
    """The root itself, or a directory on the way to it, becomes a link after load."""
    base = tmp_path / "base"
    (base / "docs").mkdir(parents=True)
    (base / "docs" / "faq.md").write_text("public")
    private = tmp_path / "private"
    (private / "docs").mkdir(parents=True)
    (private / "secret.txt").write_text("host secret")
    (private / "docs" / "faq.md").write_text("host secret")
    policy = parse_policy('[tools.read_file]\nroot = "docs"\n', "p.toml", base)
    with make_pool(policy, off) as pool:
        assert pool.call("read_file", {"path": "faq.md"}).output == "public"
        moved = base / where
        moved.rename(tmp_path / "moved-away")
        moved.symlink_to(private)  # docs -> private, or base -> private (holds docs)
        result = pool.call("read_file", {"path": "faq.md"})
    assert "host secret" not in (result.output or ""), result
    assert "symbolic link" in failed_closed(result)


@pytest.mark.parametrize("off", LAYERS)
def test_a_data_dir_replaced_by_a_link_after_load_fails_closed(
    tmp_path: Path, off: tuple[str, ...]
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (tmp_path / "state").mkdir()
    policy = parse_policy('[tools.pa_write_data]\ndata_dir = "state"\n', "p.toml", tmp_path)
    with make_pool(policy, off) as pool:
        assert pool.call("pa_write_data", {"name": "first"}).ok
        (tmp_path / "state").rename(tmp_path / "moved-away")
        (tmp_path / "state").symlink_to(victim)
        message = failed_closed(pool.call("pa_write_data", {"name": "second"}), "data_limit")
    assert "symbolic link" in message, message
    untouched(victim)


@pytest.mark.parametrize("off", LAYERS)
def test_a_missing_data_dir_is_still_made_and_bound(tmp_path: Path, off: tuple[str, ...]) -> None:
    """The walk that refuses links still creates what does not exist yet, and the
    directory bound and allowed from its descriptor is the one written: also where it
    lies inside the same tool's root (bound read-only) and another's."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "faq.md").write_text("public")
    policy = parse_policy(
        '[tools.pa_write_data]\nroot = "docs"\ndata_dir = "docs/new/notes"\n'
        '[tools.read_file]\nroot = "docs"\n',
        "p.toml",
        tmp_path,
    )
    with make_pool(policy, off) as pool:
        assert pool.call("pa_write_data", {"name": "f"}).ok
        assert pool.call("read_file", {"path": "faq.md"}).output == "public"
    assert (tmp_path / "docs" / "new" / "notes" / "f").read_text() == "x"


def test_a_copy_with_new_tool_tables_is_checked_again(tmp_path: Path) -> None:
    policy = parse_policy('[tools.pa_plant_link]\ndata_dir = "outer"\n', "p.toml", tmp_path)
    nested = {
        **policy.tools,
        "pa_write_data": ToolPolicy(data_dir=str(tmp_path / "outer" / "inner")),
    }
    with pytest.raises(PolicyError, match="lies inside"):
        policy.model_copy(update={"tools": nested})
    moved = {**policy.tools, "pa_write_data": ToolPolicy(data_dir=str(tmp_path / "apart"))}
    copied = policy.model_copy(update={"tools": moved})
    assert copied.context_for("pa_write_data").data_dir == str(tmp_path / "apart")
