"""`run --temporal`, `approve` and `eval --temporal`: the client side of runs on Temporal.

    sandboxed-agent run --temporal HOST:PORT [--task-queue Q] [--tool-queue Q] "TASK"
    sandboxed-agent approve RUN_ID CALL_ID [--deny|--always] [--sha256 HASH] --temporal HOST:PORT
    sandboxed-agent eval SUITE --temporal HOST:PORT [--task-queue Q] [--tool-queue Q]

`run` starts one `AgentWorkflow` and follows it to the end: the answer on stdout, a
failure as one line on stderr, the same exit status as a local run, the trace written
where `--trace` says. A call waiting for approval is announced on stderr with the
`approve` command that decides it; the run stays durable in Temporal meanwhile (this
command may be stopped and the run still ends). `eval` starts every case x run as its
own workflow at once, so they spread over the workers, and reports as a local eval.
The model endpoint and key are the workers' (their environment), never the client's.
Imports `temporalio` only when one of these runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import time
import uuid
from typing import Any

from policies import Policy
from sandbox.errors import SandboxedAgentError

from ..binding import argument_lines
from ..loop import RunResult
from ..runner import UsageError, check_approve, own_names, report, with_run_overrides
from ..scrubbing import scrub
from ..terminal import ascii_json, safe
from .temporal_connect import add_connection_flags, connect_options, tls_hint
from .temporal_contracts import DEFAULT_NAMESPACE, DEFAULT_TASK_QUEUE, data_converter
from .temporal_plan import (
    APPROVAL_SIGNAL,
    PENDING_QUERY,
    REFUSED_QUERY,
    RUN_WORKFLOW,
    ApprovalSignal,
    PendingCall,
    Refusal,
    RunOutcome,
    RunPlan,
)

FOLLOW_EVERY_S = 1.0
"""How often `run` asks a running workflow for calls waiting on a person."""
UNREACHABLE_S = 120.0
"""How long `run` keeps following a run while the server cannot be reached."""
ACK_WAIT_S = 30.0
"""How long `approve` waits to hear the run took (or refused) the decision."""
QUERY_WAIT_S = 5.0
"""How long `run` waits for a worker to answer which calls wait for a person."""
STUCK_EVERY_S = 2.0
"""How often a followed run is asked whether its workflow task keeps failing."""
STUCK_ATTEMPTS = 2
"""A workflow task that blocked its worker past Temporal's 2 s (TMPRL1101, taken for a
deadlock) and blocked again on its retry will block on every retry: Temporal would
retry it for ever, the run never moving. The worker has imported every tool module
before it serves a run, so what blocks is code the run runs each time (a tool's
argument validator that sleeps or waits)."""
DEADLOCK = "TMPRL1101"


class TemporalFailed(SandboxedAgentError):
    """The server is unreachable, the run unknown, or the workflow failed."""


def add_temporal_options(p: argparse.ArgumentParser, queues: bool = True) -> None:
    p.add_argument(
        "--temporal",
        metavar="HOST:PORT",
        help="run on this Temporal server's workers instead of here",
    )
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, metavar="NS")
    add_connection_flags(p)
    if queues:
        p.add_argument(
            "--task-queue",
            default=DEFAULT_TASK_QUEUE,
            metavar="Q",
            help=f"the workers' queue of runs and model calls (default: {DEFAULT_TASK_QUEUE})",
        )
        p.add_argument(
            "--tool-queue", metavar="Q", help="send tool calls to this queue (sandbox hosts)"
        )


def add_approve_parser(sub: Any) -> None:
    p = sub.add_parser("approve", help="decide a tool call a run on Temporal waits for")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("call_id", metavar="CALL_ID")
    p.add_argument("--deny", action="store_true", help="say no (default: yes)")
    p.add_argument(
        "--always",
        action="store_true",
        help="yes, and to every later call of this tool in this run, without asking",
    )
    p.add_argument(
        "--sha256",
        metavar="HASH",
        help="the arguments' hash you were shown (whole, or its first 16 digits or more)",
    )
    add_temporal_options(p, queues=False)


def target(text: str | None) -> str:
    """HOST:PORT, checked; a UsageError says what is accepted."""
    if not text:
        raise UsageError("--temporal HOST:PORT is required (a dev server: 127.0.0.1:7233)")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--temporal {text}: give HOST:PORT, e.g. 127.0.0.1:7233")
    return text


async def connect(address: str, namespace: str, options: dict[str, Any]) -> Any:
    """`options`: `connect_options`' (TLS, API key)."""
    from temporalio.client import Client

    try:
        return await asyncio.wait_for(
            Client.connect(
                address, namespace=namespace, data_converter=data_converter(), **options
            ),
            30,
        )
    except Exception as exc:
        raise TemporalFailed(
            f"cannot reach Temporal at {address}: {_one_line(exc)}{tls_hint(options)}"
        ) from None


