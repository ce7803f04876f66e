"""The worker: a child of the zygote that serves tool calls over its socket.

It runs in its own session (and, where the kernel allows, as pid 1 of its own PID
namespace), with stdin from /dev/null, stdout/stderr in a log (a memfd, never on the
host's disk) the orchestrator reads a capped prefix of, the zygote's allowlisted
environment, and rlimits, soft and hard, set from the first call's `Limits`. A
reusable worker serves only later calls with that call's `reuse_key`, each answered
only after its clean-up. Errors are caught and sent as `{kind, message}`; anything
the worker cannot catch (a segfault, a kill) the orchestrator learns from the exit
status instead.
"""

from __future__ import annotations

import _signal
import fcntl
import inspect
import json
import os
import resource
import signal
import socket
import stat
import sys
from typing import Any, NoReturn

from pydantic_core import to_json

from tools.context import ToolContext, set_current
from tools.registry import Registry

from . import _jail, _landlock, _linux, _netns, _nofollow, _seccomp
from .channel import BlockingReader, send_frame
from .errors import ErrorKind
from .leftovers import Baseline
from .limits import (
    MIB,
    Limits,
    apply_rlimits,
    cap_file_size,
    renew_rlimits,
)
from .protocol import Call, Profile, ToolError, read_again
from .uids import NOBODY

CHANNEL_FD = 3
SETUP_FD = 4
"""The write end of the worker's set-up pipe, closed before the first tool runs."""
EXIT_SETUP_FAILED = 70
"""A worker whose sandbox could not be set up exits with this before any tool runs,
its reason written to the set-up pipe: the only words the orchestrator takes as a
set-up failure, since no tool ever holds that pipe (a tool can exit 70 too)."""


class WorkerSetup:
    """What the zygote hands a freshly forked worker."""

    def __init__(
        self,
        channel_fd: int,
        log_fd: int,
        setup_fd: int,
        workdir: str,
        cgroup: str | None,
        *,
        memory_cgroup: str | None,
        in_pid_namespace: bool,
        landlock_read: list[str] | _landlock.OpenPaths | None,
        drop_capabilities: bool,
        private_mounts: bool,
        uid: int | None,
        ipc_namespace: bool,
        keyring: bool,
        seccomp: _seccomp.Rules | None,
        proxy_port: int | None,
        jail: _jail.Plan | None,
        data_gid: int | None,
        profile: Profile | None = None,
    ) -> None:
        self.channel_fd = channel_fd
        self.log_fd = log_fd
        self.setup_fd: int | None = setup_fd
        """Where a set-up failure is reported; None once set-up is done."""
        self.workdir = workdir
        self.cgroup = cgroup
        self.memory_cgroup = memory_cgroup
        self.in_pid_namespace = in_pid_namespace
        self.landlock_read = landlock_read
        """Paths every call may read; None when Landlock is unavailable."""
        self.drop_capabilities = drop_capabilities
        self.private_mounts = private_mounts
        """The workdir is a tmpfs in a mount namespace of the worker's own."""
        self.uid = uid
        """The unprivileged uid (and gid) the worker switches to; None: keep ours."""
        self.ipc_namespace = ipc_namespace
        self.keyring = keyring
        """Leave the inherited session keyring for a fresh one."""
        self.seccomp = seccomp
        """The filter to install; None: no seccomp layer."""
        self.proxy_port = proxy_port
        """The egress proxy's port on this worker's loopback (a network allowlist)."""
        self.jail = jail
        """Without Landlock: the read-only binds of a new root beside the workdir."""
        self.data_gid = data_gid
        """The group that owns a policy's `data_dir`, shared by workers of any uid."""
        self.profile = profile
        """Set: the first call's set-up is done for it while this worker is a spare, and
        only a call that `fits` it is served."""
        self.rules: _landlock.Ruleset | None = None

    @property
    def new_root(self) -> str:
        return os.path.join(os.path.dirname(self.workdir), "root")


