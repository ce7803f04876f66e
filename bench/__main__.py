"""`python -m bench [--quick] [--output DIR]`: ours against the peers, side by side.

Every timed call's answer is checked and every kill is followed by a count of the
processes it left, so a fast wrong answer cannot win. Results go to the terminal and to
`bench/results/latest.json` and `latest.md` (the README shows the latter).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import isolation, peers
from .isolation import GONE_WAIT_S
from .stats import grandchildren, kill_grandchildren, summarize, uss_mib

RESULTS = Path(__file__).resolve().parent / "results"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def open_peer(factory: Callable[[], peers.Peer], report: dict[str, Any]) -> peers.Peer | None:
    try:
        return factory()
    except peers.Missing as exc:
        report.setdefault("missing", {})[str(exc).split()[0]] = str(exc)
        log(f"  skipped: {exc}")
        return None


def overhead(n: int, report: dict[str, Any]) -> dict[str, Any]:
    """1. Per-call overhead of a trivial tool in a reused worker."""
    out: dict[str, Any] = {}
    factories = [
        peers.InProcess,
        peers.RawPipe,
        peers.Threads,
        peers.Processes,
        peers.Pebble,
        peers.MultiprocessPool,
        peers.Ours,
    ]
    for factory in factories:
        peer = open_peer(factory, report)
        if peer is None:
            continue
        try:
            for i in range(min(200, n)):
                assert peer.call(peers.echo, i) == i
            samples = []
            for i in range(n):
                took, value = peers.timed(lambda i=i, peer=peer: peer.call(peers.echo, i))
                assert value == i, (peer.name, value, i)
                samples.append(took)
            out[peer.name] = summarize(samples).as_dict()
        finally:
            peer.close()
    sub = isolation.Command()
    out[sub.name] = _time_calls(lambda i: sub.call(peers.echo, i), max(2, n // 500), 1e6)
    return out


def fresh(n: int, report: dict[str, Any]) -> dict[str, Any]:
    """2. A fresh process for every call: ours isolated, the isolation peers, and
    processes without isolation."""
    out: dict[str, Any] = {}
    ours = peers.Ours(reuse=False)
    try:
        ours.wait_spares(2)
        out["sandboxed-agent (zygote fork)"] = _time_calls(lambda i: ours.call(peers.echo, i), n)
        # As an agent calls: a model turn between calls (far longer than this pause),
        # so the spare made after one call is ready for the next.
        out[SPACED] = _time_calls(lambda i: ours.call(peers.echo, i), n, pause=PAUSE_S)
    finally:
        ours.close()
    for factory in isolation.PEERS:
        peer = open_peer(factory, report)
        if peer is None:
            continue
        try:
            calls = max(2, n // (5 * factory.slow))
            out[peer.name] = _time_calls(lambda i, peer=peer: peer.call(peers.echo, i), calls)
            if peer.name == "bubblewrap":
                out[f"bubblewrap, {SPACED_LABEL}"] = _time_calls(
                    lambda i, peer=peer: peer.call(peers.echo, i), calls, pause=PAUSE_S
                )
        finally:
            peer.close()
    out["os.fork from the orchestrator"] = _time_calls(
        lambda i: peers.fork_per_call(peers.echo, i), n
    )
    out["multiprocess forkserver"] = _time_calls(
        lambda i: peers.process_per_call("forkserver")(peers.echo, i), max(2, n // 10)
    )
    out["multiprocess spawn"] = _time_calls(
        lambda i: peers.process_per_call("spawn")(peers.echo, i), max(2, n // 20)
    )
    return out


PAUSE_S = 0.05
SPACED_LABEL = f"calls {PAUSE_S * 1000:.0f} ms apart"
SPACED = f"sandboxed-agent (zygote fork), {SPACED_LABEL}"


def _time_calls(
    fn: Callable[[int], int], n: int, scale: float = 1e3, pause: float = 0.0
) -> dict[str, float]:
    samples = []
    for i in range(n):
        if pause:
            time.sleep(pause)  # between calls, not timed
        took, value = peers.timed(lambda i=i: fn(i))
        assert value == i
        samples.append(took)
    return summarize(samples, scale).as_dict()


def kills(reps: int, timeout: float, report: dict[str, Any]) -> dict[str, Any]:
    """3 and 4. Overshoot past a 100 ms deadline, survivors, and the next call after."""
    out: dict[str, Any] = {}
    for factory in (
        peers.Ours,
        peers.Pebble,
        peers.Processes,
        peers.MultiprocessPool,
        peers.Threads,
        *isolation.PEERS,
    ):
        peer = open_peer(factory, report)
        if peer is None:
            continue
        began = time.perf_counter()
        try:
            runs = max(1, reps // _slowness(peer))
            out[peer.name] = {
                "kills": peer.kills,
                **{
                    variant: _kill_runs(peer, grandchild, runs, timeout)
                    for variant, grandchild in (("plain", False), ("grandchild", True))
                },
            }
        finally:
            threads_before = threading.active_count()
            peer.close()
            kill_grandchildren()
            out[peer.name]["threads_left"] = max(0, threads_before - threading.active_count())
            log(f"  {peer.name}: {time.perf_counter() - began:.1f} s")
    return out


def _kill_runs(peer: peers.Peer, grandchild: bool, reps: int, timeout: float) -> dict[str, Any]:
    overshoot, recovery, survivors = [], [], 0
    for i in range(reps):
        before = set(peer.pids())
        start = time.perf_counter()
        deadline = peer.call_with_timeout(grandchild, timeout)  # a command peer's own
        end = time.perf_counter()
        overshoot.append(max(0.0, end - (start + timeout if deadline is None else deadline)))
        if not peer.kills:
            survivors += 1  # its timeout only stops the waiting: the hung tool runs on
        else:
            # As for the marked grandchildren: what is still running GONE_WAIT_S after
            # the call (a killed worker's kernel teardown may outlast the call).
            left = [p for p in before if _running(p) and p not in peer.pids()]
            end = time.monotonic() + GONE_WAIT_S
            while left and time.monotonic() < end:
                time.sleep(0.005)
                left = [p for p in left if _running(p)]
            survivors += len(left)
            survivors += len(peer.survivors())
        survivors += len(grandchildren(GONE_WAIT_S))
        kill_grandchildren()
        if peer.kills and peer.reused:
            rec, value = peers.timed(lambda i=i: peer.call(peers.echo, i))
            assert value == i
            recovery.append(rec)
    result: dict[str, Any] = {
        "overshoot_ms": summarize(overshoot, 1e3).as_dict(),
        "survivors": survivors,
        "calls": reps,
    }
    if recovery:
        result["recovery_ms"] = summarize(recovery, 1e3).as_dict()
    return result


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def throughput(n: int, report: dict[str, Any]) -> dict[str, Any]:
    """5. Calls per second with as many workers as cores, trivial and 1 ms CPU tools."""
    from concurrent.futures import ThreadPoolExecutor

    workers = os.cpu_count() or 2
    out: dict[str, Any] = {}
    for factory in (
        peers.Ours,
        peers.Processes,
        peers.Pebble,
        peers.MultiprocessPool,
        peers.Threads,
    ):
        peer = open_peer(lambda f=factory: f(workers), report)
        if peer is None:
            continue
        try:
            row = {}
            for fn in (peers.echo, peers.spin_1ms):
                with ThreadPoolExecutor(workers * 2) as clients:
                    start = time.perf_counter()
                    values = list(
                        clients.map(lambda i, fn=fn, peer=peer: peer.call(fn, i), range(n))
                    )
                    took = time.perf_counter() - start
                assert values == list(range(n))
                row[fn.__name__] = round(n / took)
            out[peer.name] = row
        finally:
            peer.close()
    return out


def throughput_fresh(n: int, report: dict[str, Any]) -> dict[str, int]:
    """5b. Fresh isolated calls per second of a trivial tool, as many at once as cores
    (twice as many callers)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = os.cpu_count() or 2
    out: dict[str, int] = {}
    factories: list[Callable[[], peers.Peer]] = [
        lambda: peers.Ours(workers, reuse=False),
        *isolation.PEERS,
    ]
    for factory in factories:
        peer = open_peer(factory, report)
        if peer is None:
            continue
        try:
            calls = max(2, n // _slowness(peer))
            with ThreadPoolExecutor(workers * 2) as clients:
                start = time.perf_counter()
                values = list(
                    clients.map(lambda i, peer=peer: peer.call(peers.echo, i), range(calls))
                )
                took = time.perf_counter() - start
            assert values == list(range(calls))
            out[peer.name] = round(calls / took)
        finally:
            peer.close()
    return out


def _slowness(peer: peers.Peer) -> int:
    return peer.slow if isinstance(peer, isolation.Command) else 1


def memory(report: dict[str, Any]) -> dict[str, Any]:
    """6. Unique memory of an idle worker and of a pool of 8."""
    out: dict[str, Any] = {}
    one = peers.Ours(workers=1, spares=1)
    try:
        one.wait_spares(1)
        template, *workers = one.pids()
        out["sandboxed-agent idle worker MiB"] = uss_mib(workers[:1])
        out["sandboxed-agent template MiB"] = uss_mib([template])
    finally:
        one.close()
    eight = peers.Ours(workers=8, spares=8)
    try:
        eight.wait_spares(8)
        out["sandboxed-agent pool of 8 MiB"] = uss_mib(eight.pids())
    finally:
        eight.close()
    for factory in (peers.Processes, peers.Pebble, peers.MultiprocessPool):
        peer = open_peer(lambda f=factory: f(8), report)
        if peer is None:
            continue
        try:
            for i in range(64):
                peer.call(peers.echo, i)  # started and warm, as ours are
            out[f"{peer.name}(8) MiB"] = uss_mib(peer.pids())
        finally:
            peer.close()
    return out


HOSTILE_EXPRESSIONS = [
    "9**9**9",
    "10**10**10",
    "(2**1000)**1000",
    "2**4096 * 2**4096",
    "(" * 64 + "1" + ")" * 64,
    "(" * 1000 + "1" + ")" * 1000,
    "1" * 100_000,
    "-" * 999 + "1",
    "1+" * 499 + "1",
    "9" * 999,
    "10**1232 // 7",
    "2.0**100000",
    "(10**1000)**0.5",
]


def calculator() -> dict[str, Any]:
    """7. The slowest answer over hostile expressions (in-process: the tool's own cost)."""
    from tools.calculator import CalculationError, calculate

    worst, slowest = 0.0, ""
    for expression in HOSTILE_EXPRESSIONS:
        start = time.perf_counter()
        try:
            calculate(expression)
        except CalculationError:
            pass
        took = time.perf_counter() - start
        if took > worst:
            worst, slowest = took, expression[:30]
    return {
        "slowest_ms": round(worst * 1e3, 3),
        "slowest_input": slowest,
        "inputs": len(HOSTILE_EXPRESSIONS),
    }


def _recorder_class() -> type:
    from agent.audit import Trace

    class LatencyRecorder(Trace):
        """Keeps each model call's latency instead of writing a file."""

        def __init__(self, path: None) -> None:
            super().__init__(path)
            self.seen: list[float] = []

        def emit(self, event: Any) -> None:
            if event.event == "model_call":
                self.seen.append(event.latency_ms / 1000)

    return LatencyRecorder


def agent_step(runs: int) -> dict[str, Any]:
    """8. What the orchestrator adds to one model turn with one tool call: the run's
    wall time minus the model calls' own latency (HTTP to a loopback scripted server)."""
    from agent.loop import Agent
    from agent.model import ModelClient
    from agent.replay import ScriptedModelServer, call, say
    from policies import load_policy
    from sandbox import Pool
    from tools import Registry

    _LatencyRecorder = _recorder_class()
    registry = Registry.default()
    registry.load(peers.BENCH_TOOLS)
    policy = load_policy()
    overheads, latencies = [], []
    with Pool(policy, registry=registry, size=1) as pool:
        for i in range(runs):
            script = [call(("echo", {"x": i})), say(str(i))]
            with ScriptedModelServer(script) as server:
                model = ModelClient(model="bench", base_url=server.base_url, api_key="bench")
                recorder = _LatencyRecorder(None)
                agent = Agent(pool, policy, model, trace=recorder)
                start = time.perf_counter()
                result = agent.run("echo")
                took = time.perf_counter() - start
            assert result.answer == str(i), result
            overheads.append(took - sum(recorder.seen))
            latencies.append(sum(recorder.seen) / len(recorder.seen))
    return {
        "orchestrator_ms": summarize(overheads, 1e3).as_dict(),
        "model_call_ms": summarize(latencies, 1e3).as_dict(),
    }


def machine() -> dict[str, Any]:
    return {
        "date": dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
    }


def _load_line(report: dict[str, Any]) -> list[str]:
    load = report.get("load")
    if not load:
        return []
    parts = ", ".join(f"{name} {value:g}" for name, value in load.items())
    return [
        "",
        f"Load average (1 min, {report['machine']['cpus']} CPUs) as each part began: {parts}.",
    ]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpus']} CPUs, Python {m['python']}, Linux {m['kernel']} "
        f"({report['mode']} mode).",
        *_load_line(report),
        "",
        "**1. Per-call overhead, reused worker (µs)**",
        "",
        "| runner | median | p90 | p99 | max | ours is faster by (median) |",
        "|---|---|---|---|---|---|",
    ]
    ours = report["overhead"]["sandboxed-agent"]["median"]
    for name, s in report["overhead"].items():
        floors = ("sandboxed-agent", "in-process call", "raw pipe round trip")
        compared = ratio(s["median"], ours) if name not in floors else "-"
        lines.append(
            f"| {name} | {s['median']} | {s['p90']} | {s['p99']} | {s['max']} | {compared} |"
        )
    lines += [
        "",
        "**2. Fresh process per call (ms); the isolation peers run `python -S -c 'print(i)'`**",
        "",
        "| method | median | p90 | p99 | ours is faster by (median) |",
        "|---|---|---|---|---|",
    ]
    fresh_ours = report["fresh"]["sandboxed-agent (zygote fork)"]["median"]
    spaced = report["fresh"].get(SPACED, {}).get("median")
    for name, s in report["fresh"].items():
        compared = "-" if name.startswith("sandboxed-agent") else ratio(s["median"], fresh_ours)
        if name == f"bubblewrap, {SPACED_LABEL}" and spaced:
            compared = f"{ratio(s['median'], spaced)} (against ours {SPACED_LABEL})"
        lines.append(f"| {name} | {s['median']} | {s['p90']} | {s['p99']} | {compared} |")
    lines += [
        "",
        "**3–4. Timeout of 100 ms on a hung tool: overshoot past the deadline, "
        "survivors, next call (ms)**",
        "",
        "| runner | stops the work | overshoot median / p99 | survivors | "
        "with grandchild: overshoot median / p99 | survivors | next call median |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, k in report["kills"].items():
        plain, gc = k["plain"], k["grandchild"]
        rec = plain.get("recovery_ms", {}).get("median", "-")
        lines.append(
            f"| {name} | {'yes' if k['kills'] else 'no'} | {plain['overshoot_ms']['median']} / "
            f"{plain['overshoot_ms']['p99']} | {plain['survivors']}/{plain['calls']} | "
            f"{gc['overshoot_ms']['median']} / {gc['overshoot_ms']['p99']} | "
            f"{gc['survivors']}/{gc['calls']} | {rec} |"
        )
    lines += [
        "",
        "**5. Throughput with one worker per core (calls/s)**",
        "",
        "| runner | trivial | 1 ms CPU |",
        "|---|---|---|",
    ]
    for name, t in report["throughput"].items():
        lines.append(f"| {name} | {t['echo']} | {t['spin_1ms']} |")
    lines += [
        "",
        "**5b. Fresh isolated calls per second, trivial tool, one per core**",
        "",
        "| runner | calls/s | ours is faster by |",
        "|---|---|---|",
    ]
    fresh_rate = report["throughput_fresh"].get("sandboxed-agent", 0)
    for name, rate in report["throughput_fresh"].items():
        compared = "-" if name == "sandboxed-agent" else ratio(fresh_rate, rate)
        lines.append(f"| {name} | {rate} | {compared} |")
    lines += ["", "**6. Memory (unique set size)**", ""]
    lines += [f"- {k}: {v}" for k, v in report["memory"].items()]
    c = report["calculator"]
    lines += [
        "",
        f"**7. Calculator under attack:** slowest of {c['inputs']} hostile inputs "
        f"answered in {c['slowest_ms']} ms (`{c['slowest_input']}`).",
        "",
        _agent_step_line(report["agent_step"]),
    ]
    lines += ["", *targets(report)]
    if report.get("missing"):
        lines += ["", "Missing peers: " + "; ".join(report["missing"].values())]
    return "\n".join(lines) + "\n"


def targets(report: dict[str, Any]) -> list[str]:
    """Issue 18's targets against this run's own figures (ratios in the same run)."""
    fresh_ours = report["fresh"]["sandboxed-agent (zygote fork)"]
    bwrap = report["fresh"].get("bubblewrap")
    spaced = report["fresh"].get(SPACED)
    bwrap_spaced = report["fresh"].get(f"bubblewrap, {SPACED_LABEL}")
    warm = report["overhead"]["sandboxed-agent"]["median"]
    floor = report["overhead"]["raw pipe round trip"]["median"]
    kill = report["kills"]["sandboxed-agent"]["grandchild"]
    rate = report["throughput_fresh"].get("sandboxed-agent", 0)
    rows = [
        (
            "fresh isolated call, median",
            f"{fresh_ours['median']} ms",
            "≤ 1 ms",
            fresh_ours["median"] <= 1,
        ),
        (
            "fresh call against bubblewrap (median)",
            ratio(bwrap["median"], fresh_ours["median"]) if bwrap else "not measured",
            "≥ 10x",
            bool(bwrap) and bwrap["median"] >= 10 * fresh_ours["median"],
        ),
        ("fresh isolated call, p99", f"{fresh_ours['p99']} ms", "≤ 3 ms", fresh_ours["p99"] <= 3),
    ]
    if spaced:
        rows += [
            (
                f"fresh isolated call, median, {SPACED_LABEL}",
                f"{spaced['median']} ms",
                "≤ 1 ms",
                spaced["median"] <= 1,
            ),
            (
                f"the same against bubblewrap {SPACED_LABEL} (median)",
                ratio(bwrap_spaced["median"], spaced["median"]) if bwrap_spaced else "not measured",
                "≥ 10x",
                bool(bwrap_spaced) and bwrap_spaced["median"] >= 10 * spaced["median"],
            ),
            (
                f"fresh isolated call, p99, {SPACED_LABEL}",
                f"{spaced['p99']} ms",
                "≤ 3 ms",
                spaced["p99"] <= 3,
            ),
        ]
    rows += [
        (
            "trusted warm call against a raw pipe round trip (median)",
            f"{ratio(warm, floor)} ({warm} / {floor} µs)",
            "≤ 3x",
            warm <= 3 * floor,
        ),
        (
            "kill past a 100 ms deadline with a setsid grandchild, p99",
            f"{kill['overshoot_ms']['p99']} ms, {kill['survivors']} survivors",
            "≤ 5 ms, 0 survivors",
            kill["overshoot_ms"]["p99"] <= 5 and kill["survivors"] == 0,
        ),
        ("fresh isolated calls per second, trivial tool", str(rate), "≥ 1,000", rate >= 1000),
    ]
    lines = [
        "**Targets (issue 18)**",
        "",
        "| figure | this run | target | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {'yes' if ok else 'no'} |" for a, b, c, ok in rows]
    return lines


def _agent_step_line(step: dict[str, Any]) -> str:
    ours, model = step["orchestrator_ms"], step["model_call_ms"]
    return (
        f"**8. Agent step overhead:** the orchestrator adds {ours['median']} ms (median; p90 "
        f"{ours['p90']} ms) to a run of two model turns and one tool call, beyond the model "
        f"calls themselves ({model['median']} ms each over loopback HTTP through the `openai` "
        "client, the server's own time included)."
    )


SIZES = {
    "full": dict(
        overhead=10_000,
        fresh=1000,
        kills=30,
        throughput=5000,
        throughput_fresh=2000,
        agent_step=200,
    ),
    "quick": dict(
        overhead=1000, fresh=100, kills=3, throughput=300, throughput_fresh=200, agent_step=20
    ),
    "smoke": dict(overhead=40, fresh=10, kills=1, throughput=40, throughput_fresh=20, agent_step=2),
}
"""Samples per step; an isolation peer as slow as sandbox-runtime gets fewer."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="small samples, about a minute")
    sizes.add_argument(
        "--smoke",
        action="store_true",
        help="a few calls of each, to check that it runs (the tests do); figures mean nothing",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    n = SIZES[mode]
    report: dict[str, Any] = {"mode": mode, "machine": machine(), "seconds": {}}
    steps = [
        ("overhead", lambda: overhead(n["overhead"], report)),
        ("fresh", lambda: fresh(n["fresh"], report)),
        ("kills", lambda: kills(n["kills"], 0.1, report)),
        ("throughput", lambda: throughput(n["throughput"], report)),
        ("throughput_fresh", lambda: throughput_fresh(n["throughput_fresh"], report)),
        ("memory", lambda: memory(report)),
        ("calculator", calculator),
        ("agent_step", lambda: agent_step(n["agent_step"])),
    ]
    for name, step in steps:
        log(f"{name} ...")
        # A shared machine: each part's figures read against the load they met.
        report.setdefault("load", {})[name] = round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        report[name] = step()
        report["seconds"][name] = round(time.perf_counter() - start, 1)
    text = render(report)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "latest.md").write_text(text)
    log(f"wrote {args.output / 'latest.json'} and latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