def new_run_id() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def check_served(policy: Policy, what: str = "--temporal") -> None:
    """A usage error for a policy key that runs on Temporal cannot honour (never
    ignored in silence): `[mcp_servers]`, whose servers run beside a local run."""
    if policy.mcp_servers:
        names = ", ".join(sorted(policy.mcp_servers))
        raise UsageError(
            f"{what}: the policy's [mcp_servers] ({names}) run beside a local run only, "
            "not on Temporal workers; remove them from the policy or run without --temporal"
        )


def plan_for(
    policy: Policy, registry: Any, sources: list[str], task: str, args: argparse.Namespace
) -> RunPlan:
    check_served(policy)
    settings = {"memory_namespace": args.memory_namespace} if args.memory_namespace else {}
    return RunPlan.of(
        policy,
        registry.names(),
        [*policy.load_tools, *sources],
        task,
        approve=list(args.approve),
        yes=bool(args.yes),
        call_settings=settings,
        tool_queue=args.tool_queue,
    )


def cmd_run_temporal(args: argparse.Namespace, policy: Policy, registry: Any) -> int:
    address = target(args.temporal)
    if bool(args.task) == bool(args.resume):
        raise UsageError(
            'give a task, or --resume RUN_ID, not both: run --temporal HOST:PORT "TASK" | '
            "--resume RUN_ID"
        )
    if args.base_url:
        raise UsageError("--base-url: with --temporal the model endpoint is the workers' own")
    check_approve(own_names(args.approve, policy), registry.names())
    check_approve(getattr(args, "offer", None) or [], registry.names(), "--offer")
    policy = with_run_overrides(policy, args)
    if args.trace:
        _check_writable(args.trace)
    options = connect_options(args)
    if args.resume:
        # The run is durable on the server and goes on without us: follow it again.
        outcome = asyncio.run(_follow_again(address, args.namespace, args.resume, options))
    else:
        plan = plan_for(policy, registry, args.tools, args.task, args)
        outcome = asyncio.run(_run(address, args.namespace, args.task_queue, plan, options))
    if args.trace:
        write_trace(args.trace, outcome.events)
    result = RunResult(
        outcome.answer,
        outcome.reason,
        outcome.message,
        outcome.steps,
        outcome.cost_usd,  # type: ignore[arg-type]
    )
    return report(result)


async def _run(
    address: str, namespace: str, queue: str, plan: RunPlan, options: dict[str, Any]
) -> RunOutcome:
    from temporalio.service import RPCError

    client = await connect(address, namespace, options)
    run_id = new_run_id()
    try:
        handle = await client.start_workflow(
            RUN_WORKFLOW, plan, id=run_id, task_queue=queue, result_type=RunOutcome
        )
    except RPCError as exc:
        raise TemporalFailed(f"cannot start the run on {address}: {_one_line(exc)}") from None
    print(f"sandboxed-agent: run {run_id} on {address} (queue {queue})", file=sys.stderr)
    return await follow(handle, address)


async def _follow_again(
    address: str, namespace: str, run_id: str, options: dict[str, Any]
) -> RunOutcome:
    """`run --temporal --resume RUN_ID`: a run started earlier (its `run` command may
    have been stopped; the run went on), followed to its end as if from its start."""
    from temporalio.service import RPCError

    client = await connect(address, namespace, options)
    handle = client.get_workflow_handle(run_id, result_type=RunOutcome)
    try:
        found = await handle.describe()
    except RPCError as exc:
        raise TemporalFailed(
            f"--resume {safe(run_id)}: no such run on {address} ({_one_line(exc)})"
        ) from None
    if found.workflow_type != RUN_WORKFLOW:
        raise TemporalFailed(f"--resume {safe(run_id)}: {found.workflow_type} is not an agent run")
    print(f"sandboxed-agent: run {run_id} on {address}, followed again", file=sys.stderr)
    return await follow(handle, address)


