"""Summaries of timing samples, and the processes a run leaves behind."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import psutil

MARKER = "3599.5"
"""The sleep length of the benchmark's grandchildren (see bench_tools.leave_grandchild)."""


@dataclass
class Summary:
    n: int
    median: float
    p90: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples: list[float], scale: float = 1e6) -> Summary:
    """Seconds → a summary in µs (scale 1e6) or ms (scale 1e3)."""
    ordered = sorted(s * scale for s in samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return Summary(
        n=len(ordered),
        median=round(statistics.median(ordered), 1),
        p90=round(pct(0.90), 1),
        p99=round(pct(0.99), 1),
        max=round(ordered[-1], 1),
    )


def grandchildren(grace: float = 0.0) -> list[psutil.Process]:
    """The benchmark's marked grandchildren still running after `grace` seconds (what
    a peer killed may take a moment to die: only what outlives that is a survivor)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[1:] == [MARKER] and is_running(proc):
            found.append(proc)
    end = time.monotonic() + grace
    while found and time.monotonic() < end:
        time.sleep(0.005)
        found = [p for p in found if is_running(p)]
    return found


def is_running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_grandchildren() -> int:
    """Kill the benchmark's leftover grandchildren; return how many there were."""
    left = grandchildren()
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
    return len(left)


def uss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().uss
        except psutil.Error:
            pass
    return round(total / 2**20, 2)
