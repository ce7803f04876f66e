"""Running a suite: every case as many times as asked, each run with its own trace,
then the checks, the optional judge, and the report.

All runs share one sandbox pool. Against a scripted model each run gets a loopback
OpenAI-compatible server playing the case's script; against a real endpoint they share
one client. Either way the agent, the `openai` client and the sandbox are the real ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from policies import Policy
from sandbox import Pool
from tools import Registry

from ..approval import Approver
from ..audit import Trace, read_trace
from ..loop import Agent
from ..model import ModelClient
from ..replay import ScriptedModelServer, Step, call, say
from ..terminal import safe
from .checks import RunFacts, check_outcome, check_path
from .judge import judge
from .suite import Case, Suite, SuiteError

ModelFor = Callable[[Case], AbstractContextManager[ModelClient]]
"""Gives the model client one run of a case talks to."""


@dataclass
class RunReport:
    run: int
    outcome_ok: bool
    path_ok: bool
    failures: list[str]
    reason: str
    answer: str | None
    steps: int
    tokens: int
    cost_usd: float
    wall_s: float
    trace: str
    judge_score: float | None = None
    judge_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome_ok and self.path_ok


@dataclass
class CaseReport:
    name: str
    runs: list[RunReport] = field(default_factory=list)

    def mean(self, what: str) -> float:
        """The mean of a field over the runs (of a check: its pass rate)."""
        return sum(getattr(r, what) for r in self.runs) / len(self.runs) if self.runs else 0.0

    def judged(self) -> float | None:
        scores = [r.judge_score for r in self.runs if r.judge_score is not None]
        return sum(scores) / len(scores) if scores else None

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "runs": len(self.runs),
            "outcome_pass_rate": self.mean("outcome_ok"),
            "path_pass_rate": self.mean("path_ok"),
            "mean_steps": self.mean("steps"),
            "mean_tokens": self.mean("tokens"),
            "mean_cost_usd": self.mean("cost_usd"),
            "mean_wall_s": self.mean("wall_s"),
            "judge_mean_score": self.judged(),
            "results": [asdict(r) for r in self.runs],
        }


@dataclass
class SuiteReport:
    suite: str
    model: str
    scripted: bool
    cases: list[CaseReport]
    interrupted: bool = False
    """Stopped by Ctrl-C: the report holds the runs that finished before it, and the
    run it cut short is left out (its end was the interrupt, not the agent's)."""

    @property
    def all_runs(self) -> list[RunReport]:
        return [r for c in self.cases for r in c.runs]

    @property
    def passed(self) -> bool:
        return not self.interrupted and all(r.ok for r in self.all_runs)

    def as_json(self) -> dict[str, object]:
        runs = self.all_runs
        n = len(runs) or 1
        return {
            "suite": self.suite,
            "model": self.model,
            "scripted": self.scripted,
            "passed": self.passed,
            "interrupted": self.interrupted,
            "overall": {
                "runs": len(runs),
                "outcome_pass_rate": sum(r.outcome_ok for r in runs) / n,
                "path_pass_rate": sum(r.path_ok for r in runs) / n,
                "total_tokens": sum(r.tokens for r in runs),
                "total_cost_usd": sum(r.cost_usd for r in runs),
                "total_wall_s": sum(r.wall_s for r in runs),
            },
            "cases": [c.summary() for c in self.cases],
        }


def scripted_model(policy: Policy) -> ModelFor:
    """Each run of a case talks to a fresh loopback server playing the case's script."""

    @contextmanager
    def model_for(case: Case) -> Iterator[ModelClient]:
        if not case.script:
            raise SuiteError(f"case {case.name!r} has no script, and --scripted needs one")
        with ScriptedModelServer(script_steps(case)) as server:
            yield ModelClient(
                model=policy.run.model,
                base_url=server.base_url,
                api_key=None,
                max_retries=0,
                api=policy.run.api,
            )

    return model_for


def live_model(client: ModelClient) -> ModelFor:
    @contextmanager
    def model_for(case: Case) -> Iterator[ModelClient]:
        yield client

    return model_for


def script_steps(case: Case) -> list[Step]:
    """The case's script as the scripted model's steps; a script that ends with an
    answer says it once more, which a run asked to review it (`[run] review_answer`)
    is given, and one not asked never reaches."""
    steps = []
    for turn in case.script:
        if turn.answer is not None:
            steps.append(say(turn.answer))
        else:
            steps.append(call(*[(c.tool, c.args) for c in turn.calls]))
    if case.script and case.script[-1].answer is not None:
        steps.append(say(case.script[-1].answer))
    return steps


def run_suite(
    suite: Suite,
    registry: Registry,
    policy: Policy,
    model_for: ModelFor,
    out_dir: Path,
    *,
    runs: int | None = None,
    judge_client: ModelClient | None = None,
    secrets: list[str] | None = None,
    scripted: bool = False,
    progress: Callable[[str, RunReport], None] | None = None,
) -> SuiteReport:
    traces = out_dir / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    reports = []
    model_name = policy.run.model
    interrupted = False
    with Pool(policy, registry=registry, **policy.pool_options()) as pool:
        try:
            for number, case in enumerate(suite.cases, 1):
                report = CaseReport(case.name)
                reports.append(report)
                for i in range(runs or suite.runs_of(case)):
                    path = traces / f"{number:02d}-{slug(case.name)}-{i + 1}.jsonl"
                    path.unlink(missing_ok=True)
                    with model_for(case) as client:
                        model_name = client.model
                        trace = Trace(path, secrets=secrets)
                        try:
                            agent = Agent(
                                pool,
                                policy,
                                client,
                                approver=Approver(set(case.approve)),
                                trace=trace,
                            )
                            ended = agent.run(case.task)
                        finally:
                            trace.close()
                    if (ended.reason, ended.message) == ("interrupted", "interrupted"):
                        raise KeyboardInterrupt  # the agent ended its run at Ctrl-C: stop here
                    result = _judge_run(case, i + 1, path, judge_client)
                    report.runs.append(result)
                    if progress:
                        progress(case.name, result)
        except KeyboardInterrupt:
            interrupted = True  # a person stopped the suite: keep what finished
    reports = [r for r in reports if r.runs]
    return SuiteReport(suite.name, model_name, scripted, reports, interrupted)


def _judge_run(case: Case, run: int, path: Path, judge_client: ModelClient | None) -> RunReport:
    facts = RunFacts.from_trace(read_trace(path))
    outcome = check_outcome(case, facts)
    path_failures = check_path(case, facts)
    result = RunReport(
        run=run,
        outcome_ok=not outcome,
        path_ok=not path_failures,
        failures=[f"outcome: {f}" for f in outcome] + [f"path: {f}" for f in path_failures],
        reason=facts.reason,
        answer=facts.answer,
        steps=facts.steps,
        tokens=facts.tokens,
        cost_usd=facts.cost_usd,
        wall_s=facts.wall_s,
        trace=str(path),
    )
    if judge_client is not None and case.rubric:
        verdict = judge(judge_client, case.task, case.rubric, facts)
        result.judge_score, result.judge_reason = verdict.score, verdict.reason
    return result


def render_report(report: SuiteReport) -> str:
    """The report as a terminal table, then each failed run with its reasons and trace."""
    header = (
        f"{'case':<44} {'runs':>4} {'outcome':>8} {'path':>6} {'steps':>6} "
        f"{'tokens':>7} {'cost $':>9} {'time s':>7} {'judge':>6}"
    )
    lines = [
        f"Suite: {safe(report.suite)} (model {safe(report.model)})"
        + (", interrupted: the runs that finished before Ctrl-C" if report.interrupted else ""),
        "",
        header,
        "-" * len(header),
    ]

    def row(name: str, runs: list[RunReport], judged: float | None) -> str:
        n = len(runs) or 1
        outcome = f"{sum(r.outcome_ok for r in runs)}/{len(runs)}"
        path = f"{sum(r.path_ok for r in runs)}/{len(runs)}"
        score = f"{judged:.2f}" if judged is not None else "-"
        return (
            f"{_fit(safe(name), 44):<44} {len(runs):>4} {outcome:>8} {path:>6} "
            f"{sum(r.steps for r in runs) / n:>6.1f} {sum(r.tokens for r in runs) / n:>7.0f} "
            f"{sum(r.cost_usd for r in runs) / n:>9.6f} {sum(r.wall_s for r in runs) / n:>7.2f} "
            f"{score:>6}"
        )

    for case in report.cases:
        lines.append(row(case.name, case.runs, case.judged()))
    lines.append("-" * len(header))
    scores = [c.judged() for c in report.cases if c.judged() is not None]
    overall_judge = sum(scores) / len(scores) if scores else None
    lines.append(row("overall (steps, tokens, cost, time: means)", report.all_runs, overall_judge))
    failed = [(c.name, r) for c in report.cases for r in c.runs if not r.ok]
    if failed:
        lines.append("")
        lines.append("Failed runs:")
        for name, r in failed:
            lines.append(f"  {safe(name)} #{r.run} (trace: {safe(r.trace)})")
            lines.extend(f"    {safe(failure)}" for failure in r.failures)
    judged_runs = [(c.name, r) for c in report.cases for r in c.runs if r.judge_reason]
    if judged_runs:
        lines.append("")
        lines.append("Judge (reported beside the checks, never instead of them):")
        for name, r in judged_runs:
            score = f"{r.judge_score:.2f}" if r.judge_score is not None else "none"
            lines.append(f"  {safe(name)} #{r.run}: {score}: {safe(r.judge_reason)}")
    return "\n".join(lines)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "case"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
