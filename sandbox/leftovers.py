"""What a trusted call left in its warm worker, looked for before the worker serves again.

A trusted tool runs in its warm worker's own process, so what it leaves there after
answering would run during, or change, the next call: a thread or a child that keeps
running; a timer (an itimer or a POSIX one) or a signal handler that fires later
(Python's, or a native one only the kernel knows of); a descriptor left open, put in
place of the worker's own, or one of its own made to signal (`O_ASYNC`, a lease) or
to wake Python (`set_wakeup_fd`); a SysV IPC object; a changed environment, umask,
trace hook, standard stream or import hook; a function replaced on the worker's own
path from one answer to the next.
`Baseline` is taken once, before a reusable worker's first tool runs; after each call
`left_by_call` names the first thing that differs, and the worker is then retired
(the pool kills its whole tree), never reused.

What it cannot see: a tool that sets out to tamper with its own process (ctypes,
`sys.addaudithook`, a patch deep inside a library the worker calls, a finalizer of
an object kept alive) can still reach the next call. `trusted` trusts the tool's
code: these checks catch what a careless one leaves, not a hostile one.
"""

from __future__ import annotations

import _signal
import builtins
import ctypes
import fcntl
import gc
import inspect
import json
import json.encoder
import operator
import os
import resource
import signal
import socket
import sys
import threading
import types
from typing import Any

from pydantic_core import to_json

from tools import registry as _registry

from . import channel, limits, protocol
from ._dict_versions import Versions


def _owners() -> tuple[tuple[Any, ...], tuple[type, ...]]:
    """The modules whose functions run between one answer and the next call's tool
    (the worker's own, and what they call), and the classes whose methods they use."""
    from . import worker

    modules = (worker, channel, protocol, limits, sys.modules[__name__], _registry)
    modules += (builtins, os, json, json.encoder, signal, resource, inspect)
    classes = (socket.socket, channel.BlockingReader, _registry.Registry, _registry.ToolSpec)
    return modules, (*classes, json.JSONEncoder)  # json.dumps writes each answer through it


def _watched() -> list[tuple[str, Any]]:
    """The namespaces whose functions run between one answer and the next call's
    tool: those of `_owners` (a class's live attribute view), and the streams'."""
    modules, classes = _owners()
    spaces: list[tuple[str, Any]] = [(module.__name__, vars(module)) for module in modules]
    for cls in classes:
        spaces.append((f"{cls.__module__}.{cls.__qualname__}", vars(cls)))
    for name in ("stdin", "stdout", "stderr"):
        # The stream object itself may be the same and its `write` or `flush` a
        # patch (an output capture never undone): the worker flushes them each call.
        # So may the layers below it, which it calls by name: its buffer's `write`
        # (what a print ends in), and the raw file's under that.
        stream = getattr(sys, name)
        for part in ("", ".buffer", ".raw"):
            if part:
                try:
                    stream = getattr(stream, part[1:], None)
                except ValueError:  # detached
                    break
            own = getattr(stream, "__dict__", None)
            if isinstance(own, dict):
                spaces.append((f"sys.{name}{part}", own))
    return spaces