async def follow(handle: Any, address: str) -> RunOutcome:
    """The run's outcome; meanwhile each call that waits for a person, once, on stderr.
    The server may go away for a while (a restart): the run is durable there, so this
    asks again until it has been unreachable for UNREACHABLE_S."""
    from temporalio.client import WorkflowFailureError
    from temporalio.service import RPCError

    told: set[str] = set()
    lost_since: float | None = None
    result = asyncio.ensure_future(handle.result())
    checked = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=FOLLOW_EVERY_S)
            if not done and time.monotonic() - checked > STUCK_EVERY_S:
                checked = time.monotonic()
                await end_if_stuck(handle)
            if done:
                try:
                    return result.result()
                except RPCError as exc:
                    lost_since = lost_since or time.monotonic()
                    if time.monotonic() - lost_since > UNREACHABLE_S:
                        raise TemporalFailed(
                            f"lost Temporal at {address} while following run {handle.id} "
                            f"(it goes on there): {_one_line(exc)}"
                        ) from None
                    result = asyncio.ensure_future(handle.result())
                    continue
            try:
                asked = handle.query(PENDING_QUERY, result_type=list[PendingCall])
                # A run whose workflow task is stuck answers no query: not waited for.
                pending = await asyncio.wait_for(asked, QUERY_WAIT_S)
            except Exception:
                continue  # no worker to answer right now: the run waits, so do we
            lost_since = None
            for call in pending:
                if call.call_id not in told:
                    told.add(call.call_id)
                    announce(handle.id, call, address)
    except WorkflowFailureError as exc:
        raise TemporalFailed(f"run {handle.id} failed: {failure_line(exc)}") from None
    finally:
        result.cancel()


async def outcome_of(handle: Any, every_s: float = STUCK_EVERY_S) -> RunOutcome:
    """`handle.result()`, ending the run if its workflow task is stuck (`end_if_stuck`,
    asked every `every_s`)."""
    result = asyncio.ensure_future(handle.result())
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=every_s)
            if done:
                outcome: RunOutcome = result.result()
                return outcome
            await end_if_stuck(handle)
    finally:
        result.cancel()


async def end_if_stuck(handle: Any) -> None:
    """If the run's workflow task has blocked its worker past 2 s on `STUCK_ATTEMPTS`
    tries in a row, end the run (terminate: no worker could make it move) and raise
    `TemporalFailed` saying why. Anything else (a worker gone, the server away) waits."""
    from temporalio.service import RPCError

    try:
        task = (await handle.describe()).raw_description.pending_workflow_task
        if task.attempt < STUCK_ATTEMPTS:
            return
        history = await handle.fetch_history()
    except RPCError:
        return  # the server is away for now: asked again later
    failures = [
        e.workflow_task_failed_event_attributes.failure.message
        for e in history.events
        if e.HasField("workflow_task_failed_event_attributes")
    ]
    if not failures or DEADLOCK not in failures[-1]:
        return
    why = (
        f"its workflow task blocked a worker for more than 2 s, {task.attempt} times in a "
        "row, and would on every retry (Temporal takes it for a deadlock: "
        f"{_one_line(failures[-1])}); code the run runs each time blocks (a tool module's "
        "argument validator that sleeps or waits?)"
    )
    with contextlib.suppress(RPCError):
        await handle.terminate(reason=why[:500])
    raise TemporalFailed(
        f"run {handle.id} failed and was ended: {safe(why)}; its history: temporal "
        f"workflow show --workflow-id {handle.id}"
    )


def announce(run_id: str, call: PendingCall, address: str) -> None:
    print(
        # Escaped line by line as it was made (`approval_prompt`), less its question.
        f"{call.prompt.rstrip().rsplit(chr(10), 1)[0].lstrip(chr(10))}\n"
        f"sandboxed-agent: run {run_id} waits for a person's decision on call "
        f"{safe(call.call_id)} ({safe(call.tool)}, sha256 {call.sha256}):\n"
        # The id is the model's: quoted, so that the line pasted into a shell approves
        # this call and runs nothing else (`;`, `$(...)` in an id).
        f"    sandboxed-agent approve {run_id} {shlex.quote(safe(call.call_id))} "
        f"--temporal {address}\n"
        # Options on a line of their own: "[--deny|--always]" pasted with the command
        # was a pipe to the shell.
        "  (add --deny to refuse it, --always to say yes to this tool for the rest of the run)",
        file=sys.stderr,
        flush=True,
    )


def cmd_approve(args: argparse.Namespace) -> int:
    address = target(args.temporal)
    if args.always and args.deny:
        raise UsageError("--always says yes to this tool for the rest of the run: not with --deny")
    if args.sha256 is not None and not _hex(args.sha256, 16):
        raise UsageError(f"--sha256 {args.sha256}: give the hash in hex, at least 16 digits")
    options = connect_options(args)
    return asyncio.run(_approve(address, args, options))


