"""`run`, `chat` and `trace`: an `Agent` built from flags, environment and policy.

Precedence for the endpoint: `--base-url` > `OPENAI_BASE_URL` > the policy's
`[run] base_url` > OpenAI. The key only ever comes from `OPENAI_API_KEY`; it is
never written to the trace, and the workers never see it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from typing import Any

from pydantic import ValidationError

from policies import Policy, RunPolicy
from policies.loader import unknown_tool
from policies.schema import is_http_url
from sandbox import Pool
from sandbox.errors import ErrorKind

from .approval import Approver
from .audit import Trace, check_events, read_trace, render_timeline
from .checkpoints import CheckpointError, RunRecord, RunStore, UnknownRun
from .cli_types import flag_error, memory_namespace
from .embeddings import Embedder
from .loop import Agent, RunResult
from .model import ModelClient
from .progress import TerminalProgress
from .scrubbing import scrub
from .terminal import safe, safe_text

RUN_FLAGS = {
    "max_iterations": "--max-iterations",
    "max_cost_usd": "--max-cost-usd",
    "max_wall_s": "--max-wall-s",
    "api": "--api",
}


class UsageError(Exception):
    """Bad command-line input: exit 2 with this one line."""


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (default: the policy's [run] model)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL)")
    p.add_argument(
        "--api",
        metavar="API",
        help="chat (Chat Completions, the default) or responses (the Responses API)",
    )
    p.add_argument("--max-iterations", type=int, metavar="N")
    p.add_argument("--max-cost-usd", type=float, metavar="X")
    p.add_argument("--max-wall-s", type=float, metavar="SECONDS")
    p.add_argument("--trace", metavar="FILE", help="append the run's JSON Lines trace here")
    p.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="TOOL",
        help="allow a tool that needs approval without asking (repeatable)",
    )
    p.add_argument("--yes", action="store_true", help="allow every tool that needs approval")
    p.add_argument(
        "--memory-namespace",
        metavar="NAME",
        type=memory_namespace,
        help="the memory tools' namespace (one per user or agent; default: the policy's)",
    )
    p.add_argument("--embeddings-model", metavar="M", help="embed memories with this model")
    p.add_argument(
        "--offer",
        action="append",
        metavar="TOOL",
        help="offer the model only these tools (repeatable; default: the policy's [run] offer)",
    )


def check_approve(names: list[str], known: list[str], flag: str = "--approve") -> None:
    """Approval in advance must name a loaded tool: a typo would silently approve nothing,
    and the tool the person meant would then be denied, or asked for, unexpectedly."""
    for name in names:
        if name not in known:
            raise UsageError(f"{flag} {name}: {unknown_tool(name, known)}")


def own_names(names: list[str], policy: Policy) -> list[str]:
    """Those of `names` that are not an MCP server's tool (known once it has started)."""
    return [name for name in names if policy.mcp_server_of(name) is None]


def with_mcp_servers(stack: ExitStack, policy: Policy, pool: Pool, approve: list[str]) -> Any:
    """Start the policy's MCP servers under sandbox.launch; their tools join the pool's."""
    from sandbox.errors import PolicyError

    from .integrations.mcp_sources import McpSources, SourcedPool

    try:
        sources = stack.enter_context(McpSources(policy))
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    routed = SourcedPool(pool, sources)
    check_approve(approve, routed.registry.names())
    return routed


def with_run_overrides(policy: Policy, args: argparse.Namespace) -> Policy:
    changes: dict[str, Any] = {
        k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k, None) is not None
    }
    if args.model:
        changes["model"] = args.model
    if getattr(args, "embeddings_model", None):
        changes["embeddings_model"] = args.embeddings_model
    if getattr(args, "offer", None):
        changes["offer"] = args.offer
    if not changes:
        return policy
    try:
        run = RunPolicy(**{**policy.run.model_dump(), **changes})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0])
        raise UsageError(flag_error(RUN_FLAGS.get(key, "--" + key), err)) from None
    return policy.model_copy(update={"run": run})


def model_client(policy: Policy, base_url: str | None) -> ModelClient:
    sources = [
        ("--base-url", base_url),
        ("OPENAI_BASE_URL", os.environ.get("OPENAI_BASE_URL")),
        ("the policy's [run] base_url", policy.run.base_url),
    ]
    source, base_url = next(((s, url) for s, url in sources if url), ("", None))
    api_key = os.environ.get("OPENAI_API_KEY")
    if not base_url and not api_key:
        raise UsageError(
            "no model endpoint: set OPENAI_API_KEY for OpenAI, or --base-url / OPENAI_BASE_URL "
            "for a compatible server (Ollama: http://localhost:11434/v1)"
        )
    if base_url:
        check_base_url(source, base_url)
    return ModelClient(
        model=policy.run.model,
        base_url=base_url,
        api_key=api_key,
        timeout_s=policy.run.request_timeout_s,
        max_retries=policy.run.max_retries,
        max_output_tokens=policy.run.max_output_tokens,
        parallel_tool_calls=policy.run.parallel_tool_calls,
        required_as=policy.run.required_as,
        tools_sent=policy.run.tools_sent,
        api=policy.run.api,
    )


def check_base_url(source: str, url: str) -> None:
    """A usage error before any run starts, rather than a run that fails (and offers a
    resume) at its first model call."""
    if not is_http_url(url):
        raise UsageError(
            f"{source} {url!r} is not an http:// or https:// URL with a host "
            "(for example http://localhost:11434/v1)"
        )


