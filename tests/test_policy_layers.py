"""Policy files as layers: a user's file changes only what it names, over the built-in one."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from conftest import agent_cli as cli

from agent.audit import read_trace
from agent.replay import ScriptedModelServer, call, say
from policies import check_tools, load_policy, parse_policy
from policies.show import policy_json, policy_toml
from sandbox.errors import PolicyError
from tools import Registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "tools" / "data" / "docs"
BUILT_IN = "<built-in policy>"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_two_line_policy_keeps_everything_it_does_not_name(tmp_path: Path) -> None:
    mine = write(tmp_path / "elsewhere" / "p.toml", "[tools.calculate]\ntimeout_s = 3\n")
    policy = load_policy(mine)
    assert policy.requires_approval("issue_refund")
    assert policy.context_for("read_file").root == str(DOCS)
    assert policy.context_for("forget").data_dir is not None
    assert policy.run.prices["gpt-4o-mini"].input_per_million == 0.15
    calculate = policy.limits_for("calculate")
    assert (calculate.timeout_s, calculate.reuse_worker) == (3, True)  # key by key
    assert policy.files == [BUILT_IN, str(mine)]
    assert policy.source_of("tools.calculate.timeout_s") == str(mine)
    assert policy.source_of("tools.calculate.trusted") == BUILT_IN


def test_nested_tables_merge_key_by_key(tmp_path: Path) -> None:
    text = """
    [tools.remember.settings]
    memory_namespace = "bob"
    [run]
    max_iterations = 3
    [run.prices.gpt-4o-mini]
    output_per_million = 9.0
    [layers]
    seccomp = false
    """
    policy = parse_policy(text, "p.toml", tmp_path)
    settings = policy.context_for("remember").settings
    assert settings["memory_namespace"] == "bob"
    assert settings["memory_max_facts"] == 10000
    assert (policy.run.max_iterations, policy.run.max_wall_s) == (3, 300)
    price = policy.run.prices["gpt-4o-mini"]
    assert (price.input_per_million, price.output_per_million) == (0.15, 9.0)
    assert "gpt-4o" in policy.run.prices
    assert policy.disabled_layers == ["seccomp"]


def test_a_user_can_still_turn_a_built_in_value_off_by_naming_it(tmp_path: Path) -> None:
    policy = parse_policy("[tools.issue_refund]\nrequires_approval = false\n", "p.toml", tmp_path)
    assert not policy.requires_approval("issue_refund")


def test_extends_none_starts_from_nothing(tmp_path: Path) -> None:
    policy = parse_policy('extends = "none"\n[tools.calculate]\ntimeout_s = 3\n', "p", tmp_path)
    assert not policy.requires_approval("issue_refund")
    assert policy.context_for("read_file").root is None
    assert policy.run.prices == {}
    assert not policy.limits_for("calculate").reuse_worker
    assert policy.files == ["p"]


def test_relative_paths_resolve_against_the_file_that_set_them(tmp_path: Path) -> None:
    (tmp_path / "team" / "docs").mkdir(parents=True)
    (tmp_path / "me" / "notes").mkdir(parents=True)
    write(tmp_path / "team" / "base.toml", '[tools.read_file]\nroot = "docs"\n')
    mine = write(
        tmp_path / "me" / "p.toml",
        'extends = "../team/base.toml"\n'
        "[tools.read_file]\nrequires_approval = true\n"
        '[tools.recall]\ndata_dir = "notes"\n',
    )
    policy = load_policy(mine)
    assert policy.context_for("read_file").root == str(tmp_path / "team" / "docs")
    assert policy.requires_approval("read_file")
    assert policy.context_for("recall").data_dir == str(tmp_path / "me" / "notes")
    assert policy.requires_approval("issue_refund")  # base.toml itself lies over the built-in
    assert policy.files == [BUILT_IN, str(tmp_path / "team" / "base.toml"), str(mine)]
    # The same file, read from another working directory, means the same directories.
    os.chdir(tmp_path / "team")
    try:
        again = load_policy(Path("..") / "me" / "p.toml")
    finally:
        os.chdir(ROOT)
    assert again.context_for("read_file").root == str(tmp_path / "team" / "docs")


def test_extends_cycles_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "c.toml"\n')
    write(tmp_path / "c.toml", 'extends = "a.toml"\n')
    with pytest.raises(PolicyError, match="leads back to itself") as info:
        load_policy(tmp_path / "a.toml")
    assert "a.toml -> " in str(info.value) and "c.toml -> " in str(info.value)
    write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    with pytest.raises(PolicyError, match="leads back to itself"):
        load_policy(tmp_path / "self.toml")
    write(tmp_path / "gone.toml", 'extends = "nowhere.toml"\n')
    with pytest.raises(PolicyError, match=r"gone.toml: extends: policy file not found: .*nowhere"):
        load_policy(tmp_path / "gone.toml")
    with pytest.raises(PolicyError, match='extends: must be "none" or the path'):
        parse_policy("extends = 3\n", "p.toml", tmp_path)
    with pytest.raises(PolicyError, match=r"\[defaults\] extends: unknown key"):
        parse_policy('[defaults]\nextends = "none"\n', "p.toml", tmp_path)


def test_an_error_names_the_file_that_holds_it(tmp_path: Path) -> None:
    base = write(tmp_path / "base.toml", "[tools.calculate]\nmemory_mb = 1\n")
    mine = write(tmp_path / "p.toml", 'extends = "base.toml"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(mine)
    assert str(info.value).startswith(f"{base}: [tools.calculate] memory_mb: input should be")
    write(tmp_path / "docs.toml", '[tools.read_file]\nroot = "no-such-dir"\n')
    with pytest.raises(PolicyError, match=r"docs.toml: \[tools.read_file\] root: 'no-such-dir'"):
        load_policy(tmp_path / "docs.toml")


def test_half_a_price_needs_the_other_half_from_a_file_below(tmp_path: Path) -> None:
    with pytest.raises(
        PolicyError,
        match=re.escape("p.toml: [run.prices.new-model] output_per_million: missing"),
    ):
        parse_policy("[run.prices.new-model]\ninput_per_million = 1.0\n", "p.toml", tmp_path)
    # The other mistakes in the same file are still found.
    with pytest.raises(PolicyError, match=r"\[run\] max_iterations: input should be"):
        parse_policy(
            "[run]\nmax_iterations = 0\n[run.prices.new-model]\ninput_per_million = 1.0\n",
            "p.toml",
            tmp_path,
        )


def test_only_tables_a_file_set_must_name_loaded_tools(tmp_path: Path) -> None:
    known = ["calculate", "read_file", "issue_refund"]
    check_tools(load_policy(), known)  # the built-in names tools that may not be loaded
    typo = parse_policy("[tools.issue_refnd]\nrequires_approval = true\n", "p.toml", tmp_path)
    with pytest.raises(PolicyError) as info:
        check_tools(typo, known)
    assert str(info.value).startswith(
        "p.toml: [tools.issue_refnd]: there is no tool named 'issue_refnd'; "
        "did you mean 'issue_refund'?"
    )


def test_the_demo_policy_is_a_layer_over_the_built_in() -> None:
    policy = load_policy(ROOT / "policies" / "demo.toml")
    assert policy.requires_approval("issue_refund")
    assert policy.limits_for("track_shipment").timeout_s == 2
    assert policy.context_for("get_current_date").settings["today"] == "2025-05-11"
    assert policy.context_for("read_file").root == str(DOCS)
    assert policy.run.max_iterations == 8


def test_shown_toml_loads_back_to_the_same_policy(tmp_path: Path) -> None:
    mine = write(tmp_path / "p.toml", '[tools.calculate]\ntimeout_s = 3\n[run]\nmodel = "m"\n')
    policy = load_policy(mine)
    shown = policy_toml(policy)
    again = parse_policy('extends = "none"\n' + shown, "shown.toml", tmp_path)
    assert again.model_dump() == policy.model_dump()
    lines = shown.splitlines()
    assert f"timeout_s = 3.0  # {mine}" in lines
    assert f"requires_approval = true  # {BUILT_IN}" in lines
    assert "max_retries = 3  # (program default)" in lines
    data = json.loads(policy_json(policy))
    assert data["files"] == [BUILT_IN, str(mine)]
    assert data["policy"]["tools"]["issue_refund"] == {"requires_approval": True}
    assert data["sources"]["run.model"] == str(mine)
    assert tomllib.loads(shown)["run"]["model"] == "m"


def test_shown_toml_loads_back_through_the_tool_check_too(tmp_path: Path) -> None:
    # `policy show > shown.toml`, then `--policy shown.toml`: the built-in policy's
    # tables of tools not loaded (memory, run_python) were refused as unknown tools.
    mine = write(tmp_path / "p.toml", "[tools.calculate]\ntimeout_s = 3\n")
    policy = load_policy(mine)
    loaded = Registry.default().names()
    shown = policy_toml(policy, loaded)
    assert "# Left out: the built-in policy's [tools.remember]" in shown
    again = parse_policy(shown, "shown.toml", tmp_path)
    check_tools(again, loaded)
    for name in loaded:
        assert again.effective(name) == policy.effective(name)
    assert "\n[tools.remember]\n" in policy_toml(policy, [*loaded, "remember"])
    assert "\n[tools.remember]\n" not in shown


def test_policy_show_on_the_command_line(tmp_path: Path) -> None:
    mine = write(tmp_path / "p.toml", "[tools.calculate]\ntimeout_s = 3\n")
    proc = cli("policy", "show", "--policy", str(mine), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("[tools.issue_refund]\n", 1)[1].split("\n\n")[0]
    assert table == f"requires_approval = true  # {BUILT_IN}"
    assert f"timeout_s = 3.0  # {mine}" in proc.stdout
    bare = cli("policy", home=tmp_path)
    assert bare.returncode == 2 and "required: show" in bare.stderr
    as_json = cli("policy", "show", "--json", home=tmp_path)
    assert json.loads(as_json.stdout)["files"] == [BUILT_IN]
    write(mine, "[tools.calculate]\ntimeout = 3\n")
    bad = cli("policy", "show", "--policy", str(mine), home=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"sandboxed-agent: {mine}: [tools.calculate] timeout: unknown key; did you mean "
        "'timeout_s'? (accepted: timeout_s, memory_mb, cpu_s, max_output_chars, max_open_files,"
        " max_file_size_mb, max_disk_mb, max_data_mb, max_processes, max_connections,"
        " max_egress_mb, requires_approval, after, offer_when, decides, then, then_when,"
        " max_calls, first_when, ask_when_ready, idempotent, trusted, max_warm_calls,"
        " max_warm_age_s, network,"
        " root, data_dir, settings)"
    ]


def test_a_refund_under_a_two_line_policy_without_a_terminal_is_denied(tmp_path: Path) -> None:
    mine = write(tmp_path / "p.toml", '[run]\nmodel = "scripted"\n')
    trace = tmp_path / "trace.jsonl"
    script = [
        call(("issue_refund", {"order_id": "12345", "amount": 89.99})),
        say("I could not refund it."),
    ]
    with ScriptedModelServer(script) as server:
        proc = cli(
            "run",
            "Refund order 12345 in full, now.",
            "--policy",
            str(mine),
            "--base-url",
            server.base_url,
            "--trace",
            str(trace),
            home=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    calls = [e for e in read_trace(trace) if e["event"] == "tool_call"]
    assert [(c["tool"], c["ok"], c["error_kind"]) for c in calls] == [
        ("issue_refund", False, "denied")
    ]
    assert "Refunded" not in trace.read_text()


def test_a_chain_of_extends_deeper_than_any_real_one_is_refused(tmp_path: Path) -> None:
    for i in range(40):
        write(tmp_path / f"{i}.toml", f'extends = "{i + 1}.toml"\n')
    write(tmp_path / "40.toml", "")
    with pytest.raises(PolicyError, match="extends: more than 32 files in one chain"):
        load_policy(tmp_path / "0.toml")
    assert load_policy(tmp_path / "20.toml").files[0] == BUILT_IN
