"""What a worker may say about its own call, and how the orchestrator checks it.

A worker runs the tool in its own process, so anything it sends may have been written
by the tool. It may report an output, or one of three failures: `tool_error` (the
tool's own exception, which it could always cause), `output_limit` (a result too long,
which only fails its own call, and whose frame length the orchestrator checks anyway),
and `memory_limit`, believed only on the kernel's word (see `memory_evidence`). The
other kinds (`timeout`, `cpu_limit`, `crashed`, `denied`, `unknown_tool`,
`bad_arguments`) are findings of the orchestrator; a worker that claims one broke the
protocol.
"""

from __future__ import annotations

from .errors import ErrorKind
from .limits import MIB, Limits

WORKER_KINDS = frozenset({ErrorKind.TOOL_ERROR, ErrorKind.OUTPUT_LIMIT, ErrorKind.MEMORY_LIMIT})

MEMORY_EVIDENCE_SHARE = 4
"""A MemoryError is `memory_limit` when the worker's peak address space came within
1/MEMORY_EVIDENCE_SHARE of the call's `memory_mb` of its RLIMIT_AS."""


def memory_evidence(pid: int, limits: Limits) -> str | None:
    """Why the kernel's numbers do not show worker `pid` at its memory limit, or None
    when they do. Read from /proc while the worker waits to be killed after its answer;
    the caller checks that `pid` is still that worker afterwards."""
    try:
        peak = _status_bytes(pid, "VmPeak")
        limit = _address_space_limit(pid)
    except (OSError, ValueError, LookupError):
        return "the worker's memory could not be read"
    if limit is None:
        return "the worker has no address-space limit"
    if peak + limits.memory_mb * MIB // MEMORY_EVIDENCE_SHARE >= limit:
        return None
    return (
        f"its address space peaked at {(limit - peak) // MIB} MiB below its limit "
        "(a single request larger than what is left fails at once)"
    )


def _status_bytes(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                value, unit = line.split()[1:3]
                assert unit == "kB"
                return int(value) * 1024
    raise LookupError(field)


def _address_space_limit(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max address space"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    raise LookupError("Max address space")
