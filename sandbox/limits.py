"""What one tool call may use, and how a worker holds itself to it.

`Limits` is plain data; the policy file produces one per tool. The orchestrator
enforces `timeout_s` (it kills); the kernel enforces the rest through rlimits that
the worker sets on itself before it runs the tool.
"""

from __future__ import annotations

import os
import resource
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIB = 1024 * 1024

NetworkMode = Literal["none", "proxy", "all"]
"""How a worker meets the network: not at all, through the egress proxy, or wholly."""


class Limits(BaseModel):
    """Resource limits for one tool call.

    >>> Limits(timeout_s=2, memory_mb=128)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(10.0, gt=0, le=86_400)
    """Wall-clock seconds before the worker and all it started are killed."""
    memory_mb: int = Field(512, ge=16, le=1_048_576)
    """Address space the tool may add on top of the worker's own."""
    cpu_s: int = Field(10, ge=1, le=86_400)
    """CPU seconds (RLIMIT_CPU); SIGXCPU at the limit, SIGKILL one second later."""
    max_output_chars: int = Field(20_000, ge=1, le=50_000_000)
    """Longest output a call may return; longer is an `output_limit` error."""
    max_open_files: int = Field(64, ge=8, le=65_536)
    max_file_size_mb: int = Field(16, ge=0, le=1_048_576)
    """Largest file the tool may write (RLIMIT_FSIZE); a larger write fails with EFBIG."""
    max_disk_mb: int = Field(64, ge=1, le=1_048_576)
    """Size of the worker's directory (a tmpfs of its own where the kernel allows)."""
    max_data_mb: int = Field(256, ge=1, le=1_048_576)
    """Disk the tool's `data_dir` may hold (`data_limit`), measured before and after each
    call; while a call runs, each file it writes is capped at what is left."""
    max_processes: int = Field(32, ge=1, le=4096)
    """Processes the call may have at once (a pids cgroup where writable, else RLIMIT_NPROC)."""
    reuse_worker: bool = False
    """Trusted tools may run in a warm worker that served earlier calls."""
    max_warm_calls: int = Field(1000, ge=1, le=1_000_000)
    """Calls one warm worker serves at most; then it is retired, and a fresh one serves."""
    max_warm_age_s: float = Field(600.0, gt=0, le=86_400)
    """Seconds from a warm worker's first call after which it serves no more, however
    often it is called: the idle bound alone lets one called every 59 s live for ever."""
    network: bool | tuple[str, ...] = False
    """False: no network (an empty network namespace); True: the host's network; a
    list of `host:port` patterns: only those, through the orchestrator's proxy
    (`sandbox.egress`)."""
    max_connections: int = Field(64, ge=1, le=10_000)
    """Connections a call with a network allowlist may open through the proxy, in all."""
    max_egress_mb: int = Field(64, ge=1, le=1_048_576)
    """Bytes, both ways together, a call with an allowlist may move through the proxy."""

    @field_validator("network")
    @classmethod
    def _check_network(cls, value: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
        if isinstance(value, bool):
            return value
        from .egress.allowlist import NotAllowed, parse_pattern

        if not value:
            raise ValueError("an empty list allows nothing: write network = false")
        for entry in value:
            try:
                parse_pattern(entry)
            except NotAllowed as exc:
                raise ValueError(f"{exc}") from None
        return value

    @property
    def network_mode(self) -> NetworkMode:
        if isinstance(self.network, tuple):
            return "proxy"
        return "all" if self.network else "none"


def address_space_now() -> int:
    """Bytes of virtual memory this process maps right now."""
    fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)  # no file object: a
    try:  # fresh worker reads it once, on its set-up's clock
        pages = int(os.read(fd, 256).split()[0])
    finally:
        os.close(fd)
    return pages * resource.getpagesize()


WARM_CPU_CALLS = 4
"""A reusable worker's hard RLIMIT_CPU holds this many calls' `cpu_s` (the limit counts
the process's whole life, and a hard limit can never be raised again); a worker that
has used so much that one more call might not get its full `cpu_s` is retired."""


def cpu_used() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int(usage.ru_utime + usage.ru_stime)


def renew_rlimits(limits: Limits) -> bool:
    """After a reusable worker's call, for its next: every soft limit back at its hard
    one (the call may have lowered one), and `cpu_s` more seconds of CPU from what it
    has used. False, and nothing renewed, where the hard CPU limit would leave the next
    call less than its full `cpu_s` and the second of grace that tells SIGXCPU from
    SIGKILL: the worker is then retired."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = cpu_used() + limits.cpu_s
    if hard != resource.RLIM_INFINITY and soft + 1 > hard:
        return False
    for which in (resource.RLIMIT_AS, resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE):
        now, most = resource.getrlimit(which)
        if now != most:  # most calls lower none: one system call each, not two
            resource.setrlimit(which, (most, most))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    return True


def cap_file_size(data_left: int | None, *, for_good: bool) -> None:
    """No file this call writes may be larger than what its `data_dir` has left. A
    fresh worker lowers the hard limit too; a reusable one, whose next call may have
    more left, only the soft one (a trusted tool could raise it back to
    `max_file_size_mb`; the orchestrator's measure after the call still holds)."""
    if data_left is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY:
        data_left = min(data_left, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (data_left, data_left if for_good else hard))


def apply_rlimits(limits: Limits, *, reusable: bool, nproc: int | None) -> None:
    """Set this process's rlimits, soft and hard, for its first call, so the tool cannot
    raise them back, trusted or not.

    A reusable worker serves only calls with these same limits (`Call.reuse_key`), so
    hard = the call's limit holds for all of them; CPU time is the exception, since it
    adds up over calls: its hard limit holds `WARM_CPU_CALLS` calls, each call gets its
    soft `cpu_s` (`renew_rlimits`). `nproc` is the RLIMIT_NPROC to set, or None when a
    pids cgroup already bounds the call (RLIMIT_NPROC counts every process of the user,
    so it is only a fallback).
    """
    used = cpu_used()
    wanted = {
        resource.RLIMIT_AS: address_space_now() + limits.memory_mb * MIB,
        resource.RLIMIT_CPU: used + limits.cpu_s,
        resource.RLIMIT_NOFILE: limits.max_open_files,
        resource.RLIMIT_FSIZE: limits.max_file_size_mb * MIB,
        resource.RLIMIT_CORE: 0,
    }
    if nproc is not None:
        wanted[resource.RLIMIT_NPROC] = nproc
    if reusable:
        # A POSIX message queue lives in the worker's IPC namespace, as long as the
        # worker: none can be made (EMFILE), so none waits there for its next call.
        wanted[resource.RLIMIT_MSGQUEUE] = 0
    calls = WARM_CPU_CALLS if reusable else 1
    for which, soft in wanted.items():
        _, hard = resource.getrlimit(which)
        new_hard = soft
        if which == resource.RLIMIT_CPU:
            # One second of grace between SIGXCPU and SIGKILL tells the two apart.
            new_hard = used + calls * limits.cpu_s + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
            new_hard = min(new_hard, hard)
        resource.setrlimit(which, (soft, new_hard))
