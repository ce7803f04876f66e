"""`sandboxed-agent worker --temporal HOST:PORT`: serve runs, model calls and tool calls.

    sandboxed-agent worker --temporal HOST:PORT [--namespace NS] [--task-queue Q]
                           [--tool-queue Q] [--serve all|agent|tools] [--workers N]
                           [--grace SECONDS] [--policy FILE] [--tools FILE_OR_MODULE]...
                           [--base-url URL] [--allow-model NAME]...

`--serve all` (the default) serves the workflows and model calls on `--task-queue`,
and tool calls on `--tool-queue` (default: the same queue). On separate machines:
`--serve agent` on an orchestrator (workflows and model calls, the key in its
environment, no sandbox), `--serve tools --tool-queue Q` on each sandbox host (tool
calls only, no key needed). Model calls are served for the policy's `[run] model`
and each `--allow-model NAME` only: a run naming any other is refused, for good.
SIGTERM or SIGINT stops polling, gives running calls `--grace` seconds to finish,
then kills what is left (each killed call is handed back to Temporal as failed:
retried elsewhere if its tool is idempotent), closes the pool and exits 0 with no
process left. Imports `temporalio` only once it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import socket
import threading
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

from sandbox.errors import SandboxedAgentError

from ..cli_types import positive_int, say, seconds_between
from ..runner import UsageError
from .temporal_connect import add_connection_flags, connect_options, tls_hint
from .temporal_contracts import DEFAULT_NAMESPACE, DEFAULT_TASK_QUEUE

READY = "worker ready"
"""In the line printed on stderr once the worker polls its queues (tests wait on it)."""
DEFAULT_GRACE_S = 10.0
CONNECT_TIMEOUT_S = 30.0


class WorkerFailed(SandboxedAgentError):
    """The worker could not start or serve: the server unreachable, a namespace unknown."""


def add_worker_parser(sub: Any, tool_sources: Callable[[argparse.ArgumentParser], None]) -> None:
    worker = sub.add_parser(
        "worker", help="serve agent runs, model calls and tool calls for a Temporal server"
    )
    worker.add_argument(
        "--temporal",
        required=True,
        metavar="HOST:PORT",
        help="the Temporal server's frontend (a dev server: 127.0.0.1:7233)",
    )
    worker.add_argument("--namespace", default=DEFAULT_NAMESPACE, metavar="NS")
    add_connection_flags(worker)
    worker.add_argument(
        "--task-queue",
        default=DEFAULT_TASK_QUEUE,
        metavar="Q",
        help=f"the queue of workflows and model calls (default: {DEFAULT_TASK_QUEUE})",
    )
    worker.add_argument(
        "--tool-queue", metavar="Q", help="the queue of tool calls (default: the task queue)"
    )
    worker.add_argument(
        "--serve",
        choices=["all", "agent", "tools"],
        default="all",
        help="agent: workflows and model calls only (no sandbox); tools: tool calls only "
        "(no model key); all: both (default)",
    )
    worker.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="at most N tool calls run at once (default: the CPU count)",
    )
    worker.add_argument(
        "--grace",
        type=seconds_between(0, 3600),
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help="on SIGTERM, how long running calls may take to finish before they are "
        f"killed (default: {DEFAULT_GRACE_S:g})",
    )
    worker.add_argument(
        "--allow-model",
        action="append",
        default=[],
        type=_model_name,
        metavar="NAME",
        help="serve model calls for this model too (repeatable); by default only the "
        "policy's [run] model, so that whoever starts runs cannot spend this worker's "
        "key on any model",
    )
    worker.add_argument(
        "--base-url",
        metavar="URL",
        help="the model endpoint (default: OPENAI_BASE_URL, else the policy's [run] base_url)",
    )
    tool_sources(worker)


def parse_target(text: str) -> str:
    """`HOST:PORT` (or `[IPV6]:PORT`) checked, as the SDK takes it; else a UsageError."""
    host, sep, port_text = text.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not bare or (":" in bare and bare == host):
        raise UsageError(
            f"--temporal {text}: give HOST:PORT, like 127.0.0.1:7233 (an IPv6 address in "
            "brackets: [::1]:7233)"
        )
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--temporal {text}: {port_text!r} is not a port (1-65535)")
    return text


def cmd_worker(args: argparse.Namespace) -> int:
    from ..cli import load_setup

    target = parse_target(args.temporal)
    if args.serve == "agent" and (args.tool_queue or args.workers):
        raise UsageError("--serve agent runs no tools: --tool-queue and --workers do not apply")
    if args.serve == "tools" and args.allow_model:
        raise UsageError("--serve tools makes no model calls: --allow-model does not apply")
    tools = args.serve in ("all", "tools")
    registry, policy = load_setup(args.tools, args.policy, args.isolation)
    from .temporal_command import check_served

    check_served(policy, "worker")
    from .temporal_plan import allow_sources  # the runs' workflows load these tools, no others

    allow_sources([*policy.load_tools, *args.tools])
    model_for = None
    if args.serve != "tools":
        model_for = _model_source(policy, args.base_url, args.allow_model)
    try:
        import temporalio  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"worker needs the Temporal SDK ({exc}); install it with: pip install "
            "'sandboxed-agent[temporal]'"
        ) from None
    return asyncio.run(_serve(args, target, policy, registry if tools else None, model_for))


class ModelRefused(SandboxedAgentError):
    """A run asked for a model this worker does not serve."""


def _model_source(
    policy: Any, base_url: str | None, also: list[str]
) -> Callable[[str | None, Any], Any]:
    """The worker's client for a model name and a run's way of asking (`ModelRequest`:
    its policy's `[run]` api, output limit, parallel_tool_calls, required_as, timeouts;
    None: this worker's policy's): its policy's `[run] model` and those of
    `--allow-model` only (the key is the worker's: a run must not choose what it pays
    for); any other name raises ModelRefused. One client per name and way, kept: what
    its server refused is remembered."""
    from ..runner import model_client

    model_client(policy, base_url)  # checks now: an endpoint or a key is set
    clients: dict[tuple[str, Any], Any] = {}
    served = [policy.run.model, *(m for m in also if m != policy.run.model)]

    def model_for(name: str | None, request: Any = None) -> Any:
        name = name or policy.run.model
        if name not in served:
            raise ModelRefused(
                f"this worker serves the model{'s' if len(served) > 1 else ''} "
                f"{', '.join(served)} (its policy's [run] model and --allow-model), not "
                f"{name}: run with one of those, or start workers with --allow-model {name}"
            )
        key = (name, request)
        if key not in clients:
            asked = request.model_dump() if request is not None else {}
            run = policy.run.model_copy(update={"model": name, **asked})
            clients[key] = model_client(policy.model_copy(update={"run": run}), base_url)
        return clients[key]

    return model_for


def _embedder_source(policy: Any, chat_url: str | None, also: list[str]) -> Callable[[str], Any]:
    """The worker's embedder for a model name: its policy's `[run] embeddings_model`
    and those of `--allow-model` only (its key: a run must not choose what it pays
    for), at its policy's `embeddings_base_url` or else its chat endpoint, as a local
    run's; any other name raises ModelRefused."""
    from ..embeddings import Embedder

    served = [m for m in (policy.run.embeddings_model, *also) if m]
    endpoint = policy.run.embeddings_base_url or chat_url
    embedders: dict[str, Any] = {}

    def embedder_for(name: str) -> Any:
        if name not in served:
            raise ModelRefused(
                f"this worker embeds with {', '.join(served) or 'no model'} (its policy's "
                f"[run] embeddings_model and --allow-model), not {name}: run with one of "
                f"those, or start workers with --allow-model {name}"
            )
        if name not in embedders:
            key = os.environ.get("OPENAI_API_KEY")
            embedders[name] = Embedder(model=name, base_url=endpoint, api_key=key)
        return embedders[name]

    return embedder_for