class Baseline:
    """The worker's state before its first tool ran. `settings`: the dict every call
    of the worker is handed as its context's (made once), compared by value."""

    def __init__(self, settings: dict[str, Any] | None = None, *, own_ipc: bool = False) -> None:
        """`own_ipc`: the worker has an IPC namespace of its own, so every SysV object
        in it is the call's (counted); otherwise those its uid made on the host's."""
        self.given = settings if settings is not None else {}
        self.given_json = to_json(self.given)
        self.spaces = [
            (name, space, tuple(space), tuple(space.values())) for name, space in _watched()
        ]
        self.owners = _owners()
        self.shapes = _shapes(*self.owners)
        # A namespace whose dict kept its version is unchanged: its values are compared
        # only where the version moved (or the interpreter keeps none).
        self.versions = Versions([_dict_of(space) for _, space, _, _ in self.spaces])
        self.fds = _Descriptors()
        self.fd_modes = _fd_modes(self.fds.fds)
        self.handlers = _handlers()
        self.timers = _read(_TIMERS)
        self.signals = _kernel_signals()
        self.caught = _caught(self.signals)
        self.native = _native_handlers(self.caught)
        self.wakeup_fd = _wakeup_fd()
        self.own_ipc = own_ipc
        self.sysv = _sysv_objects(own_ipc)
        self.environ = dict(os.environ._data)  # type: ignore[attr-defined]
        self.hooks = _hooks()
        self.settings = _settings()
        self.rlimits = _rlimits()

    def left_by_call(self) -> str | None:
        """What the call left that differs from the baseline, in words; None: nothing.
        Run once no thread or process of the call is left. The namespaces come first:
        the later checks call functions found in them. Nothing the tool planted runs
        here unless it also rebound a name (which is then reported)."""
        for i in self.versions.moved():
            name, space, keys, values = self.spaces[i]
            # The same objects under the same names: compared by identity, so no
            # method of a planted value runs (one that claims to equal the old is seen).
            if len(space) != len(values) or not all(map(operator.is_, space.values(), values)):
                return f"a name in {name} rebound"
            if tuple(space) != keys:  # str keys: equal ones are the same name
                return f"a name in {name} rebound"
        self.versions.seen()
        shapes = _shapes(*self.owners)
        if len(shapes) != len(self.shapes) or not all(map(operator.is_, shapes, self.shapes)):
            # Its dict is as it was, but what a lookup finds is not: a class put in a
            # watched one's bases (before `_socket.socket`, whose `sendall` then loses),
            # or a watched module's class swapped for one with a property of a name.
            return "a watched module's class or a watched class's bases changed"
        for which, name in _ITIMERS:
            if _signal.getitimer(which) != (0.0, 0.0):
                return f"a timer ({name}) armed"
        if _read(_TIMERS) != self.timers:
            return "a POSIX timer made (timer_create)"
        if _kernel_signals() != self.signals:
            return "a signal blocked, left pending, caught or ignored (the kernel's view)"
        if not all(map(operator.is_, _handlers(), self.handlers)):
            return "a signal handler changed"
        if _native_handlers(self.caught) != self.native:
            return "a native signal handler put in place of Python's"
        if _wakeup_fd() != self.wakeup_fd:
            return "a signal wakeup descriptor set (signal.set_wakeup_fd)"
        if not self.fds.same():
            return "a file descriptor opened, closed or replaced"
        if _fd_modes(self.fds.fds) != self.fd_modes:
            return "a descriptor's flags (O_ASYNC, O_NONBLOCK, ...), owner or signal changed"
        if _sysv_objects(self.own_ipc) != self.sysv:
            return "a SysV shared memory segment, semaphore set or message queue left"
        if os.environ._data != self.environ:  # type: ignore[attr-defined]
            return "the environment changed"
        hooks = _hooks()
        if len(hooks) != len(self.hooks) or not all(map(operator.is_, hooks, self.hooks)):
            return "a hook, a standard stream or the import path changed"
        if not self._same_settings():
            return "the call's settings changed in place"
        if _settings() != self.settings:
            return (
                "the umask, the working directory, the recursion limit, the int digits "
                "limit, the collector's thresholds, the priority or a default timeout changed"
            )
        if _rlimits() != self.rlimits:
            return "an rlimit lowered for good (the next call would run under it)"
        return None

    def _same_settings(self) -> bool:
        try:
            return to_json(self.given) == self.given_json
        except Exception:  # the tool put something there that JSON cannot hold
            return False


_ITIMERS = (
    (_signal.ITIMER_REAL, "ITIMER_REAL"),
    (_signal.ITIMER_VIRTUAL, "ITIMER_VIRTUAL"),
    (_signal.ITIMER_PROF, "ITIMER_PROF"),
)
_SIGNALS = tuple(sorted(_signal.valid_signals()))


def _dict_of(space: Any) -> Any:
    """The dict itself behind a class's `vars` (a read-only view of it), whose version
    `Versions` reads; any other namespace as it is."""
    if type(space) is types.MappingProxyType:
        held = gc.get_referents(space)
        if len(held) == 1 and type(held[0]) is dict and held[0].keys() == space.keys():
            return held[0]
    return space


_FDS = "/proc/self/fd"
_identity = operator.attrgetter("st_dev", "st_ino", "st_mode")


class _Descriptors:
    """The open descriptors, each with what it points to, so one swapped in place of
    the worker's own (its log, its channel) is seen as well as a new or closed one.

    A listing of /proc/self/fd names the descriptors open and the listing's own (the
    lowest one free, closed once it is read). The same names as at the baseline, with
    each of the baseline's descriptors still open on the same file, is the same set:
    had one been closed and another opened, one of the baseline's would be missing
    (and the listing is read once, not each name turned into a number and sorted)."""

    def __init__(self) -> None:
        self.names = _listing()
        fds = []
        for name in self.names or ():
            try:
                os.fstat(int(name))
            except OSError:
                continue  # the listing's own descriptor, closed by now
            fds.append(int(name))
        self.fds = tuple(fds)
        self.identities = self._identities()

    def _identities(self) -> list[tuple[int, int, int]] | None:
        try:
            return list(map(_identity, map(os.fstat, self.fds)))
        except OSError:
            return None  # one was closed

    def same(self) -> bool:
        """Whether the same descriptors are open, on the same files."""
        if _listing() != self.names:
            return False
        return self.names is None or self._identities() == self.identities


