"""The policy file: defaults, per-tool tables, and one clear error per mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policies import ToolPolicy, check_tools, load_policy, parse_policy
from sandbox import Limits
from sandbox.errors import PolicyError


def test_the_built_in_policy() -> None:
    policy = load_policy()
    assert policy.limits_for("anything") == Limits()
    assert policy.limits_for("calculate").reuse_worker
    assert policy.limits_for("calculate").timeout_s == 2
    root = policy.context_for("read_file").root
    assert root is not None and (Path(root) / "policy.txt").is_file()
    assert policy.context_for("calculate").root is None


def test_tool_tables_inherit_defaults_and_merge_settings(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    text = """
    [defaults]
    timeout_s = 5
    memory_mb = 256
    [defaults.settings]
    today = "2025-05-11"
    [tools.read_file]
    root = "docs"
    memory_mb = 64
    requires_approval = true
    [tools.read_file.settings]
    max_read_bytes = 100
    """
    policy = parse_policy(text, "p.toml", tmp_path)
    limits = policy.limits_for("read_file")
    assert (limits.timeout_s, limits.memory_mb) == (5, 64)
    ctx = policy.context_for("read_file")
    assert ctx.root == str(tmp_path / "docs")
    assert ctx.settings == {"today": "2025-05-11", "max_read_bytes": 100}
    assert policy.requires_approval("read_file")
    assert not policy.requires_approval("calculate")


def test_a_warm_workers_lifetime_bounds_come_from_the_policy(tmp_path: Path) -> None:
    text = "[defaults]\ntrusted = true\nmax_warm_age_s = 30\n[tools.calculate]\nmax_warm_calls = 5"
    policy = parse_policy(text, "p.toml", tmp_path)
    limits = policy.limits_for("calculate")
    assert (limits.max_warm_calls, limits.max_warm_age_s) == (5, 30)
    assert policy.limits_for("read_file").max_warm_calls == Limits().max_warm_calls


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[defaults]\ntimeout_s = -1",
            "p.toml: [defaults] timeout_s: input should be greater than 0",
        ),
        (
            "[defaults]\ntimeout_s = '10'",
            "p.toml: [defaults] timeout_s: input should be a valid number",
        ),
        ("[defaults]\ntrusted = 'yes'", "[defaults] trusted: input should be a valid boolean"),
        (
            "[defaults]\ntimeout = 10",
            "[defaults] timeout: unknown key; did you mean 'timeout_s'? (accepted: timeout_s,",
        ),
        (
            "[tools.calculate]\nmemory_mb = 1",
            "[tools.calculate] memory_mb: input should be greater than or equal to 16",
        ),
        (
            "[tools.read_file]\nroot = 'nowhere'",
            "[tools.read_file] root: 'nowhere' is not a directory",
        ),
        (
            "[runs]\nmax_steps = 3",
            "[runs]: unknown table; did you mean 'run'? (accepted: extends, isolation, load_tools,",
        ),
        (
            "[layers]\nlandlok = false",
            "[layers] landlok: unknown isolation layer 'landlok'; known: user_namespace, "
            "pid_namespace,",
        ),
        ("[layers]\nlandlok = false", "mount_namespace; did you mean 'landlock'?"),
        # A tool's or the run's key above every table: which table it belongs in.
        (
            "timeout_s = 5",
            "p.toml: timeout_s: unknown top-level key; timeout_s is a tool's key: put it in "
            "[defaults] (every tool) or a [tools.NAME] table (accepted: extends,",
        ),
        (
            'model = "llama3.1"',
            "p.toml: model: unknown top-level key; model is a key of the run: put it in the "
            "[run] table (accepted: extends,",
        ),
        ("[layers]\nrlimits = false", "[layers] rlimits: the rlimits layer cannot be turned off"),
        (  # a tool that is not trusted has no warm worker: the key did nothing, silently
            "[tools.read_file]\nmax_warm_calls = 5",
            "p.toml: [tools.read_file] max_warm_calls: read_file is not trusted, so it has no "
            "warm workers (each call gets a fresh one): set trusted = true in [tools.read_file],"
            " or take max_warm_calls out",
        ),
        # Passed by `policy show`, refused by every `run`.
        (
            '[run]\nbase_url = "localhost:8080"',
            "p.toml: [run] base_url: 'localhost:8080' is not an http:// or https:// URL with a "
            "host (for example http://localhost:11434/v1)",
        ),
        ('[run]\nembeddings_base_url = "ftp://x"', "[run] embeddings_base_url: 'ftp://x' is not"),
        ("[defaults]\ntimeout_s = nan", "[defaults] timeout_s: must be a number (got nan)"),
        ("[layers]\nseccomp = 'off'", "[layers] seccomp: input should be a valid boolean"),
        (
            "[run]\nmax_iterations = 0",
            "[run] max_iterations: input should be greater than or equal to 1",
        ),
        ("[tools]\ncalculate = 3", "[tools.calculate]: must be a table"),
        (
            "[tools.calculate]\nmax_warm_calls = 0",
            "[tools.calculate] max_warm_calls: input should be greater than or equal to 1",
        ),
        (
            "[defaults]\nmax_warm_age_s = -5",
            "[defaults] max_warm_age_s: input should be greater than 0",
        ),
        ("[defaults\n", "p.toml: not valid TOML"),
        (
            "[defaults.settings]\ntoday = 2025-05-11",
            "settings.today: a TOML date, which settings do not take; write it as a string: "
            'today = "2025-05-11"',
        ),
        ('isolation = "paranoid"', 'p.toml: isolation: must be "best-effort" or "strict"'),
        (
            "[tools.read_file]\nroot = '{date}/docs'",
            "[tools.read_file] root: '{date}/docs': unknown placeholder {date} (accepted: {data}",
        ),
    ],
)
def test_mistakes_give_one_error_naming_file_table_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml", tmp_path)
    assert message in str(info.value)


def test_a_table_for_an_unknown_tool_is_an_error_listing_the_known_ones(tmp_path: Path) -> None:
    policy = parse_policy("[tools.calculat]\ntimeout_s = 1", "p.toml", tmp_path)
    with pytest.raises(
        PolicyError,
        match=re.escape(
            "p.toml: [tools.calculat]: there is no tool named 'calculat'; "
            "did you mean 'calculate'? (known tools: calculate, read_file)"
        ),
    ):
        check_tools(policy, ["calculate", "read_file"])


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[run]\ndecides = true", "[run] decides: unknown key; decides is a tool's key: put"),
        ('[tools.calculate]\ntools_sent = "all"', "tools_sent is a key of the run: put it in"),
        ("[defaults]\nmax_iterations = 3", "max_iterations is a key of the run"),
    ],
)
def test_a_run_key_in_a_tool_table_or_a_tool_key_in_run_says_where_it_goes(
    text: str, said: str, tmp_path: Path
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml", tmp_path)
    assert said in str(info.value)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '[defaults]\nafter = ["calculate"]',
            "p.toml: [defaults] after: calculate waits for itself to answer first",
        ),
        (
            '[tools.calculate]\nafter = ["read_file"]\n[tools.read_file]\nafter = ["calculate"]',
            "p.toml: [tools.calculate] after: calculate -> read_file -> calculate: each waits",
        ),
    ],
)
def test_after_that_leads_back_to_itself_is_an_error(text: str, said: str, tmp_path: Path) -> None:
    # Such a tool is offered never, and a call of it is told to call itself first.
    policy = parse_policy(text, "p.toml", tmp_path)
    with pytest.raises(PolicyError, match=re.escape(said)):
        check_tools(policy, ["calculate", "read_file"])
    fine = parse_policy('[tools.calculate]\nafter = ["read_file"]', "p.toml", tmp_path)
    check_tools(fine, ["calculate", "read_file"])


def test_a_missing_file_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match=re.escape("policy file not found: /no/such.toml")):
        load_policy("/no/such.toml")


def test_a_file_not_in_utf8_says_what_a_policy_file_is(tmp_path: Path) -> None:
    latin1 = tmp_path / "p.toml"
    latin1.write_bytes("# caf\xe9\n[run]\n".encode("latin-1"))
    with pytest.raises(PolicyError) as info:
        load_policy(latin1)
    assert str(info.value).endswith("not UTF-8 text (byte 5); a policy file is TOML in UTF-8")


def test_layers_the_policy_turns_off_reach_the_pool(tmp_path: Path) -> None:
    policy = parse_policy(
        "[layers]\nseccomp = false\nrlimits = true\nlandlock = true\n", "p.toml", tmp_path
    )
    assert policy.disabled_layers == ["seccomp"]
    options = policy.pool_options()
    assert (options["isolation"], options["disable"]) == ("best-effort", ["seccomp"])
    assert options["accept_unwalled_signals"] is False
    accepting = parse_policy("accept_unwalled_signals = true\n", "p.toml", tmp_path)
    assert accepting.pool_options()["accept_unwalled_signals"] is True


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[layers]\nlandlock = false\naccept_unwalled_signals = true\n", "[layers] accept_unw"),
        ('[run]\nmodel = "m"\nisolation = "strict"\n', "[run] isolation: unknown key"),
        ('[layers]\nisolation = "strict"\n', "[layers] isolation: input should be a valid"),
    ],
)
def test_a_top_level_key_written_under_a_table_says_where_it_goes(
    text: str, said: str, tmp_path: Path
) -> None:
    # Appended to a file that turned layers off, the opt-out lands in [layers].
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml", tmp_path)
    assert said in str(info.value)
    assert "is a top-level key: put it at the top of the file, before any [table]" in str(
        info.value
    )


def test_a_copy_with_other_tool_tables_resolves_afresh() -> None:
    policy = load_policy()
    assert policy.limits_for("calculate").timeout_s == 2
    changed = policy.model_copy(update={"tools": {"calculate": ToolPolicy(timeout_s=7)}})
    assert changed.limits_for("calculate").timeout_s == 7
    assert policy.limits_for("calculate").timeout_s == 2


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '[run]\noffer = ["calculate"]\n[tools.calculate]\nthen = ["read_file"]',
            "p.toml: [tools.calculate] then: read_file is not in [run] offer, so calculate "
            "asks for a call the run cannot make",
        ),
        (
            '[run]\noffer = ["calculate"]\n[defaults]\nafter = ["read_file"]',
            "p.toml: [defaults] after: read_file is not in [run] offer, so calculate can never",
        ),
    ],
)
def test_after_or_then_outside_the_offered_tools_is_an_error(
    text: str, said: str, tmp_path: Path
) -> None:
    policy = parse_policy(text, "p.toml", tmp_path)
    with pytest.raises(PolicyError, match=re.escape(said)):
        check_tools(policy, ["calculate", "read_file"])
    both = text.replace('offer = ["calculate"]', 'offer = ["calculate", "read_file"]')
    if "[defaults]" not in text:  # read_file waiting for itself is the cycle's error
        check_tools(parse_policy(both, "p.toml", tmp_path), ["calculate", "read_file"])