def warm_up(fallback_clean_up: bool = True) -> None:
    """Run once in the zygote: everything a worker's first call would otherwise do for
    the first time (lazy imports, pydantic's first validation) is done before forking,
    and `gc.freeze` keeps the collector from touching, and so copying, shared pages.
    psutil, which only the clean-up without PID namespaces uses, is imported only for
    it: it is 2 MiB of the zygote's 20, which every fork copies the page tables of."""
    import gc

    if fallback_clean_up:
        import psutil  # noqa: F401

    _prime()
    _warm_fork_handlers()
    gc.collect()
    gc.freeze()


FORK_WARM_RUNS = 16
"""Runs after which CPython 3.11 has specialised a function's code for good."""


def _warm_fork_handlers() -> None:
    """Run here, once, the child side of the at-fork handlers of the modules the
    zygote has loaded that have one we know (threading's, random's, logging's), which
    every fork runs in the new worker. Run cold there, each wrote to pages of code
    and objects it shares with the zygote (specialising its bytecode as it ran), and
    each such page is copied: threading's alone copied 127 pages per worker, 87 once
    it had run here; a child that exits at once, 238 -> 195 pages. Each is a no-op
    in a process with one thread (new locks, a new seed), so only then."""
    import threading

    if threading.active_count() != 1:
        return  # another thread's bookkeeping would be reset: a fork handles it
    handlers = [getattr(threading, "_after_fork", None)]
    if "random" in sys.modules:
        handlers.append(sys.modules["random"].seed)
    if "logging" in sys.modules:
        handlers.append(getattr(sys.modules["logging"], "_after_at_fork_child_reinit_locks", None))
    for _ in range(FORK_WARM_RUNS):
        for handler in handlers:
            if handler is not None:
                handler()


_prime_frame: list[bytes] = []
"""A call's frame, made once by the zygote's `_prime`: each spare's only validates it."""


def _prime() -> None:
    if not _prime_frame:
        _prime_frame.append(Call(tool="", args={}, limits=Limits()).model_dump_json().encode())
    Call.model_validate_json(_prime_frame[0])
    _failure(ErrorKind.TOOL_ERROR, "prime")
    _as_text({"prime": [1, 2.0, None]})


def detach(setup: WorkerSetup) -> socket.socket:
    """Cut the worker off from the zygote: session, signals, fds, cwd, environment,
    SysV IPC, keyring; build its root. Each step is checked: one that fails raises,
    and the worker exits before any tool runs (`EXIT_SETUP_FAILED`)."""
    isolate(setup)
    if setup.landlock_read is not None:
        # Built while this worker waits as a spare, from the zygote's descriptors of the
        # read paths (closed below with the rest); the call only adds its root.
        rules = _landlock.Ruleset(read=setup.landlock_read, write=[setup.workdir, os.devnull])
        setup.rules = rules
        made, rules.fd = rules.fd, fcntl.fcntl(rules.fd, fcntl.F_DUPFD_CLOEXEC, SETUP_FD + 1)
        os.close(made)  # out of the way of the moves below; the copy is kept
    # Copied above the fds they go to first, so no move overwrites one not yet made.
    null, log, channel, setup_fd = (
        fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, SETUP_FD + 1)
        for fd in (os.open(os.devnull, os.O_RDONLY), setup.log_fd, setup.channel_fd, setup.setup_fd)
    )
    for fd, target in ((null, 0), (log, 1), (log, 2), (channel, CHANNEL_FD)):
        os.dup2(fd, target)
    setup.setup_fd = os.dup2(setup_fd, SETUP_FD, inheritable=False)
    _close_from(SETUP_FD + 1, keep=setup.rules.fd if setup.rules is not None else None)
    os.environ["HOME"] = os.environ["TMPDIR"] = os.environ["PWD"] = setup.workdir
    if setup.proxy_port is not None:
        os.environ.update(_netns.proxy_environment(setup.proxy_port))
    return socket.socket(fileno=CHANNEL_FD)


