"""The pool: run one tool call in a worker and always come back with a `ToolResult`.

    with Pool(registry=Registry.default()) as pool:
        result = pool.call("calculate", {"expression": "2 + 2"})

Untrusted tools get a fresh worker for every call (a pre-forked spare, so it costs
little); trusted ones (`Limits.reuse_worker`) may run in a warm worker that served
before, only for a call with the same `Call.reuse_key` (tool, limits, root, data_dir,
settings), only after it cleaned up, and only if its socket held nothing but its
answer. At most `size` calls run at once. Every way a call can fail is translated
here, once, into a `ToolError` with a stable kind.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Collection, Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.context import ToolContext
from tools.registry import ArgumentError, Registry, ToolSpec

from . import _sched, data_quota, reaper
from .cancel import CancelToken, holding
from .channel import Deadline, Oversized, PeerGone, send_frame
from .claims import WORKER_KINDS, memory_evidence
from .cpu_budget import CpuBudget, CpuSpent, read_answer
from .egress import Connection, Egress, EgressConfig
from .errors import (
    BadArguments,
    CpuLimit,
    DataLimit,
    ErrorKind,
    MemoryLimit,
    OutputLimit,
    SandboxUnavailable,
    ToolCallError,
    ToolTimeout,
    UnknownTool,
    WorkerCrashed,
    error_for,
)
from .layers import check_layer_names, orchestrator_traceable, unwalled_signals
from .limits import Limits, NetworkMode
from .protocol import Call, Layer, Profile, Result, ToolError, again_frame
from .template import Template, WorkerHandle
from .warm_idle import WARM_IDLE_S, IdleBound

SPARE_TIMEOUT_S = 60.0
"""Longest wait for a spare worker; only reached on a machine that cannot fork."""
KILL_WAIT_S = 10.0
"""How long a SIGKILLed worker may take to be gone (a huge address space to free)."""
ACCEPT_IN_POLICY = (
    "set accept_unwalled_signals = true at the top of the policy file (before any [table])"
)
"""How a policy (or `Pool(accept_unwalled_signals=True)`) accepts unwalled signals."""
LOG_CHARS = 4000
"""How many bytes of a call's stdout/stderr the result keeps."""

_log = logging.getLogger(__name__)
_short_slices = _sched.ShortSlices()


class ToolResult(BaseModel):
    """What a call produced: an output, or an error with a stable kind.

    Its JSON form (without the excluded fields) is the `sandboxed-agent tool` contract.
    """

    model_config = ConfigDict(frozen=True)

    tool: str
    ok: bool
    output: str | None
    error: ToolError | None
    duration_ms: float
    logs: str = Field("", exclude=True)
    """Start of what the tool printed on stdout/stderr."""
    worker_pid: int | None = Field(None, exclude=True)
    connections: tuple[Connection, ...] = Field((), exclude=True)
    """Each connection a tool with a network allowlist attempted, as the proxy saw it."""
    error_origin: Literal["sandbox", "worker", "agent"] | None = Field(None, exclude=True)
    """Who named the error's kind: the pool itself (a deadline, a limit, a death, a bad
    call), the worker's own frame (the tool's exception, or anything the tool wrote in
    its place), or the agent (a denial, arguments it refused)."""

    def raise_for_error(self) -> None:
        """Raise the typed `ToolCallError` (`ToolTimeout`, `MemoryLimit`, ...) if failed."""
        if self.error is not None:
            raise error_for(self.error.kind, self.tool, self.error.message)

    @property
    def text(self) -> str:
        """What the model is shown: the output, or the error's kind and message."""
        if self.ok:
            return self.output or ""
        assert self.error is not None
        return f"error ({self.error.kind}): {self.error.message}"


class LimitsPolicy(Protocol):
    """What the pool needs from a policy (`policies.Policy` is one)."""

    def limits_for(self, tool: str) -> Limits: ...
    def context_for(self, tool: str) -> ToolContext: ...


class DefaultLimits:
    """Default `Limits` for every tool and no document root (the same objects on each
    call, as a policy's: the pool works out what a call of them sends once)."""

    _limits = Limits()
    _context = ToolContext()

    def limits_for(self, tool: str) -> Limits:
        return self._limits

    def context_for(self, tool: str) -> ToolContext:
        return self._context


ProcessTree = Literal["auto", "pid-namespace", "subreaper"]
Isolation = Literal["best-effort", "strict"]


