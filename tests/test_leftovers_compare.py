"""The comparison machinery of `sandbox.leftovers`, on its own: a cheap comparison
must still see every change the full one saw."""

from __future__ import annotations

import os
import sys
import types

from sandbox import _dict_versions
from sandbox._dict_versions import Versions
from sandbox.leftovers import _Descriptors, _dict_of


def test_a_dict_changed_in_any_way_is_named_and_an_unchanged_one_is_not() -> None:
    assert _dict_versions.KEPT or sys.version_info >= (3, 14)  # the fast path is tested
    spaces = [{"f": len}, {"g": str}, vars(types.SimpleNamespace(h=1))]
    versions = Versions(spaces)
    assert versions.moved() == []
    spaces[0]["f"] = len  # the same object again: nothing changed
    assert versions.moved() == []
    for change in (
        lambda: spaces[1].__setitem__("g", repr),
        lambda: spaces[1].__setitem__("new", 1),
        lambda: spaces[1].pop("new"),
        lambda: spaces[1].clear(),
    ):
        change()
        assert versions.moved() == [1]
        versions.seen()
        assert versions.moved() == []


def test_a_class_namespace_is_read_through_its_own_dict() -> None:
    class Patched:
        def method(self) -> None: ...

    space = vars(Patched)
    versions = Versions([_dict_of(space)])
    assert _dict_of(space) is not space
    Patched.method = lambda self: None  # type: ignore[method-assign]
    assert versions.moved() == [0]


def test_a_descriptor_closed_and_another_opened_in_its_place_is_seen() -> None:
    read, write = os.pipe()
    opened = [read, write]
    try:
        before = _Descriptors()
        assert before.same()
        # The lowest free number (the listing's own) taken, and `read` freed for the
        # next listing: the listing names the same numbers as before.
        opened.append(os.dup(write))
        os.close(opened.pop(0))
        assert not before.same()
        os.close(opened.pop())
        opened.append(os.open(os.devnull, os.O_RDONLY))  # `read`'s number, another file
        assert opened[-1] == read
        assert not before.same()
    finally:
        for fd in opened:
            os.close(fd)