def isolate(setup: WorkerSetup) -> None:
    """The steps of `detach` that do not touch fds: session, SysV IPC, keyring,
    parent-death signal, signal dispositions, mount namespace and root (built, not
    yet entered), cwd. `sandbox.launch` takes them too, keeping stdin and stdout."""
    os.setsid()
    if setup.ipc_namespace:
        _linux.unshare(_linux.CLONE_NEWIPC)
    if setup.keyring:
        _linux.join_new_session_keyring()
    # The zygote is single-threaded, so "the thread that forked us" is the zygote.
    _linux.set_parent_death_signal(signal.SIGKILL)
    if not setup.in_pid_namespace:
        # Without a namespace, orphaned grandchildren must stay findable under us.
        _linux.set_child_subreaper()
    # The C functions under `signal`'s: its wrappers turn every answer into an enum,
    # Python code that copied 26 more pages of the zygote's memory (copy on write).
    _signal.set_wakeup_fd(-1)
    for sig in (_signal.SIGCHLD, _signal.SIGTERM):
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    # A write past RLIMIT_FSIZE then fails with EFBIG (an exception the tool sees)
    # instead of killing the worker.
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    if setup.private_mounts:
        _linux.private_mounts(
            setup.workdir, Limits().max_disk_mb, setup.in_pid_namespace, owner=setup.uid
        )
    if setup.jail is not None:
        # Built while this worker waits as a spare; the call only adds its root.
        _jail.build(setup.new_root, setup.jail, setup.workdir)
    os.chdir(setup.workdir)


def _close_from(low: int, keep: int | None) -> None:
    """Close every descriptor from `low` up, but `keep`."""
    if keep is None:
        os.closerange(low, _max_fd())
    else:
        os.closerange(low, keep)
        os.closerange(keep + 1, _max_fd())


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 65536


def serve(chan: socket.socket, registry: Registry, setup: WorkerSetup) -> NoReturn:
    """Answer calls until the orchestrator goes away; a fresh worker answers one."""
    # While this worker waits as a spare, take the copy-on-write faults that its first
    # call would otherwise pay for on the clock.
    _prime()
    profile = setup.profile
    if profile is not None:
        # Everything a first call would set up, done now, off the call's clock.
        prepare(setup, Call(tool="", args={}, limits=profile.limits, root=profile.root))
    first: Call | None = None
    frames = BlockingReader(chan)
    baseline: Baseline | None = None
    while True:
        frame = frames.read()
        if frame is None:
            os._exit(0)
        if first is None:
            call = Call.model_validate_json(frame)
            first = call
            if profile is None:
                prepare(setup, call)
            elif not profile.fits(call):
                os._exit(EXIT_SETUP_FAILED)  # never sent by the pool: its walls are not these
            context = ToolContext(root=call.root, data_dir=call.data_dir, settings=call.settings)
            if call.limits.reuse_worker:
                # What each later call must find again.
                baseline = Baseline(context.settings, own_ipc=setup.ipc_namespace)
        else:
            # Only a reusable worker gets here, and only an `Again`: the first call's
            # tool, limits, root, data_dir and settings, with a new id and arguments.
            # Its rlimits were renewed by the clean-up after the call before.
            again = read_again(frame, first)
            if again is None:
                os._exit(70)  # the orchestrator never sends this: its limits would not hold
            call = again
            cap_file_size(call.data_left, for_good=False)
        body = run(registry, call, context)
        # Cleaned up before answering, so the answer says whether this worker can serve
        # again, and nothing of this call runs while the orchestrator reads it.
        reusable = (
            baseline is not None
            and body.startswith(_OK)
            and _clean_up(setup, call.limits, baseline)
        )
        send_frame(chan, _frame(call.id, reusable, body))
        if body is _out_of_memory.get((call.tool, call.limits.memory_mb)):
            # The orchestrator checks our memory use in /proc before it believes this
            # answer, then kills us: stay until it does.
            frames.read()
        if not reusable:
            os._exit(0)


