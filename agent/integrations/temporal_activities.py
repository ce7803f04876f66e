"""The worker's two activities: one sandboxed tool call, one model call.

    activities = SandboxActivities(policy, pool=pool, model=client_for, identity="w1")
    Worker(client, task_queue=q, activities=[activities.tool_call, activities.model_call])

A tool call runs in our `Pool` on a thread while the activity heartbeats in the
background (at half the heartbeat timeout, so a cancellation stays deliverable:
Temporal only delivers it on a heartbeat). Temporal's cancellation is cooperative
and cannot stop a thread; here it cancels the call's `CancelToken`, which kills the
tool's worker and its whole tree, waits until they are reaped, and re-raises. A
worker shutting down does the same once its grace is over, and hands the call back
as a failure (`WORKER_SHUTDOWN`): an idempotent call is then tried on another
worker, any other one ends as lost.

What the model should see (a timeout, a limit, the tool's own exception, a denial)
comes back as a result, never as an activity failure that Temporal would retry.
`RunError` and `PolicyError` fail for good (`ApplicationError(non_retryable=True)`).
A non-idempotent call delivered a second time is refused (`NOT_RERUN`) whatever its
options say: its first try may have had effects. The model's key is the worker's own
(its environment); nothing of it goes into the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import anyio.to_thread
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from policies import Policy
from sandbox import Pool, ToolResult
from sandbox.aio import run_cancellable
from sandbox.cancel import CancelToken
from sandbox.errors import (
    BadArguments,
    Denied,
    PolicyError,
    RunError,
    SandboxedAgentError,
    ToolCallError,
)
from sandbox.protocol import ToolError
from tools import ArgumentError
from tools.context import EMBEDDING

from ..binding import bind
from ..embeddings import Embedder
from ..model import ModelClient
from ..scrubbing import scrub
from ..terminal import safe
from .temporal_contracts import (
    EMBED_ACTIVITY,
    HEARTBEAT_TIMEOUT_S,
    MODEL_ACTIVITY,
    NOT_RERUN,
    POLICY_ERROR,
    RUN_ERROR,
    TOOL_ACTIVITY,
    WORKER_SHUTDOWN,
    EmbedInput,
    EmbedOutput,
    ModelCallInput,
    ModelCallOutput,
    ModelRequest,
    ToolCallInput,
    ToolCallOutput,
)

RUN_SETTINGS = frozenset({"memory_namespace", EMBEDDING})
"""What a run may set for its calls: what a local agent adds itself (`--memory-namespace`,
an argument's embedding). Every other setting (`max_read_bytes`, a tool's own) is this
worker's policy's: whoever can start a workflow must not loosen the tool host's."""

ModelFor = Callable[[str | None, ModelRequest | None], ModelClient]
"""The worker's client for a model name (None: its policy's), asking as the run's
policy says (None: as the worker's); endpoint and key its own. A `SandboxedAgentError`
for a model it does not serve: the call fails for good."""


EmbedderFor = Callable[[str], Embedder]
"""The worker's embedder for a model name (a run's `[run] embeddings_model`); endpoint
and key its own. A `SandboxedAgentError` for a model it does not serve."""


class EndpointRefused(SandboxedAgentError):
    """A run's policy names a model endpoint that is not this worker's."""


def _same_endpoint(wanted: str | None, own: str | None, key: str = "base_url") -> None:
    """The run's `[run] base_url` (or `key`), if it names one, must be this worker's
    endpoint: the call goes to the worker's (with its key), never to one a run chooses."""
    if wanted is None or wanted.rstrip("/") == (own or "").rstrip("/"):
        return
    raise EndpointRefused(
        f"the run's policy names the model endpoint {safe(wanted)} ([run] {key}), and "
        f"this worker's is {safe(own or 'the OpenAI API')}: start workers for that endpoint "
        "(--base-url), or drop base_url from the run's policy"
    )


