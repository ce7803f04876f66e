"""Which of some dicts may have changed, read from CPython's own version of each dict.

CPython 3.11-3.13 give every dict a version (PEP 509, `ma_version_tag`) that takes a
new value, never used before, whenever a key is added or removed or a value is
replaced by another object; storing the same object again leaves it as it was. So
an unchanged version proves an unchanged dict, and reading 21 versions costs 2 µs
where comparing the 1,200 values they hold cost 15-18 µs (`sandbox.leftovers`).

The field is not public API: it is read only where the interpreter is one known to
keep it, and only after checking here that the layout is the expected one (each
dict's length where it should be) and that a dict changed here changes its version.
Anywhere else `Versions.moved` names every dict, and the caller compares values.
"""

from __future__ import annotations

import ctypes
import operator
import sys
import sysconfig
from collections.abc import Sequence
from typing import Any

_WORD = ctypes.sizeof(ctypes.c_ssize_t)
_USED = 2 * _WORD
"""`ma_used`, the length, after the object header (refcount, type)."""
_VERSION = 3 * _WORD
"""`ma_version_tag`, after `ma_used`."""
_value = operator.attrgetter("value")


def _kept() -> bool:
    """Whether this interpreter keeps a version per dict where we read it."""
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13):
        return False
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return False  # another object header
    probe: dict[str, Any] = {"a": 1}
    if not _layout_fits(probe):
        return False
    seen = [_read(probe)]
    probe["a"] = object()
    seen.append(_read(probe))
    probe["b"] = 2
    seen.append(_read(probe))
    del probe["a"]
    seen.append(_read(probe))
    return len(set(seen)) == len(seen)


def _read(d: dict[Any, Any]) -> int:
    return ctypes.c_uint64.from_address(id(d) + _VERSION).value


def _layout_fits(d: dict[Any, Any]) -> bool:
    return ctypes.c_ssize_t.from_address(id(d) + _USED).value == len(d)


KEPT = _kept()


class Versions:
    """The versions of `dicts` as they are now; `moved()` names those that may have
    changed since. The caller keeps the dicts alive (the versions are read from them)."""

    def __init__(self, dicts: Sequence[object]) -> None:
        self._tagged: list[int] = []
        self._untagged: list[int] = []
        views = []
        for i, d in enumerate(dicts):
            if KEPT and type(d) is dict and _layout_fits(d):
                self._tagged.append(i)
                views.append(ctypes.c_uint64.from_address(id(d) + _VERSION))
            else:
                self._untagged.append(i)
        self._views = tuple(views)
        self._seen = self._last = self._now()

    def _now(self) -> tuple[int, ...]:
        return tuple(map(_value, self._views))

    def moved(self) -> list[int]:
        """The indexes of the dicts whose version changed since they were last seen,
        and of every dict without one."""
        now = self._last = self._now()
        if now == self._seen:
            return self._untagged
        moved = [i for i, a, b in zip(self._tagged, now, self._seen, strict=True) if a != b]
        return sorted(moved + self._untagged)

    def seen(self) -> None:
        """Take the versions the last `moved` read as the ones to compare with (the
        caller found those dicts' contents unchanged)."""
        self._seen = self._last