class IsolationWarning(UserWarning):
    """A layer of isolation is unavailable here; `sandboxed-agent doctor` says why."""


class Pool:
    """Workers for tool calls; a context manager. Thread-safe: call from many threads."""

    def __init__(
        self,
        policy: LimitsPolicy | None = None,
        *,
        registry: Registry | None = None,
        size: int | None = None,
        spares: int = 2,
        process_tree: ProcessTree = "auto",
        cgroups: bool = True,
        isolation: Isolation = "best-effort",
        read_paths: list[str] | None = None,
        disable: Collection[str] = (),
        egress: EgressConfig | None = None,
        accept_unwalled_signals: bool = False,
        warm_idle_s: float = WARM_IDLE_S,
    ) -> None:
        """`accept_unwalled_signals`: start even where no layer keeps a tool's signals
        inside its call (`sandbox.layers.unwalled_signals`), for a machine that is
        itself the wall (a throwaway VM or container running nothing else).
        `warm_idle_s`: a warm worker waiting longer for its next call is killed."""
        self.registry = registry if registry is not None else Registry.default()
        self.policy: LimitsPolicy = policy if policy is not None else DefaultLimits()
        self.size = size or os.cpu_count() or 2
        if self.size < 1 or spares < 1:
            raise ValueError("a pool needs size >= 1 and spares >= 1")
        if not warm_idle_s > 0:
            raise ValueError(f"warm_idle_s must be a number of seconds above 0 (got {warm_idle_s})")
        self._warm_idle_s = warm_idle_s
        self._idle_bound = IdleBound(self._expire_idle)
        disabled = set(check_layer_names(disable))
        if process_tree == "subreaper":
            disabled.add("pid_namespace")
        if not cgroups:
            disabled |= {"cgroup_pids", "cgroup_memory", "cgroup_cpu"}
        self._template_options = {
            "disabled": sorted(disabled),
            "read_paths": list(read_paths or []),
        }
        self._spares = spares
        self._egress_config = egress or EgressConfig()
        self._egress: Egress | None = None
        self._template = Template(list(self.registry.sources), **self._template_options)
        missing = {
            name: layer
            for name, layer in self.layers.items()
            if not layer.active and layer.required
        }
        refused = _root_without_walls(self.layers) or orchestrator_traceable(self.layers)
        if not accept_unwalled_signals:
            refused = refused or unwalled_signals(self.layers, ACCEPT_IN_POLICY)
        if refused:
            self._template.close()
            raise SandboxUnavailable(refused)
        if process_tree == "pid-namespace" and "pid_namespace" in missing:
            self._template.close()
            raise SandboxUnavailable("PID namespaces are not available on this machine")
        if missing and isolation == "strict":
            self._template.close()
            names = "; ".join(f"{name} ({layer.detail})" for name, layer in missing.items())
            raise SandboxUnavailable(f"isolation is strict and these layers are missing: {names}")
        if missing:
            names = ", ".join(missing)
            warnings.warn(
                f"sandbox layers unavailable here: {names} (see: sandboxed-agent doctor)",
                IsolationWarning,
                stacklevel=2,
            )
        self._slots = _Slots(self.size)
        self._warm: dict[str, list[WorkerHandle]] = {}
        """Idle reusable workers by the `Call.reuse_key` of the calls they served."""
        self._busy: set[WorkerHandle] = set()
        self._lock = threading.Lock()
        self._after_call = _AfterCall()
        self._shapes: dict[tuple[str, int, int], _Shape] = {}
        self._closed = False
        for _ in range(spares):
            self._template.request_worker()
        _live_pools.add(self)
        _install_signal_handlers()

    # -- public ---------------------------------------------------------------

    @property
    def layers(self) -> dict[str, Layer]:
        """Each isolation layer: active here or not, and why (see `sandbox.layers`)."""
        return self._template.ready.layers

    @property
    def pid_namespaces(self) -> bool:
        """Each worker is pid 1 of its own PID namespace (else: subreaper + tree kill)."""
        return self.layers["pid_namespace"].active

    @property
    def template_pid(self) -> int:
        return self._template.pid

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        limits: Limits | None = None,
        settings: Mapping[str, Any] | None = None,
        cancel: CancelToken | None = None,
    ) -> ToolResult:
        """Run `tool` with the model's `arguments` (a dict or a JSON string). `settings`
        adds to the policy's for this call (the agent passes an argument's embedding).
        `cancel.cancel()`, from any thread, kills the call's worker and tree at once;
        the call then raises `CallCancelled` instead of returning (`sandbox.cancel`)."""
        start = time.perf_counter()
        try:
            shape = self._shape(tool, limits, settings)
            call = shape.call(arguments)
        except ToolCallError as exc:
            return _failed(tool, exc, start)
        _short_slices.ensure()  # woken at once by the answer (`sandbox._sched`)
        try:
            return self._call(call, shape, cancel, start)
        finally:
            self._replenish()

    def _call(
        self, call: Call, shape: _Shape, cancel: CancelToken | None, start: float
    ) -> ToolResult:
        tool = call.tool
        with self._slots, holding(cancel, tool) as armed:
            if self._closed:
                return _failed(tool, WorkerCrashed(tool, "the pool is shut down"), start)
            if call.data_dir:
                try:
                    left = data_quota.check_before(tool, call.data_dir, call.limits)
                except data_quota.QuotaReached as exc:
                    return _failed(tool, DataLimit(tool, str(exc)), start)
                call = call.model_copy(update={"data_left": left})
            try:
                worker = self._take(call, shape)
            except SandboxUnavailable as exc:
                return _failed(tool, WorkerCrashed(tool, f"no worker available: {exc}"), start)
            try:
                armed(lambda: self._signal(worker))
                result, keep, connections = self._run_networked(worker, call)
            finally:
                armed(None)  # before the worker is kept or closed: no signal may follow
                with self._lock:
                    self._busy.discard(worker)
            keep = keep and not (cancel is not None and cancel.cancelled)
            keep = keep and worker.calls < call.limits.max_warm_calls
            logs = worker.read_log(LOG_CHARS)
            now = time.monotonic()
            if keep and now < worker.warm_until and not self._closed and self._idle_bound.started():
                worker.idle_since = now
                with self._lock:
                    self._warm.setdefault(shape.key, []).append(worker)
                self._idle_bound.wake(self._due(worker))
            else:
                # And what it started: nothing writes any more.
                self._retire(worker, quick=call.data_dir is None)
            if call.data_dir:
                try:
                    data_quota.check_after(tool, call.data_dir, call.limits)
                except data_quota.QuotaReached as exc:
                    result = _error(DataLimit(tool, str(exc)))
        duration = (time.perf_counter() - start) * 1000
        return ToolResult(
            tool=tool,
            ok=result.ok,
            output=result.output,
            error=result.error,
            duration_ms=round(duration, 3),
            logs=logs,
            worker_pid=worker.host_pid,
            connections=connections,
            error_origin=None if result.ok else _origin(result),
        )

    async def acall(
        self,
        tool: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        limits: Limits | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> ToolResult:
        """`call` on a thread, for asyncio or trio (through anyio); see `sandbox.aio`.
        Cancelling the awaiting task kills the worker and its tree, and re-raises."""
        from .aio import acall

        return await acall(self, tool, arguments, limits=limits, settings=settings)

    def close(self) -> None:
        """Kill every worker and the template; safe to call twice."""
        self._idle_bound.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = [w for idle in self._warm.values() for w in idle] + list(self._busy)
            self._warm = {}
        for worker in workers:
            worker.kill()
        if self._egress is not None:
            self._egress.close()
        self._template.close()
        for worker in workers:
            worker.close()
        _live_pools.discard(self)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call ---------------------------------------------------------------

    def _prepare(
        self,
        tool: str,
        arguments: Mapping[str, Any] | str | None,
        limits: Limits | None,
        settings: Mapping[str, Any] | None = None,
    ) -> Call:
        """The `Call` `tool` with the model's `arguments` would send (BadArguments,
        UnknownTool where it cannot)."""
        return self._shape(tool, limits, settings).call(arguments)

    def _shape(
        self, tool: str, limits: Limits | None, settings: Mapping[str, Any] | None
    ) -> _Shape:
        """What every call of `tool` with these limits and the policy's context shares,
        worked out once (`_Shape`): the policy is asked on each call, and the shape
        made again whenever it answers with other objects, or its settings changed."""
        limits = limits or self.policy.limits_for(tool)
        context = self.policy.context_for(tool)
        if settings:  # the agent's per-call settings (an embedding): not kept
            return _Shape.make(self.registry, tool, limits, context, settings)
        cache_key = (tool, id(limits), id(context))
        shape = self._shapes.get(cache_key)
        if shape is None or not shape.made_of(limits, context):
            shape = _Shape.make(self.registry, tool, limits, context, None)
            if len(self._shapes) >= _SHAPES:
                self._shapes.clear()  # a policy that answers with new objects each time
            self._shapes[cache_key] = shape  # it holds both objects: no id is reused
        return shape

    def _replenish(self) -> None:
        """The spares `_take` left to be made after the call (on this thread)."""
        after = self._after_call
        network, profile = after.replace, after.prepare
        after.replace = after.prepare = None
        if network is not None:
            self._template.request_worker(network)
        if profile is not None:
            self._template.request_prepared(profile)

    def _take(self, call: Call, shape: _Shape) -> WorkerHandle:
        """A worker for `call`: a warm one that served calls of its `reuse_key`
        (`shape.key`), or a spare."""
        # A warm worker is reused for an identical call only: its Landlock rules,
        # network, root and limits were set for its first call and cannot be changed.
        while call.limits.reuse_worker:
            with self._lock:
                idle = self._warm.get(shape.key)
                if not idle:
                    break
                worker = idle.pop()
                self._busy.add(worker)
            if worker.reader.ready() and time.monotonic() < worker.warm_until:
                return worker
            # Something arrived after its answer (a frame a leftover wrote), it died, or
            # its time is up (`max_warm_age_s`) and the idle bound has not yet seen it.
            with self._lock:
                self._busy.discard(worker)
            self._retire(worker)
        network = call.limits.network_mode
        template = self._template
        # A spare set up ahead for this call's profile (limits, root): its cgroups,
        # rlimits, jail, Landlock and seccomp are in place; else one set up at the call.
        profile = shape.profile if call.data_left is None else None
        worker = template.take_prepared(profile, shape.pkey) if profile is not None else None
        if worker is None:
            try:
                worker = template.take_spare(network, SPARE_TIMEOUT_S)
            except SandboxUnavailable:
                if not template.broken or self._closed:
                    raise
                template = self._restart(template)
                worker = template.take_spare(network, SPARE_TIMEOUT_S)
            if template.spares[network].empty():
                template.request_worker(network)  # the next call may need it soon
            else:  # made once this call is over, not beside it on its CPUs
                self._after_call.replace = network
        if profile is not None:
            self._after_call.prepare = profile  # for the next call like this one
        with self._lock:
            self._busy.add(worker)
        return worker

    def _due(self, worker: WorkerHandle) -> float:
        """When an idle warm worker is retired: `warm_idle_s` after it went idle, or
        sooner at the end of its life (`Limits.max_warm_age_s`)."""
        return min(worker.idle_since + self._warm_idle_s, worker.warm_until)

    def _expire_idle(self, now: float) -> float | None:
        """Retire the warm workers idle `warm_idle_s` or longer, or past their age
        (`IdleBound`); returns when the next one's time is up."""
        expired: list[WorkerHandle] = []
        soonest: float | None = None
        with self._lock:
            for idle in self._warm.values():
                expired += [w for w in idle if now >= self._due(w)]
                idle[:] = [w for w in idle if now < self._due(w)]
                for worker in idle:
                    due = self._due(worker)
                    soonest = due if soonest is None else min(soonest, due)
        for worker in expired:
            self._retire(worker, quick=True)
        return soonest

    def _restart(self, dead: Template) -> Template:
        """The zygote died (killed from outside: its workers died with it). Start a new
        one, once, for every caller that noticed."""
        with self._lock:
            if self._template is dead:
                self._template = Template(list(self.registry.sources), **self._template_options)
                for _ in range(self._spares):
                    self._template.request_worker()
                self._warm = {}  # their zygote is gone, and so are they
            template = self._template
        dead.close()
        return template

    def _run_networked(
        self, worker: WorkerHandle, call: Call
    ) -> tuple[Result, bool, tuple[Connection, ...]]:
        """`_run`, with the egress proxy serving the call's connections while it runs
        (a network allowlist); they are all closed before this returns."""
        if call.limits.network_mode != "proxy":
            return (*self._run(worker, call), ())
        try:
            listener = worker.take_listener(min(call.limits.timeout_s, SPARE_TIMEOUT_S))
        except (PeerGone, OSError) as exc:
            if isinstance(exc, PeerGone) or worker.wait_dead(0):
                return _error(self._why_dead(worker, call)), False, ()
            self._kill(worker)
            return _error(WorkerCrashed(call.tool, f"{call.tool} did not run: {exc}")), False, ()
        try:
            session = self._proxy().open(listener, call.tool, call.limits)
        except Exception as exc:  # out of descriptors, say: the call cannot be served
            self._kill(worker)
            why = f"{call.tool} did not run: the egress proxy could not serve it ({exc})"
            return _error(WorkerCrashed(call.tool, why)), False, ()
        try:
            result, keep = self._run(worker, call)
        finally:
            connections = session.close()
        keep = keep and not session.exhausted  # its listener listens no more
        if result.error is not None:
            # The model sees why, whatever the tool's library made of the refusal.
            message = _with_refusals(result.error.message, connections)
            error = result.error.model_copy(update={"message": message})
            result = result.model_copy(update={"error": error})
        return result, keep, connections

    def _proxy(self) -> Egress:
        with self._lock:
            if self._egress is None:
                self._egress = Egress(self._egress_config)
            return self._egress

    def _run(self, worker: WorkerHandle, call: Call) -> tuple[Result, bool]:
        """Send the call, wait for the answer or the deadline. Returns (result, reusable)."""
        limits = call.limits
        # JSON escapes can make one character six bytes; anything longer is refused unread.
        max_frame = limits.max_output_chars * 6 + 4096
        deadline = time.monotonic() + limits.timeout_s
        worker.calls += 1
        if worker.calls == 1:
            worker.warm_until = time.monotonic() + limits.max_warm_age_s
        try:
            budget = CpuBudget(worker.cpu_usage, limits.cpu_s)
            # A warm worker holds its first call's walls: later calls send what differs.
            sent = again_frame(call) if worker.calls > 1 else call.model_dump_json().encode()
            send_frame(worker.sock, sent)
            frame = read_answer(worker.reader, deadline, max_frame, budget)
        except CpuSpent as exc:
            self._kill(worker)
            message = (
                f"{call.tool} and the processes it started used {exc.used:.1f} s of CPU "
                f"time, past its {limits.cpu_s} s, and were killed"
            )
            return _error(CpuLimit(call.tool, message)), False
        except Deadline:
            self._kill(worker)
            return _error(ToolTimeout(call.tool, limits.timeout_s)), False
        except Oversized as exc:
            self._kill(worker)
            message = (
                f"{call.tool} sent {exc.size} bytes; "
                f"the limit is {limits.max_output_chars} characters"
            )
            return _error(OutputLimit(call.tool, message)), False
        except (PeerGone, OSError):
            return _error(self._why_dead(worker, call)), False
        try:
            result = Result.model_validate_json(frame)
        except ValidationError:
            return self._violation(worker, call, "its answer is not a result frame")
        if result.id != call.id:
            return self._violation(worker, call, "its answer names another call")
        if result.ok != (result.error is None) or (result.ok and result.output is None):
            return self._violation(worker, call, "its answer is neither an output nor an error")
        if result.error is not None:
            if result.error.kind not in WORKER_KINDS:
                return self._violation(worker, call, f"claimed kind {result.error.kind}")
            if result.error.kind == ErrorKind.MEMORY_LIMIT:
                return self._check_memory(worker, call, result.error.message), False
        if result.output is not None and len(result.output) > limits.max_output_chars:
            # The worker checks too; this holds even when a tool forges its own frame.
            self._kill(worker)
            message = (
                f"{call.tool} returned {len(result.output)} characters; "
                f"the limit is {limits.max_output_chars}"
            )
            return _error(OutputLimit(call.tool, message)), False
        # A worker whose socket holds more than this answer (a frame a leftover wrote,
        # now or later) is retired as the next call takes it (`FrameReader.ready`).
        return result, result.ok and limits.reuse_worker and result.reusable

    def _check_memory(self, worker: WorkerHandle, call: Call, message: str) -> Result:
        """A MemoryError the kernel's numbers back is `memory_limit`; any other is the
        tool's own error (it raised MemoryError, or asked for more than was left)."""
        why_not = memory_evidence(worker.host_pid, call.limits)
        if worker.wait_dead(0):  # gone: the numbers may be another process's
            why_not = "the worker exited before its memory could be checked"
        self._kill(worker)
        if why_not is None:
            return _error(MemoryLimit(call.tool, message))
        # The worker's own report, its kind corrected: the tool's error, not the pool's.
        error = ToolError(
            kind=ErrorKind.TOOL_ERROR, message=f"{call.tool} raised MemoryError, but {why_not}"
        )
        return Result(id=call.id, ok=False, error=error)

    def _violation(self, worker: WorkerHandle, call: Call, what: str) -> tuple[Result, bool]:
        self._kill(worker)
        message = f"{call.tool}'s worker broke the protocol: {what}"
        _log.warning("protocol violation: %s", message)
        return _error(WorkerCrashed(call.tool, message)), False

    def _why_dead(self, worker: WorkerHandle, call: Call) -> ToolCallError:
        """The worker died without answering: its exit status says why."""
        self._kill(worker)
        exited = worker.exit_report()
        if exited is None:
            return WorkerCrashed(call.tool, f"{call.tool}'s worker died before answering")
        reason = worker.setup_failure()  # only set-up code can write there, never a tool
        if reason is not None:
            return WorkerCrashed(
                call.tool, f"{call.tool} did not run: its worker's {reason} (failed closed)"
            )
        status, cpu = exited.status, exited.cpu_s
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if exited.oom_killed:
                return MemoryLimit(
                    call.tool,
                    f"{call.tool} went past its {call.limits.memory_mb} MiB of memory "
                    "and the kernel killed it",
                )
            hit_cpu = sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= call.limits.cpu_s)
            if hit_cpu:
                return CpuLimit(
                    call.tool,
                    f"{call.tool} used its {call.limits.cpu_s} s of CPU time and was killed",
                )
            return WorkerCrashed(
                call.tool, f"{call.tool}'s worker was killed by {_signal_name(sig)}"
            )
        code = os.waitstatus_to_exitcode(status)
        return WorkerCrashed(
            call.tool, f"{call.tool}'s worker exited with status {code} before answering"
        )

    def _signal(self, worker: WorkerHandle) -> None:
        """SIGKILL the worker and everything it started, without waiting (a cancel)."""
        if not self.pid_namespaces:
            reaper.kill_tree(worker.host_pid)
        worker.kill()

    def _kill(self, worker: WorkerHandle) -> None:
        """SIGKILL the worker and everything it started, and wait until nothing of it
        runs: with PID namespaces, until only the killed worker is left in its cgroup
        (`kill_all`: its own teardown goes on without us), else until it is gone."""
        if self.pid_namespaces and worker.kill_all(KILL_WAIT_S):
            return
        if not self.pid_namespaces:
            reaper.kill_tree(worker.host_pid)
        worker.kill()
        worker.wait_dead(KILL_WAIT_S)

    def _retire(self, worker: WorkerHandle, quick: bool = False) -> None:
        """`_kill`, then forget the worker. Unless `quick` (a call without a data_dir,
        whose files are measured after it), wait until the worker is gone too."""
        self._kill(worker)
        if not quick:
            worker.wait_dead(KILL_WAIT_S)
        if self.pid_namespaces:
            worker.template.forget_exit(worker.pid)
        else:
            # A worker that exited by itself left its orphans to the zygote, which
            # sweeps them before it reports the exit: wait for that report (once: a
            # death the call explained has already had it).
            worker.exit_report()
        worker.close()