def prepare(setup: WorkerSetup, call: Call) -> None:
    """The first call's set-up: cgroup limits, rlimits, `harden`; then the set-up pipe
    closes. Raises where a step fails (the worker exits before any tool runs)."""
    _limit_processes(setup, call.limits)
    nproc = _nproc(setup, call.limits)
    apply_rlimits(call.limits, reusable=call.limits.reuse_worker, nproc=nproc)
    cap_file_size(call.data_left, for_good=not call.limits.reuse_worker)
    harden(setup, call)
    end_setup(setup)


def harden(setup: WorkerSetup, call: Call) -> None:
    """The last step before the first tool runs, in an order that matters: the new
    root, Landlock inside it, no_new_privs and seccomp, then root goes (after which
    nothing can be undone). A `root` or `data_dir` reached through a link raises
    `PathChanged`: the worker exits before the tool runs."""
    if setup.private_mounts and call.limits.max_disk_mb != Limits().max_disk_mb:
        _linux.resize_tmpfs(setup.workdir, call.limits.max_disk_mb)
    groups: tuple[int, ...] = ()
    # Each directory is held open from here on: the binds and the Landlock rules
    # take the descriptor, so no path is looked up again after the walk that refused
    # links.
    data = root = None
    try:
        if call.data_dir:
            data = _open_data_dir(call.data_dir, setup.data_gid)
            groups = (setup.data_gid,) if setup.data_gid is not None else ()
            os.umask(0o007)  # what one worker writes there, the next (another uid) can use
        if call.root:
            root = _open_as_is(call.root)  # None: nothing to bind or allow
        if setup.jail is not None:
            bound = list(setup.jail.binds)
            if root is not None and call.root:
                _jail.add_open(setup.new_root, call.root, root, bound, readonly=True)
                bound.append(call.root)
            if data is not None and call.data_dir:
                _jail.add_open(setup.new_root, call.data_dir, data, bound, readonly=False)
            _jail.enter(setup.new_root)
        if setup.rules is not None:
            if root is not None:
                setup.rules.allow_open_dir(root, write=False)
            if data is not None:
                setup.rules.allow_open_dir(data, write=True)
            setup.rules.enforce()
    finally:
        for fd in (root, data):
            if fd is not None:
                os.close(fd)
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    if setup.seccomp is not None:
        _seccomp.install(setup.seccomp)
    shared_uid = not setup.in_pid_namespace and (setup.uid is None or setup.uid == NOBODY)
    if shared_uid:
        # Other workers share this uid, and no PID namespace stands between them: a
        # worker any of them could trace (a prepared spare waits here with its
        # capabilities dropped, for another call) is one that call could take over.
        # Non-dumpable, it can be traced, or its memory read, only with CAP_SYS_PTRACE;
        # made so before the capabilities go, so there is no moment it could be.
        _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
    if setup.drop_capabilities:
        _linux.drop_privileges(setup.uid, (), groups, dumpable=not shared_uid)
    if setup.seccomp is None or not setup.seccomp.keyring:
        # The keyring calls are allowed: leave nothing an earlier call of this uid kept.
        _linux.clear_user_keyrings()
        if setup.uid is not None:
            # A change of uid clears the parent-death signal; the zygote is still our
            # parent (it reaps us), so asking again is enough.
            _linux.set_parent_death_signal(signal.SIGKILL)


def end_setup(setup: WorkerSetup) -> None:
    """Set-up succeeded: close the set-up pipe, so nothing the tool does can be told
    apart as a set-up failure (its end of file tells the orchestrator so)."""
    if setup.setup_fd is not None:
        os.close(setup.setup_fd)
        setup.setup_fd = None


def report_failure(setup_fd: int | None, exc: BaseException) -> None:
    """Why the worker is dying: on the set-up pipe while it is open (a set-up
    failure), else as a plain line in the log, which the orchestrator never takes for
    one (by then the tool has run, and could have written the same)."""
    fd, what = (1, "worker failed") if setup_fd is None else (setup_fd, "sandbox set-up failed")
    reason = f"{what}: {_describe(exc)}\n"
    try:
        os.write(fd, reason.encode(errors="replace")[:1000])
    except BaseException:
        pass