async def _approve(address: str, args: argparse.Namespace, options: dict[str, Any]) -> int:
    from temporalio.service import RPCError

    client = await connect(address, args.namespace, options)
    handle = client.get_workflow_handle(args.run_id)
    try:
        pending = await handle.query(PENDING_QUERY, result_type=list[PendingCall])
        seen = len(await handle.query(REFUSED_QUERY, result_type=list[Refusal]))
    except RPCError as exc:
        raise TemporalFailed(f"run {args.run_id}: {_one_line(exc)}") from None
    call = next((c for c in pending if c.call_id == args.call_id), None)
    if call is None:
        waiting = ", ".join(c.call_id for c in pending) or "none"
        raise TemporalFailed(
            f"run {args.run_id} has no call {args.call_id} waiting for approval "
            f"(waiting: {waiting})"
        )
    sha256 = call.sha256
    if args.sha256 is not None and not call.sha256.startswith(args.sha256.lower()):
        sha256 = args.sha256.lower()  # sent as given: the run refuses it and says why
    verb = "deny" if args.deny else "approve"
    said = "approve, for the rest of the run too," if args.always else verb
    shown = "\n".join(f"    {line}" for line in argument_lines(_args(call)))
    print(f"{said} {safe(call.tool)} (sha256 {sha256[:16]}):\n{shown}", file=sys.stderr)
    decision = ApprovalSignal(
        call_id=call.call_id, approve=not args.deny, sha256=sha256, always=args.always
    )
    await handle.signal(APPROVAL_SIGNAL, decision)
    return await _acknowledged(handle, call.call_id, seen, verb)


async def _acknowledged(handle: Any, call_id: str, seen: int, verb: str) -> int:
    """Exit status once the run took the decision (0) or refused it (1)."""
    deadline = time.monotonic() + ACK_WAIT_S
    while time.monotonic() < deadline:
        try:
            refused = await handle.query(REFUSED_QUERY, result_type=list[Refusal])
            pending = await handle.query(PENDING_QUERY, result_type=list[PendingCall])
        except Exception:
            break  # the run ended (it took the decision) or no worker answers
        for refusal in refused[seen:]:
            if refusal.call_id == call_id:
                raise TemporalFailed(f"refused: {refusal.why}")
        if all(c.call_id != call_id for c in pending):
            done = "approved" if verb == "approve" else "denied"
            print(f"sandboxed-agent: {done} call {safe(call_id)}", file=sys.stderr)
            return 0
        await asyncio.sleep(0.5)  # the run takes it on its next workflow task
    print(
        f"sandboxed-agent: sent; the run takes it when a worker serves it ({verb} {call_id})",
        file=sys.stderr,
    )
    return 0


def leave(status: int) -> None:
    """Exit now, skipping the interpreter's teardown: the Temporal client's threads can
    outlive it and abort the process as it finalizes (temporalio/sdk-python#300), which
    would turn a finished command's status into SIGABRT. Only for the program itself."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def write_trace(path: str, events: list[dict[str, Any]]) -> None:
    """The events as a local run's `--trace` writes them: ASCII JSON lines, scrubbed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        for event in events:
            f.write(scrub(ascii_json(event)) + "\n")


def _check_writable(path: str) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as exc:
        raise UsageError(
            f"--trace {path}: cannot write there ({exc.strerror or exc}); give a file "
            "in an existing, writable directory"
        ) from None


def _args(call: PendingCall) -> dict[str, Any]:
    import json

    value = json.loads(call.arguments)
    return value if isinstance(value, dict) else {}


def _hex(text: str, at_least: int) -> bool:
    return len(text) >= at_least and all(c in "0123456789abcdefABCDEF" for c in text)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


OWN_FAILURES = frozenset({"SourceRefused", "PolicyError"})
"""Failures the workflow raises itself, whose message says it all."""


def failure_line(exc: Any) -> str:
    """Why a workflow failed, in one line (a `WorkflowFailureError`): an exception in
    the workflow's code (`AgentWorkflow`'s failure types) comes back as an
    ApplicationError of its type's name, which is said too, and where its stack trace
    is (the failure in the history; the worker logs none)."""
    from temporalio.exceptions import ApplicationError

    cause = exc.cause or exc
    if isinstance(cause, ApplicationError) and cause.type and cause.type not in OWN_FAILURES:
        return (
            f"{safe(cause.type)} in the workflow on a worker: {safe(_one_line(cause))} "
            "(a bug in the workflow or a tool module; its stack trace is in the run's "
            "history: temporal workflow show --workflow-id RUN_ID)"
        )
    return safe(_one_line(cause))