_SHAPES = 256
"""Shapes kept at most; more and the cache starts again (a policy making new objects)."""


class _Shape:
    """One tool with one `Limits` and one policy context: its spec, the fixed part of
    each `Call`, the `reuse_key` of its warm workers and the profile of its spares.
    Every part of it comes from the registry and the policy, never from the model or
    a worker: a call then costs its arguments' validation and a `Call` of them."""

    __slots__ = ("context", "given", "key", "limits", "pkey", "profile", "settings", "spec", "tool")

    def __init__(
        self, spec: ToolSpec, limits: Limits, context: ToolContext, settings: dict[str, Any]
    ) -> None:
        self.spec = spec
        self.tool = spec.name
        self.given = limits
        self.context = context
        self.settings = settings
        if spec.fresh and limits.reuse_worker:
            limits = limits.model_copy(update={"reuse_worker": False})
        self.limits = limits
        first = self._call({})
        self.key = first.reuse_key if limits.reuse_worker else ""
        self.profile = Profile.of(first)
        self.pkey = self.profile.key if self.profile is not None else ""

    @classmethod
    def make(
        cls,
        registry: Registry,
        tool: str,
        limits: Limits,
        context: ToolContext,
        settings: Mapping[str, Any] | None,
    ) -> _Shape:
        try:
            spec = registry.get(tool)
        except LookupError:
            raise UnknownTool(str(tool), registry.names()) from None
        merged = {**context.settings, **settings} if settings else dict(context.settings)
        return cls(spec, limits, context, merged)

    def made_of(self, limits: Limits, context: ToolContext) -> bool:
        """Made of these very objects, and the context's settings unchanged since (a
        dict: its owner may change it in place)."""
        same = self.given is limits and self.context is context
        return same and context.settings == self.settings

    def call(self, arguments: Mapping[str, Any] | str | None) -> Call:
        """The call of the model's `arguments`, validated (BadArguments)."""
        try:
            args = self.spec.validate(arguments)
        except ArgumentError as exc:
            raise BadArguments(self.tool, str(exc)) from None
        return self._call(args)

    def _call(self, args: dict[str, Any]) -> Call:
        return Call(
            tool=self.tool,
            args=args,
            limits=self.limits,
            root=self.context.root,
            data_dir=self.context.data_dir,
            settings=self.settings,
        )


