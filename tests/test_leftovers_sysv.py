"""`sandbox.leftovers` counts a warm worker's SysV objects with the *_INFO commands in
its own IPC namespace; where those are refused (a filter, an old kernel) the answer
buffer still holds an earlier one's counts, so it reads /proc/sysvipc instead, and an
object made since is still seen."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
from conftest import host_ipc_key

from sandbox import leftovers

_libc = ctypes.CDLL(None, use_errno=True)


class _Refusing:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: -1


def test_refused_counts_fall_back_to_proc_and_still_see_a_new_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leftovers, "_libc", _Refusing())
    assert isinstance(leftovers._sysv_objects(True), frozenset)
    queue = _libc.msgget(host_ipc_key(), 0o1000 | 0o600)  # IPC_CREAT
    assert queue >= 0, ctypes.get_errno()
    try:
        assert b"msg %d" % queue in leftovers._sysv_objects(True)  # type: ignore[operator]
    finally:
        _libc.msgctl(queue, 0, None)  # IPC_RMID
