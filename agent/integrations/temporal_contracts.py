"""What crosses Temporal between the workflow and the workers: names, payloads, options.

    await workflow.execute_activity(
        TOOL_ACTIVITY,
        ToolCallInput(run_id=rid, call_id=cid, tool="calculate", arguments='{"expression": "6*7"}'),
        result_type=ToolCallOutput,
        **tool_activity_options(policy, "calculate", task_queue=tool_queue),
    )

Every payload is a frozen pydantic model, sent with
`temporalio.contrib.pydantic.pydantic_data_converter` (`data_converter()`): the client
and every worker must use it. Nothing here holds a key or a Pool; the workflow imports
this module, so it does nothing at import but define things.

Retries follow the policy. A call whose worker died (no heartbeat, or past its
start-to-close timeout) is tried again only for a tool the policy marks `idempotent`;
any other ends at once, and `lost_worker(exc)` tells the workflow so, that it may ask
a person before running it again. A tool's own failures (timeout, limits, its
exception) are results, never retried by Temporal: the model sees them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies import Policy
from sandbox.protocol import ToolError

TOOL_ACTIVITY = "sandboxed_agent.tool_call"
MODEL_ACTIVITY = "sandboxed_agent.model_call"
EMBED_ACTIVITY = "sandboxed_agent.embed"
DEFAULT_TASK_QUEUE = "sandboxed-agent"
"""Workflows, model calls and (unless `--tool-queue` says otherwise) tool calls."""
DEFAULT_NAMESPACE = "default"

START_MARGIN_S = 10.0
"""Start-to-close = the tool's `timeout_s` plus this: the pool kills the tool at its
deadline and still has time to reap it and report `timeout` before Temporal gives up."""
HEARTBEAT_TIMEOUT_S = 10.0
"""A worker that sends no heartbeat for this long is taken for dead (the activity
heartbeats every half of it); also how soon a cancellation reaches a running call."""
IDEMPOTENT_ATTEMPTS = 3
"""Tries of an idempotent call whose worker died (the first one included)."""

NOT_RERUN = "ToolCallNotRerun"
"""`ApplicationError.type` of a non-idempotent call delivered a second time (the
activity refuses it even if the options allowed a retry)."""
WORKER_SHUTDOWN = "ToolCallWorkerShutdown"
"""`ApplicationError.type` of a call its worker killed as it shut down (past its grace):
retried elsewhere for an idempotent tool, else lost (see `lost_worker`)."""
RUN_ERROR = "RunError"
"""`ApplicationError.type` of a model call that failed for good (endpoint, key, budget)."""
POLICY_ERROR = "PolicyError"
NON_RETRYABLE = (NOT_RERUN, RUN_ERROR, POLICY_ERROR)


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCallInput(_Payload):
    run_id: str
    call_id: str
    tool: str
    arguments: str
    """The call's arguments as a JSON object (the bound, canonical form)."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Added to the policy's settings for this call (as `Pool.call(settings=)`)."""
    timeout_s: float | None = Field(None, gt=0)
    """At most this long, when the run's wall budget leaves less than the tool's own
    `timeout_s` (never longer than the worker's policy allows)."""
    approved_sha256: str | None = None
    """For a tool whose policy requires approval: the hash (`agent.binding`) of the
    arguments a person approved. The worker checks it against what it is asked to run,
    and answers `denied` without running anything when they differ."""


class ToolCallOutput(_Payload):
    """`sandbox.pool.ToolResult`'s fields, as JSON."""

    tool: str
    ok: bool
    output: str | None
    error: ToolError | None
    duration_ms: float
    worker_pid: int | None = None
    error_origin: str | None = None
    worker: str = ""
    """The Temporal worker's identity (host and pid) that ran the call."""

    @classmethod
    def from_result(cls, result: Any, worker: str = "") -> ToolCallOutput:
        return cls(
            tool=result.tool,
            ok=result.ok,
            output=result.output,
            error=result.error,
            duration_ms=result.duration_ms,
            worker_pid=result.worker_pid,
            error_origin=result.error_origin,
            worker=worker,
        )

    def to_result(self) -> Any:
        """The `sandbox.pool.ToolResult` (imported here: the pool is not workflow code)."""
        from sandbox.pool import ToolResult

        return ToolResult(
            tool=self.tool,
            ok=self.ok,
            output=self.output,
            error=self.error,
            duration_ms=self.duration_ms,
            worker_pid=self.worker_pid,
            error_origin=self.error_origin,  # type: ignore[arg-type]
        )


class ModelRequest(_Payload):
    """How the run's policy asks its model (`[run]`), as a local run's client would:
    the worker makes the call so, with its own endpoint and key."""

    api: Literal["chat", "responses"] = "chat"
    max_output_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    required_as: Literal["tool_choice", "json_schema"] = "tool_choice"
    tools_sent: Literal["offered", "all"] = "offered"
    request_timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)

    @classmethod
    def of(cls, run: Any) -> ModelRequest:
        """From a `policies.RunPolicy`."""
        return cls(**{name: getattr(run, name) for name in cls.model_fields})