def build_agent(
    stack: ExitStack,
    policy: Policy,
    registry: Any,
    args: argparse.Namespace,
    store: RunStore | None = None,
) -> Agent:
    check_approve(getattr(args, "offer", None) or [], registry.names(), "--offer")
    policy = with_run_overrides(policy, args)
    model = model_client(policy, args.base_url)
    try:  # before the pool: a usage error is one line, with no pool's warning before it
        trace = Trace(args.trace, secrets=[os.environ.get("OPENAI_API_KEY", "")])
    except OSError as exc:
        raise UsageError(
            f"--trace {args.trace}: cannot write there ({exc.strerror or exc}); give a file "
            "in an existing, writable directory"
        ) from None
    stack.callback(trace.close)
    pool: Any = stack.enter_context(Pool(policy, registry=registry, **policy.pool_options()))
    if policy.mcp_servers:
        pool = with_mcp_servers(stack, policy, pool, args.approve)
    progress = None
    if sys.stderr.isatty():
        terminal = TerminalProgress()
        stack.callback(terminal.close)
        progress = terminal
    approver = Approver.for_terminal(args.approve, args.yes)
    embedder = None
    if policy.run.embeddings_model:
        embedder = Embedder(
            model=policy.run.embeddings_model,
            base_url=policy.run.embeddings_base_url or model.base_url,
            api_key=os.environ.get("OPENAI_API_KEY"),
        )
    settings = {"memory_namespace": args.memory_namespace} if args.memory_namespace else {}
    return Agent(
        pool,
        policy,
        model,
        approver=approver,
        trace=trace,
        progress=progress,
        store=store,
        embedder=embedder,
        call_settings=settings,
    )


def report(result: RunResult) -> int:
    """The answer on stdout: escaped on a terminal (`terminal.safe_text`), as the model
    wrote it on a pipe or into a file, where it is data. A failure: one escaped line."""
    if result.ok:
        answer = scrub(result.answer or "")
        print(safe_text(answer) if sys.stdout.isatty() else answer)
        return 0
    hint = ""
    if result.run_id:
        hint = f" (run {result.run_id}; go on with: sandboxed-agent run --resume {result.run_id})"
    print(f"sandboxed-agent: {safe(scrub(result.message))}{hint}", file=sys.stderr)
    # Stopped by the user (Ctrl-C): 130, as `tool` and `eval` exit, so a script can
    # tell a stop from a run that failed.
    return 130 if result.reason == "interrupted" else 1


def cmd_run(args: argparse.Namespace, policy: Policy, registry: Any) -> int:
    if args.task and args.resume:
        raise UsageError('give a task, or --resume RUN_ID, not both: run "TASK" | run --resume ID')
    if not args.resume and not (args.task or "").strip():
        said = "an empty task" if args.task is not None else "no task"
        raise UsageError(f'{said}: run "TASK", or run --resume RUN_ID (see: sandboxed-agent runs)')
    check_approve(own_names(args.approve, policy), registry.names())
    store: RunStore | None = None
    try:
        store = RunStore.open_default()
    except CheckpointError as exc:
        if args.resume:
            raise
        print(
            f"sandboxed-agent: warning: this run is not checkpointed: {safe(scrub(str(exc)))}",
            file=sys.stderr,
        )
    try:
        record = store.load(args.resume) if store and args.resume else None
    except UnknownRun as exc:
        raise UsageError(str(exc)) from None  # a run id the user typed: a usage error
    if record:
        check_resumed_tools(record, policy, registry.names())
    with ExitStack() as stack:
        agent = build_agent(stack, policy, registry, args, store)
        result = agent.resume(record) if record else agent.run(args.task)
        return report(result)


def check_resumed_tools(record: RunRecord, policy: Policy, known: list[str]) -> None:
    """A run resumed must have the tools it called: resumed without the `--policy` or
    `--tools` that loaded one, its call in flight (at the approval prompt, say) was
    answered `unknown tool` and the model told that a tool it had used was never
    there. A call that was `unknown_tool` then (a name the model made up) needs none."""
    missing = sorted(
        {
            call.tool
            for call in record.calls
            if call.tool not in known
            and policy.mcp_server_of(call.tool) is None
            and (call.outcome is None or call.outcome.error_kind != ErrorKind.UNKNOWN_TOOL)
        }
    )
    if missing:
        raise UsageError(
            f"run {record.id} called {', '.join(missing)}, which this command does not "
            "load: resume it with the --policy and --tools it was started with "
            f"(loaded now: {', '.join(known)})"
        )


def cmd_runs(limit: int) -> int:
    store = RunStore.open_default()
    runs = store.runs(limit)
    if not runs:
        print(f"no runs yet in {store.path}")
        return 0
    print(f"{'run':<23} {'status':<14} {'steps':>5} {'cost $':>9}  {'updated':<19}  task")
    for r in runs:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated))
        task = safe(r.task if len(r.task) <= 50 else r.task[:49] + "…")
        print(f"{r.id:<23} {r.state:<14} {r.steps:>5} {r.cost_usd:>9.6f}  {updated}  {task}")
    return 0


def cmd_chat(args: argparse.Namespace, policy: Policy, registry: Any) -> int:
    from .sessions import SessionStore

    check_approve(own_names(args.approve, policy), registry.names())
    store = SessionStore.open_default() if args.session else None
    history = store.load(args.session) if store and args.session else None
    interactive = sys.stdin.isatty()
    with ExitStack() as stack:
        agent = build_agent(stack, policy, registry, args)
        status = 0
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            if not line.strip():
                continue
            result = agent.run(line.strip(), history=history)
            history = result.messages
            if store and args.session:
                store.save(args.session, history)
            status = report(result)
            if result.reason == "model_error":
                break
        return status


def cmd_trace(path: str) -> int:
    try:
        events = read_trace(path)
        check_events(events, path)
    except FileNotFoundError:
        raise UsageError(f"trace file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory; give a trace file (--trace FILE)") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the trace file {path}: {exc.strerror or exc}") from None
    print(render_timeline(events))
    return 0