def _listing() -> list[str] | None:
    try:
        return os.listdir(_FDS)
    except OSError:
        return None


def _masks() -> tuple[set[int], set[int]]:
    """The signals blocked, and those pending."""
    return _signal.pthread_sigmask(_signal.SIG_BLOCK, ()), _signal.sigpending()


_TIMERS = "/proc/self/timers"
"""The process's POSIX timers (timer_create), each with its signal: empty for none."""


def _read(path: str) -> bytes | None:
    """A small /proc file in one read; None where it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 16384)
    except OSError:
        return None
    finally:
        os.close(fd)


def _kernel_signals() -> bytes | tuple[set[int], set[int]]:
    """The kernel's view of this process's signals, from one read of /proc/self/status:
    pending (the thread's and the process's), blocked, ignored and caught. It sees a
    handler installed natively (ctypes, faulthandler), which Python's `getsignal`
    does not. The checks run with one thread left, so the main thread's view is all
    there is. Without /proc: the mask and the pending set alone."""
    status = _read("/proc/self/status")
    if status is None:
        return _masks()
    start = status.find(b"\nSigPnd:")  # SigQ, before it, counts the whole user's
    end = status.find(b"\nCap", start)
    return status[start:end] if start >= 0 else _masks()


class _Sigaction(ctypes.Structure):
    """glibc's struct sigaction (Linux): only the handler and the flags are read, since
    glibc leaves most of the mask it hands back unset."""

    _fields_ = (
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    )


try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None
_sigaction = getattr(_libc, "sigaction", None)


def _caught(signals: bytes | tuple[set[int], set[int]]) -> tuple[int, ...]:
    """The signals the kernel's view (`_kernel_signals`) has caught; () without it."""
    if _sigaction is None or not isinstance(signals, bytes):
        return ()
    at = signals.find(b"SigCgt:")
    caught = int(signals[at + 7 :].split(None, 1)[0], 16) if at >= 0 else 0
    return tuple(n for n in range(1, caught.bit_length() + 1) if caught >> (n - 1) & 1)


_action = _Sigaction()
_action_ref = ctypes.byref(_action)


def _native_handlers(caught: tuple[int, ...]) -> tuple[tuple[Any, int], ...]:
    """The kernel's action (handler address and flags) for each signal caught at the
    baseline (`caught`, worked out once): a native handler put in place of Python's
    own keeps the signal caught, so only its address tells. One system call per such
    signal (SIGINT)."""
    actions = []
    for signum in caught:
        _sigaction(signum, None, _action_ref)
        actions.append((_action.handler, _action.flags))
    return tuple(actions)


def _wakeup_fd() -> int | None:
    """The descriptor Python writes to as a signal arrives (-1: none), read by swapping
    it out and back. None where it cannot be read (not the main thread)."""
    try:
        fd = _signal.set_wakeup_fd(-1)
    except ValueError:
        return None
    if fd != -1:
        try:
            _signal.set_wakeup_fd(fd)
        except (ValueError, OSError):  # made blocking since: the worker is retired anyway
            pass
    return fd


def _fd_modes(fds: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Of each of the baseline's descriptors, its status flags (`O_ASYNC` makes I/O on
    it signal, `O_NONBLOCK`, `O_APPEND`), the process it signals (F_SETOWN), with what
    (F_SETSIG), and a lease on it (F_SETLEASE: another's open of the file then signals
    this process). Four system calls each, on the worker's four descriptors."""
    modes = []
    for fd in fds:
        try:
            modes.append(
                (
                    fd,
                    fcntl.fcntl(fd, fcntl.F_GETFL),
                    fcntl.fcntl(fd, fcntl.F_GETOWN),
                    fcntl.fcntl(fd, _F_GETSIG),
                    fcntl.fcntl(fd, fcntl.F_GETLEASE),
                )
            )
        except OSError:
            modes.append((fd,))  # closed since: `_Descriptors.same` says so first
    return tuple(modes)


_F_GETSIG = getattr(fcntl, "F_GETSIG", 11)

