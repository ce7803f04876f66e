"""The read_file jail attacked: nothing outside the root, nothing but regular files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import Pool
from tools.files import FileAccessError, read_text


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "policy.txt").write_text("Returns accepted within 30 days of delivery.\n")
    (root / "sub" / "note.txt").write_text("inner")
    (root / "latin1.txt").write_bytes(b"caf\xe9")
    (root / "utf8.txt").write_text("café ✓")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    os.symlink(secret, root / "link_out.txt")
    os.symlink(root / "policy.txt", root / "link_in.txt")
    os.symlink(tmp_path, root / "dir_out")
    os.mkfifo(root / "fifo")
    return root


def test_reads_a_file_inside_the_root(jail: Path) -> None:
    assert read_text(str(jail), "policy.txt").startswith("Returns accepted")
    assert read_text(str(jail), "sub/note.txt") == "inner"
    assert read_text(str(jail), "./sub//note.txt") == "inner"
    assert read_text(str(jail), "utf8.txt") == "café ✓"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "absolute"),
        ("../secret.txt", "leaves the document root"),
        ("sub/../../secret.txt", "leaves the document root"),
        ("link_out.txt", "symbolic link"),
        ("link_in.txt", "symbolic link"),
        ("dir_out/secret.txt", "symbolic link"),
        ("fifo", "not a regular file"),
        ("sub", "a directory"),
        (".", "root directory"),
        ("", "relative path"),
        ("policy.txt\x00.png", "NUL"),
        ("missing.txt", "does not exist"),
        ("policy.txt/x", "not a directory"),
        ("latin1.txt", "not UTF-8"),
        ("~/secret.txt", "absolute"),
    ],
)
def test_escapes_and_non_files_are_refused(jail: Path, path: str, message: str) -> None:
    with pytest.raises(FileAccessError, match=message) as info:
        read_text(str(jail), path)
    # Nothing about the world outside the root leaks into the message.
    assert str(jail.parent) not in str(info.value)
    assert "TOP SECRET" not in str(info.value)


def test_reads_at_most_the_cap_and_marks_truncation(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("a" * 10_000)
    text = read_text(str(tmp_path), "big.txt", max_bytes=100)
    assert text.startswith("a" * 100)
    assert "[truncated: showing the first 100 of 10000 bytes]" in text


def test_a_multibyte_character_cut_by_the_cap_is_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_text("é" * 100)
    text = read_text(str(tmp_path), "u.txt", max_bytes=5)
    assert text.startswith("éé")
    assert "truncated" in text


def test_an_endless_file_is_not_read_whole(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / "zero")
    with pytest.raises(FileAccessError, match="symbolic link"):
        read_text(str(tmp_path), "zero")


def test_it_runs_in_the_sandbox_with_the_policy_root(pool: Pool, jail: Path) -> None:
    from policies import parse_policy

    policy = parse_policy(f'[tools.read_file]\nroot = "{jail}"\n', "test.toml", jail)
    with Pool(policy, registry=pool.registry, size=1) as jailed:
        ok = jailed.call("read_file", {"path": "policy.txt"})
        refused = jailed.call("read_file", {"path": "../secret.txt"})
    assert ok.ok and "30 days" in ok.output
    assert refused.error.kind == "tool_error"
    assert "TOP SECRET" not in refused.error.message


@pytest.mark.parametrize("path", ["a\udc80b", "caf\udce9.txt", "\ud800", "sub/\udfff"])
def test_a_path_that_is_not_unicode_is_refused(jail: Path, path: str) -> None:
    with pytest.raises(FileAccessError, match="is not valid Unicode text"):
        read_text(str(jail), path)


@pytest.mark.parametrize("path", ["a\udc80b", "\ud800"])
def test_pool_call_refuses_a_path_that_is_not_unicode(pool: Pool, path: str) -> None:
    for arguments in ({"path": path}, '{"path": "' + path.encode("unicode_escape").decode() + '"}'):
        result = pool.call("read_file", arguments)
        assert result.error.kind == "bad_arguments", result
        assert "lone surrogate" in result.error.message