async def _serve(
    args: argparse.Namespace,
    target: str,
    policy: Any,
    registry: Any,
    model_for: Callable[[str | None, Any], Any] | None,
) -> int:
    from sandbox import Pool

    # Before the pool: a bad address fails fast.
    client = await _connect(target, args.namespace, connect_options(args))
    # What the Temporal worker needs is imported while the pool's zygote starts (this
    # thread only waits for it); the pool itself must be started from this thread,
    # which its processes' parent-death signal is tied to.
    preparing = threading.Thread(target=_prepare, daemon=True)
    preparing.start()
    with ExitStack() as stack:
        pool = None
        if registry is not None:
            pool = stack.enter_context(
                Pool(policy, registry=registry, size=args.workers, **policy.pool_options())
            )
        preparing.join()
        return await _run(args, target, client, policy, pool, model_for)


_prepared: dict[str, str] = {}


def _prepare() -> None:
    """The imports of `_run`, and the worker's build id."""
    import temporalio.worker  # noqa: F401

    from . import temporal_activities, temporal_workflows  # noqa: F401

    _prepared["build_id"] = build_id()


PACKAGES = ("agent", "policies", "sandbox", "tools")


def build_id() -> str:
    """The worker's build id: our version and a hash of our packages' sources. Without
    one the SDK hashes the code of every module loaded (0.8 s of each start, measured)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    import temporalio

    digest = hashlib.sha256(temporalio.__version__.encode())
    root = Path(__file__).resolve().parents[2]
    for package in PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode() + b"\0")
            digest.update(source.read_bytes())
    try:
        ours = version("sandboxed-agent")
    except PackageNotFoundError:
        ours = "unknown"
    return f"sandboxed-agent-{ours}-{digest.hexdigest()[:16]}"


async def _run(
    args: argparse.Namespace,
    target: str,
    client: Any,
    policy: Any,
    pool: Any,
    model_for: Callable[[str | None, Any], Any] | None,
) -> int:
    from temporalio.worker import Worker

    from .temporal_activities import SandboxActivities

    identity = f"{os.getpid()}@{socket.gethostname()}"
    embedder_for = None
    if model_for is not None:
        embedder_for = _embedder_source(policy, model_for(None, None).base_url, args.allow_model)
    activities = SandboxActivities(
        policy, pool=pool, model=model_for, embedder=embedder_for, identity=identity
    )
    tool_queue = args.tool_queue or args.task_queue
    queues: dict[str, dict[str, Any]] = {}
    if model_for is not None:
        model_calls = [activities.model_call, activities.embed]
        queues[args.task_queue] = {**_workflows(), "activities": model_calls}
    if pool is not None:
        queues.setdefault(tool_queue, {"workflows": [], "activities": []})
        queues[tool_queue]["activities"].append(activities.tool_call)
    workers = [
        Worker(
            client,
            task_queue=queue,
            identity=identity,
            max_concurrent_activities=pool.size if pool is not None else None,
            graceful_shutdown_timeout=timedelta(seconds=args.grace),
            build_id=_prepared.get("build_id") or build_id(),
            **served,
        )
        for queue, served in queues.items()
    ]
    stop = asyncio.Event()
    reason: list[str] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda sig=sig: (reason.append(sig.name), stop.set()))
    running = [asyncio.create_task(worker.run()) for worker in workers]
    stopping = asyncio.create_task(stop.wait())
    say(
        f"{READY}: {identity} on {target} namespace {args.namespace}, "
        + "; ".join(f"{q}: {_served(s)}" for q, s in queues.items())
    )
    await asyncio.wait([*running, stopping], return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    outcomes = await asyncio.gather(*running, return_exceptions=True)
    stopping.cancel()
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if pool is not None:
        pool.close()  # every sandbox worker killed and reaped before the line below
    if failed and not reason:
        raise WorkerFailed(f"the worker stopped: {_one_line(failed[0])}")
    calls = f"{activities.calls} call{'' if activities.calls == 1 else 's'}"
    say(f"stopped ({reason[0] if reason else 'ended'}) after {calls}; no worker left")
    return 0


async def _connect(target: str, namespace: str, options: dict[str, Any]) -> Any:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client
    from temporalio.service import RPCError

    from .temporal_contracts import data_converter

    try:
        client = await asyncio.wait_for(
            Client.connect(target, namespace=namespace, data_converter=data_converter(), **options),
            CONNECT_TIMEOUT_S,
        )
    except TimeoutError:
        raise WorkerFailed(
            f"the Temporal server at {target} did not answer within {CONNECT_TIMEOUT_S:g} s; "
            "check --temporal and that nothing drops the connection"
        ) from None
    except Exception as exc:
        raise WorkerFailed(
            f"cannot reach the Temporal server at {target} ({_one_line(exc)}){tls_hint(options)}"
            "; start one (temporal server start-dev) or check --temporal"
        ) from None
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
    except RPCError as exc:
        raise WorkerFailed(
            f"--namespace {namespace}: the server at {target} refused it ({exc.message}); "
            "create it (temporal operator namespace create) or pick another"
        ) from None
    return client


def _workflows() -> dict[str, Any]:
    """`Worker` keywords for the agent's workflows (`temporal_workflows.WORKFLOWS`), with
    the runner that passes our packages through the workflow sandbox; none without it."""
    name = f"{__package__}.temporal_workflows"
    try:
        temporal_workflows = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return {"workflows": []}
    found: dict[str, Any] = {"workflows": list(getattr(temporal_workflows, "WORKFLOWS", []))}
    runner = getattr(temporal_workflows, "workflow_runner", None)
    if found["workflows"] and runner is not None:
        found["workflow_runner"] = runner()
    return found


def _served(served: dict[str, Any]) -> str:
    names = [w.__name__ for w in served["workflows"]]
    names += [getattr(a, "__temporal_activity_definition").name for a in served["activities"]]
    return ", ".join(names)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "grpc-status header missing" in text:
        return "something answered there, but not a Temporal server's gRPC"
    for known in ("Connection refused", "dns error", "timed out", "Connection reset"):
        if known.lower() in text.lower():
            return known.lower()
    return text[:300]


def _model_name(text: str) -> str:
    name = text.strip()
    if not name or not name.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r} is not a model name")
    return name
