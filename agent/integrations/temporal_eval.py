"""`eval SUITE --temporal HOST:PORT`: every case x run as its own workflow, at once.

The workflows spread over whatever workers serve the task queue; each run's trace
comes back with its result and is written where a local eval writes it, then checked
and judged by the same code (`agent.evals.runner._judge_run`), so the report is the
same as a local eval's. The model is the workers' (their endpoint and key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies import Policy

from ..evals.runner import CaseReport, RunReport, SuiteReport, _judge_run, slug
from ..evals.suite import Suite
from ..model import ModelClient
from .temporal_command import (
    STUCK_EVERY_S,
    TemporalFailed,
    _one_line,
    connect,
    failure_line,
    new_run_id,
    outcome_of,
    write_trace,
)
from .temporal_plan import RUN_WORKFLOW, RunOutcome, RunPlan


def run_suite_temporal(
    suite: Suite,
    tool_names: list[str],
    sources: list[str],
    policy: Policy,
    out_dir: Path,
    *,
    address: str,
    namespace: str,
    connect_options: dict[str, Any] | None = None,
    task_queue: str,
    tool_queue: str | None = None,
    runs: int | None = None,
    judge_client: ModelClient | None = None,
    progress: Callable[[str, RunReport], None] | None = None,
) -> SuiteReport:
    traces = out_dir / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[int, Any, int, Path, RunPlan]] = []
    for number, case in enumerate(suite.cases, 1):
        for i in range(runs or suite.runs_of(case)):
            path = traces / f"{number:02d}-{slug(case.name)}-{i + 1}.jsonl"
            path.unlink(missing_ok=True)
            plan = RunPlan.of(
                policy,
                tool_names,
                [*policy.load_tools, *sources],
                case.task,
                approve=list(case.approve),
                tool_queue=tool_queue,
                ask=False,
            )
            jobs.append((number, case, i, path, plan))
    plans = [j[4] for j in jobs]
    outcomes = asyncio.run(_run_all(address, namespace, task_queue, plans, connect_options or {}))
    reports = {number: CaseReport(case.name) for number, case, *_ in jobs}
    for (number, case, i, path, _), outcome in zip(jobs, outcomes, strict=True):
        write_trace(str(path), outcome.events)
        result = _judge_run(case, i + 1, path, judge_client)
        reports[number].runs.append(result)
        if progress:
            progress(case.name, result)
    return SuiteReport(suite.name, policy.run.model, False, list(reports.values()))


async def _run_all(
    address: str, namespace: str, queue: str, plans: list[RunPlan], options: dict[str, Any]
) -> list[RunOutcome]:
    from temporalio.client import WorkflowFailureError
    from temporalio.service import RPCError

    client = await connect(address, namespace, options)
    try:
        handles = [
            await client.start_workflow(
                RUN_WORKFLOW, plan, id=new_run_id(), task_queue=queue, result_type=RunOutcome
            )
            for plan in plans
        ]
        # Each run's workflow task is looked at now and then: some 20 a second at most.
        every_s = max(STUCK_EVERY_S, len(handles) / 20)
        return list(await asyncio.gather(*(outcome_of(h, every_s) for h in handles)))
    except WorkflowFailureError as exc:
        raise TemporalFailed(f"the eval's runs on {address} failed: {failure_line(exc)}") from None
    except RPCError as exc:
        raise TemporalFailed(f"the eval's runs on {address} failed: {_one_line(exc)}") from None
