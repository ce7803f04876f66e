"""The uids workers run as, where the orchestrator is root: a block of its own per
zygote, one uid per live worker, so that no two calls, and no two pools, share one."""

from __future__ import annotations

import fcntl
import os

UID_BASE = 1_000_000_000
UID_SPAN = 1_000_000
"""Workers get their own uid (and gid) from this range, one not in any passwd file,
so that RLIMIT_NPROC counts each worker's processes alone."""
NOBODY = 65534


class UidRange:
    """The uids workers run as: one per live worker, or `nobody` for all where the
    user namespace maps no wider range."""

    def __init__(self, first: int, span: int) -> None:
        self.first = first
        self.span = span
        self._next = 0
        self.data_gid = first + span - 1 if span > 1 else first
        """The group every worker joins for a policy's `data_dir`, which it owns: so
        that workers of different uids share a tool's state, and nothing else."""
        self._used: set[int] = {self.data_gid} if span > 1 else set()

    @classmethod
    def find(cls) -> UidRange | None:
        """A block of uids no other live zygote on this machine holds (an flock on a
        file per block, held for the zygote's life): two pools' workers never share a
        uid, so that RLIMIT_NPROC and what a uid owns stay each call's own."""
        if _mapped(UID_BASE, UID_SPAN):
            block = _lock_uid_block()
            if block is not None:
                return cls(UID_BASE + block * UID_BLOCK, UID_BLOCK)
        if _mapped(NOBODY, 1):
            return cls(NOBODY, 1)
        return None

    def describe(self) -> str:
        if self.span == 1:
            return f"all workers run as uid/gid {self.first} (nobody)"
        return f"each worker runs as a uid/gid of its own ({self.first}+, this pool's block)"

    def take(self) -> int:
        if self.span == 1:
            return self.first
        for _ in range(self.span):
            uid = self.first + self._next
            self._next = (self._next + 1) % self.span
            if uid not in self._used:
                self._used.add(uid)
                return uid
        raise OSError("every worker uid is in use")

    def release(self, uid: int) -> None:
        self._used.discard(uid)


UID_BLOCK = 1000
"""Uids per zygote: up to 999 workers at once, and the data group."""
UID_LOCKS = "/run/sandboxed-agent/uid-blocks"

_held_block: int | None = None
"""The descriptor whose flock holds this zygote's block (never closed: the kernel lets
the block go when the zygote dies, however)."""


def _lock_uid_block() -> int | None:
    global _held_block
    try:
        os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
    except OSError:
        return None
    blocks = UID_SPAN // UID_BLOCK
    start = int.from_bytes(os.urandom(4), "little") % blocks
    for i in range(blocks):
        block = (start + i) % blocks
        fd = os.open(f"{UID_LOCKS}/{block}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_block = fd
        return block
    return None


def _mapped(first: int, count: int) -> bool:
    """Both the uid and the gid range exist in this user namespace."""
    for name in ("uid_map", "gid_map"):
        try:
            with open(f"/proc/self/{name}") as f:
                ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
        except OSError:
            return False
        if not any(inside <= first and first + count <= inside + n for inside, _, n in ranges):
            return False
    return True