def _open_data_dir(path: str, gid: int | None) -> int | None:
    """`own_data_dir`, or where that fails for another reason than a link, the
    directory as it is: the tool meets the same error on its first use, and reports it."""
    try:
        return own_data_dir(path, gid)
    except _nofollow.PathChanged:
        raise
    except OSError:
        return _open_as_is(path)


def _open_as_is(path: str) -> int | None:
    """`_nofollow.open_dir(path)`; None where it is missing or cannot be reached (a
    tool then finds nothing there). A link on the way still raises `PathChanged`."""
    try:
        return _nofollow.open_dir(path)
    except _nofollow.PathChanged:
        raise
    except OSError:
        return None


def own_data_dir(path: str, gid: int | None) -> int:
    """As root, before the lock-down: the data directory exists and, where workers run
    as uids of their own, belongs to their shared group with its files. Returns an
    O_PATH descriptor of it, reached without following a link (`PathChanged` if one is
    on the way); links and multiply-linked files inside are left alone: a tool may
    have planted them."""
    found = _nofollow.open_dir(path, create=True)
    assert found is not None  # created if missing
    if gid is None or os.geteuid() != 0:
        return found
    try:
        directory = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=found)
    except OSError:
        os.close(found)
        raise
    try:
        os.fchown(directory, -1, gid)
        os.fchmod(directory, 0o2770)  # setgid: new files join the group
        for entry in os.scandir(directory):
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(entry.name, flags, dir_fd=directory)
            except OSError:
                continue
            try:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                    os.fchown(fd, -1, gid)
                    os.fchmod(fd, 0o660)
            finally:
                os.close(fd)
    except OSError:
        os.close(found)
        raise
    finally:
        os.close(directory)
    return found


_out_of_memory: dict[tuple[str, int], bytes] = {}


_OK = b'"ok":true,'


def _frame(call_id: str, reusable: bool, body: bytes) -> bytes:
    """What `Result(id=..., reusable=..., **body).model_dump_json()` says, without building it."""
    flag = b"true" if reusable else b"false"
    return b'{"type":"result","id":"%s","reusable":%s,%s}' % (call_id.encode(), flag, body)


def run(registry: Registry, call: Call, context: ToolContext | None = None) -> bytes:
    """One call → the body of its `Result` frame (all but type, id and reusable);
    `context`: the call's own, made once for a warm worker's calls. Never raises."""
    # Built before the tool runs: once memory is exhausted there may be none to build it.
    key = (call.tool, call.limits.memory_mb)
    out_of_memory = _out_of_memory.get(key)
    if out_of_memory is None:
        out_of_memory = _out_of_memory[key] = _failure(
            ErrorKind.MEMORY_LIMIT,
            f"{call.tool} ran out of memory (limit {call.limits.memory_mb} MiB)",
        )
    if os.lseek(1, 0, os.SEEK_END):
        os.ftruncate(1, 0)  # the log holds this call's output only
    try:
        if context is None:
            context = ToolContext(root=call.root, data_dir=call.data_dir, settings=call.settings)
        set_current(context)
        spec = registry.get(call.tool)
        value = spec.func(**spec.bind(call.args))
        if inspect.iscoroutine(value):
            # An `async def` tool: run to completion here, under the same deadline
            # (the pool kills the worker at it, whatever the loop is doing).
            import asyncio

            value = asyncio.run(value)
        # Inside the try: whatever the returned object's class does (its __len__,
        # __str__, encoding or serializer raise) is the tool's error, not the worker's.
        return _body(call, _as_text(value))
    except MemoryError:
        return out_of_memory
    except BaseException as exc:  # the tool's bug is the model's observation
        try:
            return _failure(ErrorKind.TOOL_ERROR, _describe(exc))
        except BaseException:
            return _failure(ErrorKind.TOOL_ERROR, f"{call.tool} raised an exception")
    finally:
        _flush_std()