class ModelCallInput(_Payload):
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    timeout_s: float = Field(gt=0)
    """What is left of the run's budget for this call (the client's own retries fit)."""
    tool_choice: str | None = None
    offered: list[str] | None = None
    """The names of `tools` this call may call (None: all of them)."""
    model: str | None = None
    """None: the worker's policy's `[run] model`. The endpoint and key are the worker's."""
    request: ModelRequest | None = None
    """The run's policy's way of asking; None: the worker's policy's."""
    base_url: str | None = None
    """The run's policy's `[run] base_url`: a worker whose endpoint is another refuses
    the call (the endpoint is the worker's, with its key; a run may not choose it)."""
    refused: list[str] = Field(default_factory=list)
    """What the model's server refused earlier in the run (`ModelTurn.tool_choice_refused`),
    maybe on another worker: not sent again, as a local run's client does not."""


class ModelCallOutput(_Payload):
    """`agent.model.ModelTurn`'s fields, as JSON."""

    message: dict[str, Any]
    finish_reason: str
    usage: dict[str, int]
    latency_s: float
    model: str
    text_calls: str | None = None
    text_call_repairs: tuple[str, ...] = ()
    tool_choice_refused: str | None = None

    @classmethod
    def from_turn(cls, turn: Any) -> ModelCallOutput:
        return cls(
            message=turn.message,
            finish_reason=turn.finish_reason,
            usage={
                "input_tokens": turn.usage.input_tokens,
                "output_tokens": turn.usage.output_tokens,
                "cached_tokens": turn.usage.cached_tokens,
            },
            latency_s=turn.latency_s,
            model=turn.model,
            text_calls=turn.text_calls,
            text_call_repairs=tuple(turn.text_call_repairs),
            tool_choice_refused=turn.tool_choice_refused,
        )

    def to_turn(self) -> Any:
        """The `agent.model.ModelTurn`."""
        from agent.model import ModelTurn, Usage

        return ModelTurn(
            message=self.message,
            finish_reason=self.finish_reason,
            usage=Usage(**self.usage),
            latency_s=self.latency_s,
            model=self.model,
            text_calls=self.text_calls,
            text_call_repairs=self.text_call_repairs,
            tool_choice_refused=self.tool_choice_refused,
        )


class EmbedInput(_Payload):
    """A tool argument to embed for a call's settings (`@tool(embed=...)`), as the
    run's `[run] embeddings_model` asks; the endpoint and key are the worker's."""

    text: str
    model: str
    timeout_s: float = Field(gt=0)
    base_url: str | None = None
    """The run's `[run] embeddings_base_url`: a worker whose endpoint is another refuses."""


class EmbedOutput(_Payload):
    vector: list[float] | None
    """None: not embedded (`error` says why); the tool falls back, as in a local run."""
    error: str | None = None


def embed_activity_options(timeout_s: float) -> dict[str, Any]:
    """`workflow.execute_activity` keywords for one embedding taking at most
    `timeout_s`; it has no effects, so a worker that died is replaced."""
    from temporalio.common import RetryPolicy

    return {
        "start_to_close_timeout": timedelta(seconds=timeout_s + START_MARGIN_S),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            maximum_attempts=IDEMPOTENT_ATTEMPTS,
            non_retryable_error_types=list(NON_RETRYABLE),
        ),
    }


def tool_activity_options(
    policy: Policy,
    tool: str,
    *,
    task_queue: str | None = None,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
) -> dict[str, Any]:
    """`workflow.execute_activity` keywords for one call of `tool`: its deadline from
    the policy, heartbeats, and retries only for an idempotent tool whose worker died."""
    from temporalio.common import RetryPolicy

    attempts = IDEMPOTENT_ATTEMPTS if policy.idempotent(tool) else 1
    options: dict[str, Any] = {
        "start_to_close_timeout": timedelta(
            seconds=policy.limits_for(tool).timeout_s + START_MARGIN_S
        ),
        "heartbeat_timeout": timedelta(seconds=heartbeat_timeout_s),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            maximum_attempts=attempts,
            non_retryable_error_types=list(NON_RETRYABLE),
        ),
    }
    if task_queue:
        options["task_queue"] = task_queue
    return options


def model_activity_options(
    policy: Policy,
    *,
    timeout_s: float | None = None,
    task_queue: str | None = None,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
) -> dict[str, Any]:
    """`workflow.execute_activity` keywords for one model call taking at most
    `timeout_s` (default: the policy's request timeout with every retry). A model call
    has no effects, so a call whose worker died is tried again on another."""
    from temporalio.common import RetryPolicy

    run = policy.run
    budget = timeout_s if timeout_s is not None else run.request_timeout_s * (run.max_retries + 1)
    options: dict[str, Any] = {
        "start_to_close_timeout": timedelta(seconds=budget + START_MARGIN_S),
        "heartbeat_timeout": timedelta(seconds=heartbeat_timeout_s),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            maximum_attempts=IDEMPOTENT_ATTEMPTS,
            non_retryable_error_types=list(NON_RETRYABLE),
        ),
    }
    if task_queue:
        options["task_queue"] = task_queue
    return options


def lost_worker(exc: BaseException) -> bool:
    """The activity failed because its worker went away (no heartbeat, past its
    deadline, shut down mid-call) or refused a second delivery: the call may have run,
    in part or whole.
    For a non-idempotent tool the workflow asks before running it again."""
    from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError):
        return cause.type in (NOT_RERUN, WORKER_SHUTDOWN)
    return isinstance(cause, TimeoutError) and cause.type in (
        TimeoutType.HEARTBEAT,
        TimeoutType.START_TO_CLOSE,
    )


def data_converter() -> Any:
    """The converter every client and worker of ours uses."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    return pydantic_data_converter
