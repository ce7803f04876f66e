"""`max_data_mb`: what a tool's `data_dir` may hold on the host's disk.

The orchestrator measures the directory before each call (at or over the quota: the
call fails at once, `data_limit`) and after it (over: `data_limit`, though what was
written stays). While the call runs, RLIMIT_FSIZE is what is left, so no one file
can take the directory past its quota.

What it does not bound: a call that writes many files, each under what is left
(or two calls that run at once), can end past the quota by more than one file; the
next call then fails until data is removed. A hard bound needs a file system of the
quota's size (a loop device, project quotas), which is not there for every user.
"""

from __future__ import annotations

import os

from . import _nofollow
from .limits import MIB, Limits

SLACK = 64 * 1024
"""Kept back from what a call may write per file: room for the blocks a file system
adds on its own (a new directory, extent blocks), so that one file filling what is
left does not end past the quota."""
MAX_ENTRIES = 100_000
"""A directory with more entries than this is over its quota: the walk is bounded."""


class Unmeasurable(Exception):
    """The directory could not be measured; the call fails closed."""


def usage_bytes(path: str) -> int:
    """Disk used below `path`, as du counts it (allocated blocks, each inode once),
    never following a link, on the way to `path` either (it was resolved, symlink-free,
    when the policy was loaded: a link there now is Unmeasurable). 0 when it does not
    exist yet."""
    try:
        top = _nofollow.open_dir(path)
    except OSError as exc:
        raise Unmeasurable(f"{path}: {exc.strerror or exc}") from None
    if top is None:
        return 0
    try:
        return _measure(top, path)
    finally:
        os.close(top)


def _measure(top: int, path: str) -> int:
    seen: set[tuple[int, int]] = set()
    total = os.fstat(top).st_blocks * 512
    entries = 0

    def fail(exc: OSError) -> None:
        raise exc

    try:
        # fwalk holds each directory open and descends into none reached by a link.
        for _, dirs, files, directory in os.fwalk(
            ".", dir_fd=top, follow_symlinks=False, onerror=fail
        ):
            for name in [*dirs, *files]:
                entries += 1
                if entries > MAX_ENTRIES:
                    raise Unmeasurable(f"{path} holds more than {MAX_ENTRIES} entries")
                info = os.stat(name, dir_fd=directory, follow_symlinks=False)
                if (info.st_dev, info.st_ino) in seen:
                    continue
                if info.st_nlink > 1:
                    seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    except OSError as exc:
        raise Unmeasurable(f"{path}: {exc.strerror or exc}") from None
    return total


def check_before(tool: str, path: str, limits: Limits) -> int:
    """Bytes the call may still add; QuotaReached when there are none."""
    quota = limits.max_data_mb * MIB
    try:
        used = usage_bytes(path)
    except Unmeasurable as exc:
        raise QuotaReached(f"{tool}'s data_dir cannot be measured ({exc})") from None
    if used >= quota:
        raise QuotaReached(
            f"{tool}'s data_dir holds {used / MIB:.1f} MiB, its max_data_mb is "
            f"{limits.max_data_mb}: remove data from {path} before calling it again"
        )
    return max(quota - used - SLACK, 0)


def check_after(tool: str, path: str, limits: Limits) -> None:
    """Raise QuotaReached if the call left the directory past its quota."""
    quota = limits.max_data_mb * MIB
    try:
        used = usage_bytes(path)
    except Unmeasurable as exc:
        raise QuotaReached(f"{tool}'s data_dir cannot be measured after the call ({exc})") from None
    if used > quota:
        raise QuotaReached(
            f"{tool} left its data_dir at {used / MIB:.1f} MiB, past its max_data_mb of "
            f"{limits.max_data_mb} (what it wrote stays; later calls fail until data is removed)"
        )


class QuotaReached(Exception):
    """The message of a `data_limit` error."""