def _body(call: Call, text: str) -> bytes:
    """The answer for the exact str `text`."""
    if len(text) > call.limits.max_output_chars:
        return _failure(
            ErrorKind.OUTPUT_LIMIT,
            f"{call.tool} returned {len(text)} characters; the limit is "
            f"{call.limits.max_output_chars}",
        )
    try:
        output = json.dumps(text, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return _failure(
            ErrorKind.TOOL_ERROR,
            f"{call.tool} returned text that is not valid Unicode (a lone surrogate)",
        )
    return _OK + b'"output":%s,"error":null' % output


def _as_text(value: Any) -> str:
    """An exact `str`: no method of a subclass the tool returned runs after this."""
    if isinstance(value, str):
        return str.__str__(value)
    try:
        return to_json(value).decode()
    except Exception as exc:
        raise TypeError(
            f"the tool returned a {type(value).__name__}, which cannot be turned into "
            "JSON text; return a str, a number, a list, a dict or a pydantic model"
        ) from exc


MESSAGE_CHARS = 2000
"""Longest error message a tool's exception gives (the model reads it)."""

HIDDEN = (
    " (in the sandbox a tool sees only the system's files, its policy's root and data_dir,"
    " and its own working directory)"
)
"""Said with a FileNotFoundError: a file beside the tools module, there for its author,
does not exist for the tool, and the bare error read as a bug."""


def _describe(exc: BaseException) -> str:
    """`Name: text` of a tool's exception, whatever its `__str__`, `__repr__` or class
    does (raise, return a str subclass, a lone surrogate, megabytes)."""
    name = _plain(lambda: type(exc).__name__) or "an exception"
    text = _plain(lambda: str(exc))
    if text is None:
        text = _plain(lambda: repr(exc))
        text = f"(its message could not be read; repr: {text})" if text else ""
    message = f"{name}: {text}" if text else name
    if isinstance(exc, FileNotFoundError):  # of a file that is there, seen from outside
        message += HIDDEN
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + f"... ({len(message)} characters)"
    return message


def _plain(get: Any) -> str | None:
    """An exact, valid-Unicode `str` from `get()`, or None if it raises or is no str."""
    try:
        value = get()
        if not isinstance(value, str):
            return None
        value = str.__str__(value)  # an exact str: no subclass method runs after this
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    except BaseException:
        return None


def _failure(kind: ErrorKind, message: str) -> bytes:
    error = ToolError(kind=kind, message=message).model_dump_json().encode()
    return b'"ok":false,"output":null,"error":%s' % error


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # the tool may have put any object there
            pass


def _limit_processes(setup: WorkerSetup, limits: Limits) -> None:
    """The call's cgroup limits, written before Landlock makes the files unwritable
    (with plain system calls: a text file object per write cost more than the write)."""
    if setup.cgroup is not None:
        _write(os.path.join(setup.cgroup, "pids.max"), b"%d" % limits.max_processes)
    if setup.memory_cgroup is not None:
        fd = os.open(os.path.join(setup.memory_cgroup, "memory.usage_in_bytes"), os.O_RDONLY)
        try:
            limit = int(os.read(fd, 64)) + limits.memory_mb * MIB
        finally:
            os.close(fd)
        for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            try:
                _write(os.path.join(setup.memory_cgroup, name), b"%d" % limit)
            except OSError:
                pass  # no swap accounting: the memory limit alone applies


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: short write")
    finally:
        os.close(fd)


def _nproc(setup: WorkerSetup, limits: Limits) -> int | None:
    """RLIMIT_NPROC counts all processes of our uid, so add what already runs."""
    if setup.cgroup is not None:
        return None
    if setup.uid is not None and setup.uid != NOBODY:
        return limits.max_processes  # a uid of its own: nothing else counts
    uid = setup.uid if setup.uid is not None else os.getuid()
    if uid == 0:
        return None  # root ignores RLIMIT_NPROC; only a cgroup helps
    running = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                running += entry.stat().st_uid == uid
            except OSError:
                pass
    return running + limits.max_processes


def _clean_up(setup: WorkerSetup, limits: Limits, baseline: Baseline) -> bool:
    """After a reusable worker's call: no process or thread of the call left, nothing
    of the process changed (`sandbox.leftovers`), an empty workdir to start the next
    one in, and its rlimits renewed for it (`renew_rlimits`). False: something stayed,
    or too little CPU is left; retire this worker (the pool kills its tree)."""
    # Threads first: with one left, a child could be forked after the kill below.
    if not _single_threaded():
        return False  # a thread the tool started could answer, or read, the next call
    left_a_process = False
    while _has_children():
        left_a_process = True
        _kill_descendants(setup)
        try:
            os.waitpid(-1, 0)  # orphans are re-parented to us: reap until none is left
        except ChildProcessError:
            break
    if left_a_process or baseline.left_by_call() is not None:
        return False  # killed before the answer, so nothing runs while it is read
    try:
        empty_directory(setup.workdir, enter=True)
    except (OSError, RecursionError):
        return False
    return renew_rlimits(limits)


def _has_children() -> bool:
    """Whether any child, running or not, is left. Without one nothing of the call
    runs: as pid 1 every process of our namespace descends from us, and as a
    subreaper every orphan of the call is re-parented to us; so most calls (which
    start nothing) need no `kill(-1)`, which walks every process on the host."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


_THREADS = 17
"""num_threads, the 20th field of /proc/self/stat, counted from the state after `(comm)`."""


def _single_threaded() -> bool:
    """Whether this process has one thread left, native ones too: the count in
    /proc/self/stat (three system calls; a listing of /proc/self/task took five)."""
    try:
        fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        import threading

        return threading.active_count() == 1
    try:
        return os.read(fd, 4096).rpartition(b")")[2].split()[_THREADS] == b"1"
    except (OSError, IndexError):
        return False
    finally:
        os.close(fd)


def empty_directory(path: str, enter: bool = False) -> None:
    """Remove everything below `path` whatever modes the tool left (a 0500 or 0000
    directory is made 0700 first); links are removed, never followed. Raises OSError
    if anything stays; `enter`: then make it the working directory. Runs when no
    process or thread of the tool is left, so nothing swaps an entry between its
    check and its use."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # a link (ELOOP), a file (ENOTDIR), gone: not ours any more
        raise OSError(f"{path} is no longer the worker's own directory ({exc})") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise OSError(f"{path} is no longer the worker's own directory")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        if os.listdir(fd):  # most calls leave nothing: one listing, not two
            _empty(fd)
            if os.listdir(fd):
                raise OSError(f"{path} is not empty after the clean-up")
        if enter:
            os.fchdir(fd)
    finally:
        os.close(fd)


def _empty(directory: int) -> None:
    for name in os.listdir(directory):
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=directory)
            continue
        os.chmod(name, 0o700, dir_fd=directory)
        child = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
        )
        try:
            _empty(child)
        finally:
            os.close(child)
        os.rmdir(name, dir_fd=directory)


def _kill_descendants(setup: WorkerSetup) -> None:
    if setup.in_pid_namespace:
        try:
            os.kill(-1, signal.SIGKILL)  # as pid 1: everyone else in our namespace
        except ProcessLookupError:
            pass
        return
    # As a subreaper: our own children only, whose pids no one can take before we
    # reap them; their orphans come to us and die in the next round (see _clean_up).
    children = _own_children()
    if children is None:  # a kernel without /proc/PID/task/TID/children
        import psutil

        children = [child.pid for child in psutil.Process().children()]
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _own_children() -> list[int] | None:
    """From the kernel's lists (one small read), not a scan of every process."""
    children: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                children += [int(pid) for pid in f.read().split()]
        except FileNotFoundError:
            if os.path.isdir(f"/proc/self/task/{tid}"):
                return None
        except OSError:
            pass
    return children