class SandboxActivities:
    """Bound methods to register: `tool_call` needs a pool, `model_call` a model."""

    def __init__(
        self,
        policy: Policy,
        *,
        pool: Pool | None = None,
        model: ModelFor | None = None,
        embedder: EmbedderFor | None = None,
        identity: str = "",
    ) -> None:
        self.policy = policy
        self.pool = pool
        self.model = model
        self.embedder = embedder
        self.identity = identity
        self.calls = 0
        """Tool and model calls this worker has taken (for its closing line)."""

    @activity.defn(name=TOOL_ACTIVITY)
    async def tool_call(self, call: ToolCallInput) -> ToolCallOutput:
        assert self.pool is not None, "this worker serves no tool calls"
        self.calls += 1
        info = activity.info()
        if info.attempt > 1 and not self.policy.idempotent(call.tool):
            raise _failure(
                f"{call.tool} is not idempotent and an earlier try of call {call.call_id} may "
                "have run (its worker went away): it is not run again without a person's "
                "approval",
                NOT_RERUN,
                non_retryable=True,
            )
        checked = _foreign_settings(call) or self._approved(call)
        if isinstance(checked, ToolResult):
            return ToolCallOutput.from_result(checked, self.identity)
        # An approved call runs the very dict that was hashed, not the text again.
        arguments = call.arguments if checked is None else checked
        pool, token = self.pool, CancelToken()
        limits = None
        if call.tool in pool.registry:
            limits = self.policy.limits_for(call.tool)
            if call.timeout_s is not None and call.timeout_s < limits.timeout_s:
                limits = limits.model_copy(update={"timeout_s": call.timeout_s})

        def run() -> ToolResult:
            return pool.call(
                call.tool,
                arguments,
                limits=limits,
                settings=call.settings or None,
                cancel=token,
            )

        async with _heartbeating(info.heartbeat_timeout):
            try:
                result = await run_cancellable(run, token)
            except asyncio.CancelledError:
                # The tool and its tree are dead and reaped by now (run_cancellable).
                if activity.is_worker_shutdown():
                    raise _failure(
                        f"the worker running {call.tool} (call {call.call_id}) shut down; "
                        "the call was killed before it finished",
                        WORKER_SHUTDOWN,
                    ) from None
                raise
            except PolicyError as exc:
                raise _failure(str(exc), POLICY_ERROR, non_retryable=True) from None
        return ToolCallOutput.from_result(result, self.identity)

    @activity.defn(name=MODEL_ACTIVITY)
    async def model_call(self, call: ModelCallInput) -> ModelCallOutput:
        assert self.model is not None, "this worker serves no model calls"
        self.calls += 1
        try:
            client = self.model(call.model, call.request)
            _same_endpoint(call.base_url, client.base_url)
        except SandboxedAgentError as exc:  # a model or an endpoint this worker does not serve
            raise _failure(str(exc), RUN_ERROR, non_retryable=True) from None
        client.refused_before(call.refused)

        def complete() -> ModelCallOutput:
            turn = client.complete(
                call.messages, call.tools, call.timeout_s, call.tool_choice, call.offered
            )
            return ModelCallOutput.from_turn(turn)

        async with _heartbeating(activity.info().heartbeat_timeout):
            try:
                # An HTTP request cannot be killed; abandoned on cancel, it ends by its
                # own timeout, which is at most `timeout_s`.
                return await anyio.to_thread.run_sync(complete, abandon_on_cancel=True)
            except RunError as exc:
                raise _failure(str(exc), RUN_ERROR, non_retryable=True) from None

    @activity.defn(name=EMBED_ACTIVITY)
    async def embed(self, call: EmbedInput) -> EmbedOutput:
        """The vector of a tool's argument, by the worker's embeddings endpoint and key;
        None when it could not be had (the tool falls back, as locally)."""
        assert self.embedder is not None, "this worker serves no embeddings"
        self.calls += 1
        try:
            embedder = self.embedder(call.model)
            _same_endpoint(call.base_url, embedder.base_url, "embeddings_base_url")
        except SandboxedAgentError as exc:  # a model or an endpoint this worker does not serve
            raise _failure(str(exc), RUN_ERROR, non_retryable=True) from None

        def embed() -> EmbedOutput:
            vector = embedder.embed(call.text, call.timeout_s)
            return EmbedOutput(vector=vector, error=None if vector else embedder.last_error)

        return await anyio.to_thread.run_sync(embed, abandon_on_cancel=True)

    def _approved(self, call: ToolCallInput) -> ToolResult | dict[str, Any] | None:
        """For a tool that needs approval: `denied` unless the approval names the very
        arguments asked for, `bad_arguments` when they do not bind (no approval can
        name them: a validator that changes what it validates passes the pool's single
        check), else the bound arguments to run. None: no approval needed (the pool
        answers for bad arguments)."""
        assert self.pool is not None
        if call.tool not in self.pool.registry or not self.policy.requires_approval(call.tool):
            return None
        try:
            bound = bind(self.pool.registry.get(call.tool), call.arguments)
        except ArgumentError as exc:
            return _refusal(call.tool, BadArguments(call.tool, str(exc)))
        if call.approved_sha256 == bound.sha256:
            return bound.args
        why = (
            "no approval was given"
            if call.approved_sha256 is None
            else "the approval given was for other arguments"
        )
        return _refusal(
            call.tool,
            Denied(call.tool, f"a person must approve {call.tool} with these arguments; {why}"),
        )


def _foreign_settings(call: ToolCallInput) -> ToolResult | None:
    """`denied` for a call whose settings reach past `RUN_SETTINGS`."""
    foreign = sorted(set(call.settings) - RUN_SETTINGS)
    namespace = call.settings.get("memory_namespace", "")
    if not foreign and isinstance(namespace, str):
        return None
    why = (
        f"the run set {', '.join(safe(k) for k in foreign)}, which only this worker's "
        f"policy sets (a run may set only {', '.join(sorted(RUN_SETTINGS))})"
        if foreign
        else "memory_namespace must be a string"
    )
    return _refusal(call.tool, Denied(call.tool, why))


def _refusal(tool: str, exc: ToolCallError) -> ToolResult:
    return ToolResult(
        tool=tool,
        ok=False,
        output=None,
        error=ToolError(kind=exc.kind, message=exc.message),
        duration_ms=0.0,
        error_origin="agent",
    )


def _failure(message: str, kind: str, *, non_retryable: bool = False) -> ApplicationError:
    """An activity failure we expect (not a bug): one line on the worker's stderr, and
    BENIGN, so that the SDK logs it without a traceback."""
    print(f"sandboxed-agent: {safe(scrub(f'{kind}: {message}'))}", file=sys.stderr, flush=True)
    return ApplicationError(
        message,
        type=kind,
        non_retryable=non_retryable,
        category=ApplicationErrorCategory.BENIGN,
    )


@contextlib.asynccontextmanager
async def _heartbeating(timeout: timedelta | None) -> AsyncIterator[None]:
    """Heartbeat every half of `timeout` until the block ends."""
    every = (timeout.total_seconds() if timeout else HEARTBEAT_TIMEOUT_S) / 2

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
