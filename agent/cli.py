"""`sandboxed-agent`: the command line.

    sandboxed-agent run "TASK" | --resume RUN_ID [--model M] [--base-url URL] [--policy FILE]
                    [--tools FILE_OR_MODULE]... [--max-iterations N] [--max-cost-usd X]
                    [--trace FILE] [--approve TOOL]... [--yes]
    sandboxed-agent chat [--session NAME] [same options]
    sandboxed-agent runs [--limit N]
    sandboxed-agent tool NAME [--args JSON] [--tools FILE_OR_MODULE]... [--policy FILE]
                              [--timeout SECONDS] [--memory-mb N] [--approve TOOL]... [--yes]
    sandboxed-agent tools [--json] [--tools FILE_OR_MODULE]... [--policy FILE]
    sandboxed-agent trace FILE
    sandboxed-agent eval SUITE [--scripted] [--runs N] [--case NAME]... [--out DIR] [--json]
                         [--judge-model M] [--judge-base-url URL]
    sandboxed-agent demo
    sandboxed-agent doctor [--policy FILE]
    sandboxed-agent policy show [--policy FILE] [--tools FILE_OR_MODULE]... [--json]
    sandboxed-agent mcp serve [--tools FILE_OR_MODULE]... [--policy FILE] [--http [HOST:]PORT]
                              [--approve TOOL]... [--yes] [--trace FILE] [--workers N]
    sandboxed-agent worker --temporal HOST:PORT [--namespace NS] [--task-queue Q]
                           [--tool-queue Q] [--serve all|agent|tools] [--policy FILE] ...
    sandboxed-agent run --temporal HOST:PORT [--task-queue Q] [--tool-queue Q] "TASK"
    sandboxed-agent approve RUN_ID CALL_ID [--deny] [--sha256 HASH] --temporal HOST:PORT
    sandboxed-agent eval SUITE --temporal HOST:PORT [--task-queue Q] [--tool-queue Q]
    sandboxed-agent worker --temporal HOST:PORT [--namespace NS] [--task-queue Q]
                           [--tool-queue Q] [--serve all|agent|tools] [--policy FILE] ...

Exit status: 0 when the call succeeded, 1 when it failed, 2 for usage errors (one
line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from policies import Policy, check_tools, load_policy
from policies.loader import unknown_tool
from sandbox import Limits, Pool, SandboxedAgentError
from sandbox.errors import ErrorKind, PolicyError
from sandbox.pool import ToolResult
from sandbox.protocol import ToolError
from tools import ArgumentError, Registry, ToolDefinitionError, ToolSpec
from tools.registry import defines_tools

from .approval import COMMAND, Approver
from .binding import bind
from .cli_types import flag_error, positive_int, session_name
from .evals.command import add_eval_parser, cmd_eval
from .parallel import out_of_resources
from .runner import (
    UsageError,
    add_run_options,
    check_approve,
    cmd_chat,
    cmd_run,
    cmd_runs,
    cmd_trace,
    own_names,
)
from .scrubbing import scrub
from .terminal import ascii_json, safe

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--arg` meaning `--args` today would mean another flag tomorrow.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extra = super().parse_known_args(args, namespace)
        if extra and not getattr(ns, "_unknown_in", None):
            ns._unknown_in = self.prog  # the innermost command's help lists its flags
        return ns, extra

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            where = getattr(ns, "_unknown_in", None) or self.prog
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see: {where} --help)")
        return ns


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sandboxed-agent")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sandboxed-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def tool_sources(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--tools",
            action="append",
            default=[],
            metavar="FILE_OR_MODULE",
            help="import @tool functions from a .py file or a module (repeatable)",
        )
        p.add_argument("--policy", metavar="FILE", help="policy TOML file (default: built-in)")
        p.add_argument(
            "--isolation",
            choices=["best-effort", "strict"],
            help="strict: refuse to run tools when an isolation layer is missing",
        )

    one = sub.add_parser("tool", help="run one tool call in the sandbox and print the result")
    one.add_argument("name", help="tool name")
    one.add_argument("--args", default="{}", metavar="JSON", help="arguments as a JSON object")
    tool_sources(one)
    one.add_argument("--timeout", type=float, metavar="SECONDS", help="override timeout_s")
    one.add_argument("--memory-mb", type=int, metavar="N", help="override memory_mb")
    one.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="TOOL",
        help="allow this tool if it needs approval, without asking (repeatable)",
    )
    one.add_argument("--yes", action="store_true", help="allow any tool that needs approval")

    listing = sub.add_parser("tools", help="list the tools and their schemas")
    listing.add_argument("--json", action="store_true", help="the OpenAI tool schemas as JSON")
    tool_sources(listing)

    run = sub.add_parser("run", help="run the agent on one task and print its answer")
    run.add_argument("task", nargs="?", help="what to ask, in words")
    run.add_argument(
        "--resume", metavar="RUN_ID", help="go on with an interrupted run from its last step"
    )
    tool_sources(run)
    add_run_options(run)
    from .integrations.temporal_command import add_approve_parser, add_temporal_options

    add_temporal_options(run)  # imports no Temporal SDK
    add_approve_parser(sub)

    chat = sub.add_parser("chat", help="talk with the agent; one line per turn")
    chat.add_argument(
        "--session", metavar="NAME", type=session_name, help="keep the conversation under this name"
    )
    tool_sources(chat)
    add_run_options(chat)

    runs = sub.add_parser("runs", help="list the checkpointed runs, newest first")
    runs.add_argument("--limit", type=positive_int, default=20, metavar="N")

    trace = sub.add_parser("trace", help="show a trace file as a timeline")
    trace.add_argument("file")

    add_eval_parser(sub)
    demo = sub.add_parser("demo", help="the worked example, with every tool call in the sandbox")
    demo.add_argument("--model", help="a live endpoint's model (default: the demo policy's)")
    doctor = sub.add_parser("doctor", help="which isolation layers this machine gives, verified")
    doctor.add_argument("--policy", help="report with the layers this policy turns off")
    policy = sub.add_parser("policy", help="the policy in force").add_subparsers(
        dest="policy_command", metavar="show", required=True, parser_class=_Parser
    )
    show = policy.add_parser("show", help="the built-in policy with --policy laid over it")
    show.add_argument("--policy", metavar="FILE", help="policy TOML file (default: built-in)")
    show.add_argument("--tools", action="append", default=[], metavar="FILE_OR_MODULE")
    show.add_argument("--json", action="store_true", help="as JSON, with each value's file")
    from .integrations.mcp_command import add_mcp_parser  # imports no MCP SDK

    add_mcp_parser(sub, tool_sources)
    from .integrations.temporal_worker import add_worker_parser  # imports no Temporal SDK

    add_worker_parser(sub, tool_sources)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tool"]:
        return _tool_main(argv)
    status = _main(argv)
    if program and "--temporal" in argv:  # the worker too: it closed its pool already
        from .integrations.temporal_command import leave

        leave(status)  # does not return
    return status


def _tool_main(argv: list[str]) -> int:
    """`tool` prints one JSON object whatever happens, a failure included: its kind is
    `bad_arguments` for a usage error (exit 2), `interrupted` for a Ctrl-C (exit 130:
    at the approval prompt nothing ran; during the call its tree was killed), else
    `crashed` (exit 1)."""
    name = next((a for a in argv[1:] if not a.startswith("-")), "")
    _said.clear()
    try:
        status = _main(argv)
    except Exception as exc:  # a bug of ours: still one JSON object, no traceback
        _complain(f"{type(exc).__name__}: {exc}")
        status = EXIT_FAILED
    if status != EXIT_OK and "result" not in _said:
        kind = {EXIT_USAGE: ErrorKind.BAD_ARGUMENTS, EXIT_INTERRUPTED: ErrorKind.INTERRUPTED}
        _print_failure(
            name, kind.get(status, ErrorKind.CRASHED), _said.get("error", "the call did not run")
        )
    return status


_said: dict[str, str] = {}
"""What this command printed: its error line, and whether `tool` printed its result."""


def _print_failure(name: str, kind: ErrorKind, message: str) -> None:
    error = ToolError(kind=kind, message=message)
    result = ToolResult(tool=name, ok=False, output=None, error=error, duration_ms=0.0)
    print(ascii_json(result.model_dump(mode="json")))


def _complain(message: str) -> None:
    _said["error"] = message
    print(f"sandboxed-agent: {safe(scrub(message))}", file=sys.stderr)


def _main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "tool":
            return cmd_tool(args)
        if args.command == "tools":
            return cmd_tools(args)
        if args.command == "trace":
            return cmd_trace(args.file)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "runs":
            return cmd_runs(args.limit)
        if args.command == "doctor":
            from .doctor import run_doctor

            if not args.policy:
                return run_doctor([])
            try:
                policy = load_policy(args.policy)
            except SandboxedAgentError as exc:
                raise UsageError(str(exc)) from None  # a bad file is a usage error, as for run
            return run_doctor(policy.disabled_layers, policy.accept_unwalled_signals)
        if args.command == "policy":
            return cmd_policy_show(args)
        if args.command == "mcp":
            from .integrations.mcp_command import cmd_mcp

            return cmd_mcp(args)
        if args.command == "worker":
            from .integrations.temporal_worker import cmd_worker

            return cmd_worker(args)
        if args.command == "approve":
            from .integrations.temporal_command import cmd_approve

            return cmd_approve(args)
        if args.command in ("run", "chat"):
            registry, policy = load_setup(args.tools, args.policy, args.isolation)
            if args.command == "run" and args.temporal:
                from .integrations.temporal_command import cmd_run_temporal

                return cmd_run_temporal(args, policy, registry)
            return (cmd_run if args.command == "run" else cmd_chat)(args, policy, registry)
        from .demo import run_demo

        return run_demo(model=args.model)
    except UsageError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    except SandboxedAgentError as exc:
        _complain(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _complain("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RuntimeError, OSError) as exc:  # out of threads or processes: one line
        if (exhausted := out_of_resources(exc)) is None:
            raise
        _complain(str(exhausted))
        return EXIT_FAILED


def _show_warning(
    message: Warning | str, category: type[Warning], *args: object, **kw: object
) -> None:
    print(f"sandboxed-agent: warning: {safe(scrub(str(message)))}", file=sys.stderr)


def load_setup(
    sources: list[str],
    policy_file: str | None,
    isolation: str | None = None,
    named: tuple[tuple[str, str], ...] = (),
) -> tuple[Registry, Policy]:
    """The registry (built-ins, the policy's `load_tools`, `named` as (where it was
    named, source), --tools) and the checked policy, or a UsageError."""
    try:
        policy = load_policy(policy_file)
    except SandboxedAgentError as exc:
        raise UsageError(str(exc)) from None
    registry = Registry.default()
    asked = [(f"{policy.source_of('load_tools')}: load_tools:", s) for s in policy.load_tools]
    for flag, source in [*asked, *named, *[("--tools", s) for s in sources]]:
        try:
            registry.load(source)
        except (ImportError, ToolDefinitionError, SyntaxError) as exc:
            raise UsageError(f"{flag} {source}: {exc}") from None
        except Exception as exc:
            raise UsageError(
                f"{flag} {source}: importing it raised {type(exc).__name__}: {exc}"
            ) from None
        if not defines_tools(source):  # a plain function is not a tool: say so, not later
            raise UsageError(
                f"{flag} {source}: defines no tool (decorate each one: "
                "`from tools import tool`, then `@tool` above its `def`)"
            )
    try:
        check_tools(policy, registry.names())
    except SandboxedAgentError as exc:
        raise UsageError(str(exc)) from None
    if isolation:
        policy = policy.model_copy(update={"isolation": isolation})
    return registry, policy


def cmd_tool(args: argparse.Namespace) -> int:
    _check_json_object(args.args)
    arguments: dict[str, Any] | str = args.args
    registry, policy = load_setup(args.tools, args.policy, args.isolation)
    if policy.mcp_server_of(args.name) is not None:
        return _mcp_tool(args, policy)
    check_approve(own_names(args.approve, policy), registry.names())
    limits = None
    if args.name in registry:
        limits = _with_overrides(policy.limits_for(args.name), args.timeout, args.memory_mb)
        if policy.requires_approval(args.name):
            verdict = _approval(registry.get(args.name), args.args, args)
            if isinstance(verdict, ToolResult):
                print(ascii_json(verdict.model_dump(mode="json")))
                _said["result"] = "printed"
                return EXIT_FAILED
            arguments = verdict
    with Pool(policy, registry=registry, size=1, spares=1, **policy.pool_options()) as pool:
        result = pool.call(args.name, arguments, limits=limits)
    printed = result.model_dump(mode="json")
    if result.connections:  # a tool with a network allowlist: what the proxy let through
        printed["connections"] = [c.model_dump(mode="json") for c in result.connections]
    print(ascii_json(printed))
    _said["result"] = "printed"
    return EXIT_OK if result.ok else EXIT_FAILED


def _mcp_tool(args: argparse.Namespace, policy: Policy) -> int:
    """`tool SERVER__TOOL`: that one server started under sandbox.launch, one call."""
    server = policy.mcp_server_of(args.name)
    assert server is not None
    with _started(policy, [server]) as sources:
        known = [spec.name for spec in sources.specs]
        check_approve(args.approve, known)
        result = _mcp_call(args, policy, sources, known)
    print(ascii_json(result.model_dump(mode="json")))
    _said["result"] = "printed"
    return EXIT_OK if result.ok else EXIT_FAILED


def _mcp_call(
    args: argparse.Namespace, policy: Policy, sources: Any, known: list[str]
) -> ToolResult:
    if args.name not in known:
        error = ToolError(kind=ErrorKind.UNKNOWN_TOOL, message=unknown_tool(args.name, known))
        return ToolResult(tool=args.name, ok=False, output=None, error=error, duration_ms=0)
    arguments: dict[str, Any] | str = args.args
    if policy.requires_approval(args.name):
        spec = next(spec for spec in sources.specs if spec.name == args.name)
        verdict = _approval(spec, args.args, args)
        if isinstance(verdict, ToolResult):
            return verdict
        arguments = verdict
    limits = _with_overrides(policy.limits_for(args.name), args.timeout, args.memory_mb)
    return sources.call(args.name, arguments, limits=limits)


def _started(policy: Policy, servers: list[str] | None = None) -> Any:
    """The policy's MCP servers (or those named), started; a bad [tools] table for one
    of their tools is a usage error."""
    from .integrations.mcp_sources import McpSources

    try:
        return McpSources(policy, servers)
    except PolicyError as exc:
        raise UsageError(str(exc)) from None


def cmd_policy_show(args: argparse.Namespace) -> int:
    from policies.show import policy_json, policy_toml

    registry, policy = load_setup(args.tools, args.policy)
    shown = policy_json(policy) + "\n" if args.json else policy_toml(policy, registry.names())
    sys.stdout.write(shown)
    return EXIT_OK


def cmd_tools(args: argparse.Namespace) -> int:
    registry, policy = load_setup(args.tools, args.policy)
    if policy.mcp_servers:
        with _started(policy) as sources:
            for spec in sources.specs:
                registry.add_spec(spec)
    if args.json:
        print(json.dumps([spec.openai_schema for spec in registry], indent=2))
        return EXIT_OK
    for spec in registry:
        limits = policy.limits_for(spec.name)
        mode = "reused worker" if limits.reuse_worker else "fresh worker"
        size = f"{limits.memory_mb} MiB, {limits.cpu_s} s CPU"
        server = policy.mcp_server_of(spec.name)
        if server is not None:
            table = policy.mcp_servers[server]
            size = f"per call; server {server}: {table.memory_mb} MiB, {table.cpu_s} s CPU"
            mode = "network" if table.network else "no network"
        params = ", ".join(spec.parameters.get("properties", {}))
        print(f"{safe(spec.name)}({safe(params)})")
        print(f"    {safe(_summary(spec.description))}")
        approval = ", needs approval" if policy.requires_approval(spec.name) else ""
        print(f"    {limits.timeout_s:g} s, {size}, {mode}{approval}")
    return EXIT_OK


def _summary(description: str, limit: int = 120) -> str:
    """A tool's description in one line: its first paragraph, else its first sentence
    (a docstring's first line alone stops mid-sentence where the text wraps)."""
    paragraph = " ".join((description.strip().split("\n\n") or [""])[0].split())
    if len(paragraph) <= limit:
        return paragraph
    sentence = paragraph.split(". ")[0].rstrip(".") + "."
    return sentence if len(sentence) <= limit else paragraph[: limit - 3].rsplit(" ", 1)[0] + "..."


def _approval(
    spec: ToolSpec, arguments: str, args: argparse.Namespace
) -> dict[str, Any] | str | ToolResult:
    """The same yes as in `run`, for one call: on a terminal the person is asked with the
    canonical prompt; without one it is denied unless --approve or --yes. Returns the
    validated arguments to run (that very dict) or the denied result. Arguments that do
    not validate (a repeated key too) are left to the pool to report as bad_arguments:
    they cannot run, so nobody is asked."""
    try:
        bound = bind(spec, arguments)
    except ArgumentError:
        return arguments
    decision = Approver.for_terminal(args.approve, args.yes, COMMAND).decide(bound)
    if decision.allowed:
        return bound.args
    hint = "" if decision.how == "denied_tty" else f"; allow it with --approve {spec.name}"
    message = f"a person must approve {spec.name} and did not ({decision.how}){hint}"
    error = ToolError(kind=ErrorKind.DENIED, message=message)
    return ToolResult(tool=spec.name, ok=False, output=None, error=error, duration_ms=0.0)


def _check_json_object(text: str) -> None:
    """Not JSON, or not an object, is a usage error. The text itself goes on to be read
    once, strictly, like a model's arguments (a repeated key is bad_arguments)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--args is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(
            f"--args must be a JSON object like '{{\"x\": 1}}', got {type(value).__name__}"
        )


def _with_overrides(limits: Limits, timeout: float | None, memory_mb: int | None) -> Limits:
    changes: dict[str, Any] = {}
    if timeout is not None:
        changes["timeout_s"] = timeout
    if memory_mb is not None:
        changes["memory_mb"] = memory_mb
    if not changes:
        return limits
    try:
        return Limits(**{**limits.model_dump(), **changes})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        flag = {"timeout_s": "--timeout", "memory_mb": "--memory-mb"}[str(err["loc"][0])]
        raise UsageError(flag_error(flag, err)) from None
