"""`python -m bench.real_model --base-url URL --model NAME [--runs N]`: a real model on
the worked example and the shipped eval suite, measured.

    python -m bench.real_model --base-url http://127.0.0.1:8089/v1 \\
        --model qwen2.5-coder-1.5b-instruct --runs 10

Runs the worked example ("Can I still return order 12345?", the suite's first case,
judged by its checks: the answer and the three lookups on the path) `--runs` times,
then every case of the suite `--suite-runs` times, with the suite's policy and the
model's default sampling; only the wall budget is raised (`--max-wall-s`), since a
CPU shared with other work is slow and that is not what is measured. Writes
`bench/results/real_model.md` (the README shows it) and `real_model.json`, each run's
trace beside them. It is a benchmark: it needs a
live endpoint and minutes per run on a CPU, so it never runs in CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from agent.audit import read_trace
from agent.evals.runner import CaseReport, RunReport, SuiteReport, live_model, run_suite
from agent.evals.suite import Suite, load_suite
from agent.model import ModelClient
from agent.terminal import safe

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SUITE = ROOT / "evals" / "worked_example.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_model", allow_abbrev=False)
    parser.add_argument("--base-url", required=True, help="the OpenAI-compatible endpoint")
    parser.add_argument("--model", required=True, help="the model name the server knows")
    parser.add_argument(
        "--api", choices=["chat", "responses"], default="chat", help="the API to reach it by"
    )
    parser.add_argument("--runs", type=int, default=10, help="runs of the worked example")
    parser.add_argument("--suite-runs", type=int, default=3, help="runs of each suite case")
    parser.add_argument("--suite", default=str(SUITE), help="the eval suite (default: shipped)")
    parser.add_argument("--out", default=str(RESULTS), help="where the report goes")
    parser.add_argument("--label", default="", help="a note for the report's title")
    parser.add_argument(
        "--max-wall-s",
        type=float,
        default=1800.0,
        help="each run's wall budget and request timeout (default 1800: a loaded CPU is "
        "slow, and its slowness is not what is measured)",
    )
    args = parser.parse_args(argv)
    for flag, value in (("--runs", args.runs), ("--suite-runs", args.suite_runs)):
        if not 0 <= value <= 100:
            parser.error(f"{flag}: from 0 to 100 (got {value})")

    from agent.cli import load_setup  # the command line's own checks of suite and policy

    if args.max_wall_s <= 0:
        parser.error(f"--max-wall-s: above 0 (got {args.max_wall_s})")
    suite = load_suite(args.suite)
    policy_file = str(suite.policy_path) if suite.policy_path else None
    registry, policy = load_setup(suite.tool_sources(), policy_file)
    run = policy.run.model_copy(
        update={
            "model": args.model,
            "api": args.api,
            "max_wall_s": args.max_wall_s,
            "request_timeout_s": args.max_wall_s,
        }
    )
    policy = policy.model_copy(update={"run": run})
    client = ModelClient(
        model=args.model,
        base_url=args.base_url,
        api_key=os.environ.get("OPENAI_API_KEY"),
        timeout_s=policy.run.request_timeout_s,
        max_retries=policy.run.max_retries,
        max_output_tokens=policy.run.max_output_tokens,
        parallel_tool_calls=policy.run.parallel_tool_calls,
        required_as=policy.run.required_as,
        tools_sent=policy.run.tools_sent,
        api=args.api,
    )
    out = Path(args.out)
    traces = out / "real_model_traces"
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()

    def progress(case: str, result: RunReport) -> None:
        verdict = "pass" if result.ok else "FAIL"
        print(
            f"  {verdict}  {safe(case)} #{result.run}: {result.steps} steps, "
            f"{result.wall_s:.0f} s ({result.reason})",
            file=sys.stderr,
            flush=True,
        )

    reports: dict[str, SuiteReport] = {}
    worked = suite.model_copy(update={"cases": suite.cases[:1]})
    parts: list[tuple[str, Suite, int]] = [
        ("worked_example", worked, args.runs),
        ("suite", suite, args.suite_runs),
    ]
    for name, part, runs in parts:
        if runs:
            print(f"{name}: {runs} run(s) of each case", file=sys.stderr, flush=True)
            reports[name] = run_suite(
                part,
                registry,
                policy,
                live_model(client),
                traces / name,
                runs=runs,
                secrets=[os.environ.get("OPENAI_API_KEY", "")],
                progress=progress,
            )
    data = {
        "measured": started.isoformat(timespec="seconds"),
        "label": args.label,
        "model": args.model,
        "base_url": args.base_url,
        "server": describe_server(args.base_url),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        "suite": str(Path(args.suite).resolve().relative_to(ROOT))
        if Path(args.suite).resolve().is_relative_to(ROOT)
        else args.suite,
        "policy": policy.source,
        "api": args.api,
        # Other work on the machine slows the server; the figures are read against it.
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "results": {name: summary(report) for name, report in reports.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_model.json").write_text(json.dumps(data, indent=2) + "\n")
    text = render(data)
    (out / "real_model.md").write_text(text)
    print(text)
    return 0


def describe_server(base_url: str) -> str:
    """What the endpoint says it is: llama.cpp's `/props` build, or `/models`' owner."""
    root = base_url.rstrip("/").removesuffix("/v1")
    for url, read in ((f"{root}/props", _llama_props), (f"{base_url}/models", _models)):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                said = read(json.load(response))
        except (OSError, ValueError):
            continue
        if said:
            return said
    return "unknown"


def _llama_props(data: Any) -> str:
    if not isinstance(data, dict) or "build_info" not in data:
        return ""
    said = ["llama.cpp llama-server"]
    if data["build_info"] != "b0-unknown":  # a build from a source tarball has no number
        said[0] += f" {data['build_info']}"
    if data.get("model_ftype"):
        said.append(f"weights {data['model_ftype']}")
    ctx = (data.get("default_generation_settings") or {}).get("n_ctx")
    if ctx:
        said.append(f"context {ctx}")
    return ", ".join(said)


def _models(data: Any) -> str:
    models = data.get("data") if isinstance(data, dict) else None
    if not models or not isinstance(models[0], dict):
        return ""
    return f"serves {models[0].get('id')} (owned by {models[0].get('owned_by', '?')})"


def summary(report: SuiteReport) -> dict[str, Any]:
    runs = report.all_runs
    return {
        "runs": len(runs),
        "ok": sum(r.ok for r in runs),
        "outcome": sum(r.outcome_ok for r in runs),
        "path": sum(r.path_ok for r in runs),
        "ended": dict(Counter(r.reason for r in runs)),
        "guardrails": guardrails(runs),
        "cases": [_case(c) for c in report.cases],
    }


def _case(case: CaseReport) -> dict[str, Any]:
    runs = case.runs
    n = len(runs) or 1
    return {
        "name": case.name,
        "runs": len(runs),
        "ok": sum(r.ok for r in runs),
        "outcome": sum(r.outcome_ok for r in runs),
        "path": sum(r.path_ok for r in runs),
        "mean_steps": sum(r.steps for r in runs) / n,
        "mean_tokens": sum(r.tokens for r in runs) / n,
        "mean_wall_s": sum(r.wall_s for r in runs) / n,
        "failures": [f for r in runs for f in r.failures],
        "answers": [r.answer for r in runs],
    }


def guardrails(runs: list[RunReport]) -> dict[str, int]:
    """What the small-model guardrails did over these runs, from their traces."""
    seen: Counter[str] = Counter()
    for run in runs:
        for event in read_trace(run.trace):
            if event["event"] == "model_call":
                if event.get("text_calls"):
                    seen["turns with calls read from text"] += 1
                for repair in event.get("text_call_repairs") or []:
                    seen[f"text calls repaired ({repair})"] += 1
                if event.get("steered"):
                    seen[f"steered ({event['steered']})"] += 1
                if event.get("follow_ups"):
                    seen["asked to call next ([tools] then)"] += 1
                if event.get("tool_choice_refused"):
                    seen[f"tool_choice refused ({event['tool_choice_refused']})"] += 1
            elif event["event"] == "tool_call":
                for repair in event.get("repairs") or []:
                    seen[f"repaired ({repair})"] += 1
                if event.get("error_kind"):
                    seen[f"tool errors ({event['error_kind']})"] += 1
    return dict(sorted(seen.items()))


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Model `{data['model']}` at {data['base_url']} ({data['server']}), default sampling;",
        f"measured {data['measured']} on {data['machine']}; suite `{data['suite']}`,",
        f"policy `{Path(data['policy']).name}`, API `{data.get('api', 'chat')}`."
        f"{' ' + data['label'] if data['label'] else ''}",
    ]
    load = data.get("load_average")
    if load:
        lines.append(
            "Load average (1, 5, 15 min) at the start "
            + ", ".join(f"{x:.1f}" for x in load["start"])
            + "; at the end "
            + ", ".join(f"{x:.1f}" for x in load["end"])
            + "."
        )
    lines += [
        "",
    ]
    titles = {"worked_example": "The worked example", "suite": "The shipped suite"}
    for name, result in data["results"].items():
        n = result["runs"] or 1
        lines += [
            f"**{titles[name]}**: {result['ok']}/{result['runs']} right on outcome and "
            f"path ({100 * result['ok'] / n:.0f}%); outcome {result['outcome']}/{result['runs']}"
            f" ({100 * result['outcome'] / n:.0f}%), path {result['path']}/{result['runs']}"
            f" ({100 * result['path'] / n:.0f}%).",
            "",
            "| case | runs | outcome | path | steps | tokens | time per run (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for case in result["cases"]:
            lines.append(
                f"| {case['name']} | {case['runs']} | {case['outcome']}/{case['runs']} | "
                f"{case['path']}/{case['runs']} | {case['mean_steps']:.1f} | "
                f"{case['mean_tokens']:.0f} | {case['mean_wall_s']:.1f} |"
            )
        ended = ", ".join(f"{k} {v}" for k, v in sorted(result["ended"].items()))
        did = ", ".join(f"{k} {v}" for k, v in result["guardrails"].items()) or "nothing"
        lines += ["", f"Runs ended: {ended}. The guardrails: {did}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