class _Slots:
    """At most `size` calls at once: tokens in a queue whose get and put are C code
    (a semaphore is Python code on a condition: 2 µs a call)."""

    def __init__(self, size: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(size):
            self._tokens.put(None)

    def __enter__(self) -> None:
        self._tokens.get()

    def __exit__(self, *exc: object) -> None:
        self._tokens.put(None)


class _AfterCall(threading.local):
    """What a call's thread asks of the zygote once the call is over."""

    replace: NetworkMode | None = None
    prepare: Profile | None = None


class _PoolError(Result):
    """An error the pool found itself, told apart from any frame a worker sent."""


def _root_without_walls(layers: Mapping[str, Layer]) -> str | None:
    """Why no worker may run here, in any mode: as uid 0 with neither file layer, a
    tool could write every root-owned file on the host (a /proc/sys setting, say)."""
    uid = layers.get("unprivileged_uid")
    if os.geteuid() != 0 or uid is None or uid.state != "unavailable":
        return None
    if any(layers[name].active for name in ("bind_mounts", "landlock") if name in layers):
        return None
    return (
        f"workers would run as uid 0 with no file layer around them ({uid.detail}); "
        "turn bind_mounts or landlock back on, or turn unprivileged_uid off to accept it"
    )


def _with_refusals(message: str, connections: tuple[Connection, ...]) -> str:
    """A failed call's message, with each refusal (or cut) of the proxy it does not
    already say."""
    reasons: list[str] = []
    for c in connections:
        if (c.cut or not c.allowed) and c.reason not in message and c.reason not in reasons:
            reasons.append(c.reason)
    if not reasons:
        return message
    shown = "; ".join(reasons[:5])
    more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
    return f"{message} [network refused by the sandbox: {shown}{more}]"


def _error(exc: ToolCallError) -> Result:
    return _PoolError(id="", ok=False, error=ToolError(kind=exc.kind, message=exc.message))


def _origin(result: Result) -> Literal["sandbox", "worker"]:
    return "sandbox" if isinstance(result, _PoolError) else "worker"


def _failed(tool: str, exc: ToolCallError, start: float) -> ToolResult:
    return ToolResult(
        tool=str(tool),
        ok=False,
        output=None,
        error=ToolError(kind=exc.kind, message=exc.message),
        duration_ms=round((time.perf_counter() - start) * 1000, 3),
        error_origin="sandbox",
    )


def _signal_name(sig: int) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
    description = signal.strsignal(sig)
    return f"{name} ({description})" if description else name


# -- shutdown at exit and on SIGTERM ----------------------------------------------

_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.close()


_handlers_installed = False


def _install_signal_handlers() -> None:
    """Turn SIGTERM into SystemExit so `with` blocks and atexit close the pools.

    Only when nobody else handles SIGTERM and we are on the main thread; SIGINT
    already raises KeyboardInterrupt. Even a SIGKILLed orchestrator leaves nothing:
    the zygote sees its control socket close and kills every worker.
    """
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _handlers_installed = True
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