_SHM_INFO, _MSG_INFO, _SEM_INFO = 14, 12, 19
_IPC_ANSWER = (ctypes.c_int * 32)()
"""Where the *_INFO commands write their answer (struct shm_info, msginfo, seminfo)."""


def _sysv_objects(own_namespace: bool) -> tuple[int, ...] | frozenset[bytes] | None:
    """The SysV objects the call may have made. In an IPC namespace of the worker's own,
    the namespace's counts of segments, queues and semaphore sets (three system calls:
    every object there is this worker's, and the namespace dies with it). In the host's,
    the objects this uid created, from /proc/sysvipc: they outlive the worker, whether
    it is reused or not (see the README)."""
    if own_namespace and _libc is not None:
        counts = []
        info = _IPC_ANSWER
        refused = _libc.shmctl(0, _SHM_INFO, info) < 0
        counts.append(info[0])  # used_ids
        refused |= _libc.msgctl(0, _MSG_INFO, info) < 0
        counts.append(info[0])  # msgpool
        refused |= _libc.semctl(0, 0, _SEM_INFO, info) < 0
        counts.append(info[7])  # semusz
        if not refused:  # else the answer holds an earlier one's: read /proc instead
            return tuple(counts)
    uid = str(os.getuid()).encode()
    found: set[bytes] = set()
    for kind in (b"shm", b"msg", b"sem"):
        try:
            fd = os.open(b"/proc/sysvipc/" + kind, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks = [os.read(fd, 65536)]
            while chunks[-1]:
                chunks.append(os.read(fd, 65536))
        finally:
            os.close(fd)
        header, *rows = b"".join(chunks).splitlines()
        cuid = header.split().index(b"cuid")
        for row in rows:
            fields = row.split()
            if fields[cuid] == uid:
                found.add(kind + b" " + fields[1])
    return frozenset(found)


def _handlers() -> tuple[Any, ...]:
    """Python's own handler of each signal (`_signal`'s: `signal`'s wrapper costs 10x)."""
    return tuple(map(_signal.getsignal, _SIGNALS))


def _hooks() -> tuple[Any, ...]:
    """Objects the worker or the next call would use, compared by identity."""
    return (
        sys.gettrace(),
        sys.getprofile(),
        threading.gettrace(),
        threading.getprofile(),
        sys.excepthook,
        sys.unraisablehook,
        sys.stdin,
        sys.stdout,
        sys.stderr,
        gc.isenabled(),
        *sys.meta_path,
        None,
        *sys.path_hooks,
        None,
        *sys.path,
        None,
        *gc.callbacks,
    )


def _settings() -> tuple[Any, ...]:
    """Plain values (floats, ints, a str) made anew at each reading: compared by value."""
    umask = os.umask(0o077)
    os.umask(umask)
    return (
        umask,
        socket.getdefaulttimeout(),
        sys.getrecursionlimit(),
        sys.getswitchinterval(),
        sys.get_int_max_str_digits(),
        gc.get_threshold(),  # 0: the collector never runs, and cycles pile up
        os.getpriority(os.PRIO_PROCESS, 0),
        _cwd(),
    )


def _shapes(modules: tuple[Any, ...], classes: tuple[type, ...]) -> tuple[Any, ...]:
    """What decides a lookup besides the dicts: each module's class, each class's
    metaclass and its method resolution order (a new tuple once its bases change).
    Compared by identity."""
    return (*map(type, modules), *map(type, classes), *map(_mro, classes))


_mro = operator.attrgetter("__mro__")

_RENEWED = (resource.RLIMIT_AS, resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE)
"""Whose soft limit `limits.renew_rlimits` sets back to the hard one after each call
(and `cap_file_size` lowers during one): only their hard limit is compared."""
_KEPT_RLIMITS = (
    resource.RLIMIT_DATA,
    resource.RLIMIT_STACK,
    resource.RLIMIT_NPROC,
    resource.RLIMIT_MEMLOCK,
    resource.RLIMIT_SIGPENDING,
)
"""Those a tool may lower, soft or hard, that would bound the next call. Not compared:
CPU (renewed, its hard limit checked there), CORE and MSGQUEUE (0 already), and those
that bound only what the worker never does (NICE, RTPRIO, RTTIME) or nothing on Linux
(RSS, LOCKS)."""


def _rlimits() -> tuple[Any, ...]:
    """The rlimits a call could have lowered for the next: a lowered hard one cannot be
    raised again (fewer descriptors, less memory). One system call each."""
    getrlimit = resource.getrlimit
    return (
        *(getrlimit(which)[1] for which in _RENEWED),
        *map(getrlimit, _KEPT_RLIMITS),
    )


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None
