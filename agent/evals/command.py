"""`sandboxed-agent eval SUITE`: the command line of the evaluation harness."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxedAgentError

from ..model import ModelClient
from ..runner import UsageError, check_approve, model_client, own_names, with_run_overrides
from ..scrubbing import scrub
from ..terminal import safe
from .runner import (
    RunReport,
    SuiteReport,
    live_model,
    render_report,
    run_suite,
    scripted_model,
    slug,
)
from .suite import Suite, load_suite


def add_eval_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval", help="run an evaluation suite: checks on answers and paths")
    p.add_argument("suite", help="the suite's TOML file")
    p.add_argument(
        "--scripted",
        action="store_true",
        help="play each case's scripted model turns on a loopback server (no endpoint needed)",
    )
    p.add_argument("--runs", type=int, metavar="N", help="runs per case (default: the suite's)")
    p.add_argument("--case", action="append", default=[], metavar="NAME", help="only this case")
    p.add_argument("--out", metavar="DIR", help="where the report and traces go")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--model", help="model name (default: the policy's [run] model)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL)")
    p.add_argument("--judge-model", metavar="M", help="score each run against its rubric")
    p.add_argument("--judge-base-url", metavar="URL", help="the judge's endpoint")
    p.add_argument("--policy", metavar="FILE", help="overrides the suite's policy")
    p.add_argument("--tools", action="append", default=[], metavar="FILE_OR_MODULE")
    from ..integrations.temporal_command import add_temporal_options  # no Temporal SDK

    add_temporal_options(p)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..cli import load_setup

    try:
        suite = load_suite(args.suite)
    except SandboxedAgentError as exc:
        raise UsageError(str(exc)) from None
    suite = _only(suite, args.case)
    if args.runs is not None and not 1 <= args.runs <= 100:
        raise UsageError(f"--runs: must be from 1 to 100 (got {args.runs})")
    policy_file = args.policy or (str(suite.policy_path) if suite.policy_path else None)
    in_suite = tuple((f"{args.suite}: tools:", source) for source in suite.tool_sources())
    registry, policy = load_setup(args.tools, policy_file, named=in_suite)
    for case in suite.cases:
        where = f"{args.suite}: case {case.name!r}"
        check_approve(case.approve, registry.names(), f"{where}: approve")
        # A typo in a path check never fails (must_not_call) or always does (must_call).
        checks = case.path
        named = {
            "must_call": checks.must_call,
            "must_attempt": checks.must_attempt,
            "must_not_call": checks.must_not_call,
            "must_ask_approval": checks.must_ask_approval,
            "must_return": [r.tool for r in checks.must_return],
        }
        for key, names in named.items():
            check_approve(own_names(names, policy), registry.names(), f"{where}: path.{key}")
    policy = with_run_overrides(policy, args)
    if args.temporal:
        return _eval_on_temporal(args, suite, registry, policy)
    if args.scripted:
        missing = [c.name for c in suite.cases if not c.script]
        if missing:
            raise UsageError(f"--scripted needs a script in every case; none in: {missing}")
        model_for = scripted_model(policy)
    else:
        model_for = live_model(model_client(policy, args.base_url))
    judge = _judge_client(args) if args.judge_model else None
    out = Path(args.out or f"eval-results/{slug(suite.name)}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:  # before any run: a report that cannot be written is a usage error, not a traceback
        (out / "traces").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"--out {out}: cannot make the report's directory here: {why}") from None

    report = run_suite(
        suite,
        registry,
        policy,
        model_for,
        out,
        runs=args.runs,
        judge_client=judge,
        secrets=[os.environ.get("OPENAI_API_KEY", "")],
        scripted=args.scripted,
        progress=_progress,
    )
    return _write_report(report, out, args.json)


def _progress(case: str, result: RunReport) -> None:
    verdict = "pass" if result.ok else "FAIL"
    print(f"  {verdict}  {safe(case)} #{result.run}", file=sys.stderr, flush=True)


def _write_report(report: SuiteReport, out: Path, as_json: bool) -> int:
    data = report.as_json()
    text = scrub(json.dumps(data, indent=2))  # the judge's reasons, the answers: any text
    (out / "report.json").write_text(text + "\n")
    if as_json:
        print(text)
    else:
        print(scrub(render_report(report)))
        print(f"\nReport: {safe(out / 'report.json')}; traces: {safe(out / 'traces')}")
    if report.interrupted:
        done = len(report.all_runs)
        print(
            f"sandboxed-agent: interrupted; the report holds the {done} run(s) that finished",
            file=sys.stderr,
        )
        return 130
    return 0 if report.passed else 1


def _eval_on_temporal(args: argparse.Namespace, suite: Suite, registry: Any, policy: Any) -> int:
    from ..integrations.temporal_command import check_served, target
    from ..integrations.temporal_connect import connect_options
    from ..integrations.temporal_eval import run_suite_temporal

    address = target(args.temporal)
    check_served(policy)
    if args.scripted or args.base_url:
        raise UsageError(
            "--temporal: the model is the workers' own; start them with --base-url "
            "(a scripted one: python -m agent.evals.scripted SUITE) instead of "
            "--scripted or --base-url here"
        )
    judge = _judge_client(args) if args.judge_model else None
    out = Path(args.out or f"eval-results/{slug(suite.name)}-{time.strftime('%Y%m%d-%H%M%S')}")
    report = run_suite_temporal(
        suite,
        registry.names(),
        [*suite.tool_sources(), *args.tools],
        policy,
        out,
        address=address,
        namespace=args.namespace,
        connect_options=connect_options(args),
        task_queue=args.task_queue,
        tool_queue=args.tool_queue,
        runs=args.runs,
        judge_client=judge,
        progress=_progress,
    )
    return _write_report(report, out, args.json)


def _only(suite: Suite, names: list[str]) -> Suite:
    if not names:
        return suite
    known = [c.name for c in suite.cases]
    for name in names:
        if name not in known:
            raise UsageError(f"--case {name!r}: no such case (cases: {', '.join(known)})")
    return suite.model_copy(update={"cases": [c for c in suite.cases if c.name in names]})


def _judge_client(args: argparse.Namespace) -> ModelClient:
    base_url = args.judge_base_url or args.base_url or os.environ.get("OPENAI_BASE_URL")
    api_key = os.environ.get("OPENAI_API_KEY")
    if not base_url and not api_key:
        raise UsageError(
            "--judge-model needs an endpoint: --judge-base-url, OPENAI_BASE_URL or OPENAI_API_KEY"
        )
    return ModelClient(model=args.judge_model, base_url=base_url, api_key=api_key)
