"""Planning the bind-mount root: links copied, nothing bound twice, nothing made inside
a bound directory (that would be a write to the host)."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox._jail import plan


def test_links_on_the_way_are_copied_and_the_real_path_is_bound(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", tmp_path / "lib")
    layout = plan([str(tmp_path / "lib")])
    assert layout.binds == [str(tmp_path / "usr" / "lib")]
    assert layout.links == [(str(tmp_path / "lib"), "usr/lib")]


def test_a_path_inside_another_is_not_bound_again(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a-b").mkdir()
    layout = plan([str(tmp_path / "a" / "b"), str(tmp_path / "a"), str(tmp_path / "a-b")])
    assert layout.binds == [str(tmp_path / "a"), str(tmp_path / "a-b")]


def test_links_inside_a_bound_directory_are_left_to_the_bind(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "real").mkdir(parents=True)
    os.symlink("real", tmp_path / "pkg" / "alias")
    layout = plan([str(tmp_path / "pkg"), str(tmp_path / "pkg" / "alias")])
    assert layout.binds == [str(tmp_path / "pkg")]
    assert layout.links == []


def test_what_is_already_bound_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    assert plan([str(tmp_path / "docs")], inside=[str(tmp_path)]).binds == []


def test_missing_paths_and_link_loops_are_dropped(tmp_path: Path) -> None:
    os.symlink("loop", tmp_path / "loop")
    assert plan([str(tmp_path / "missing"), str(tmp_path / "loop")]).binds == []


def test_dot_dot_is_taken_after_links_are_followed(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "real" / "sub", tmp_path / "link")
    # link/.. is real/, as the kernel resolves it, not tmp_path
    assert plan([str(tmp_path / "link" / "..")]).binds == [str(tmp_path / "real")]
