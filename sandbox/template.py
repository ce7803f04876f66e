"""The orchestrator's side of the zygote: start it, ask for workers, hear of exits.

A reader thread receives the zygote's messages: each `Spawned` becomes an idle
`WorkerHandle` in the spare queue; each `Exited` is kept for the call that needs to
know how its worker died.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import OrderedDict

import multiprocess

from . import _cgroups, _sched, reaper
from ._cpuacct import UsageFile
from ._netns import LISTENER_MARK, PROXY_HOST
from .channel import FrameReader, PeerGone
from .errors import SandboxUnavailable
from .limits import NetworkMode
from .protocol import (
    Exited,
    Failed,
    FromZygote,
    Profile,
    Ready,
    Shutdown,
    Spawn,
    Spawned,
    ZygoteConfig,
)
from .zygote import exec_zygote

STARTUP_TIMEOUT_S = 60.0
"""Importing pydantic and the tools in a new interpreter; generous for a loaded machine."""
EXIT_REPORT_TIMEOUT_S = 10.0
"""How long to wait for the zygote to report a dead worker's status."""
_KEPT_EXITS = 4096
PREPARED_PROFILES = 8
"""Profiles a zygote keeps a prepared spare for (the most recently used): each costs
one idle worker, a few MiB."""


class WorkerHandle:
    """One idle or busy worker, as the orchestrator holds it."""

    def __init__(
        self,
        template: Template,
        spawned: Spawned,
        sock: socket.socket,
        fds: tuple[int, int, int],
    ) -> None:
        """`fds`: its pidfd, its log (read-only) and the read end of its set-up pipe."""
        self.template = template
        """The zygote that forked it (and reports its exit)."""
        self.pid = spawned.pid
        """As the zygote knows it (its exit reports name this one)."""
        self.host_pid = _host_pid(fds[0]) or spawned.pid
        """As our /proc knows it: the zygote may be pid 1 of a namespace of its own."""
        self.workdir = spawned.workdir
        self.cpu_usage = _open_usage(spawned.cpu_usage)
        self._cgroup = spawned.pids_cgroup
        """Its pids cgroup, which every process of its call stays in (`kill_all`)."""
        self._tasks_file = _tasks_file(spawned.pids_cgroup)
        self._killed = False
        """`kill_all` made sure no process of the call can run again."""
        """Usage file of its CPU accounting cgroup (`sandbox.cpu_budget`), if any:
        opened here, as the spare arrives, not on a call's clock."""
        self.sock = sock
        self.pidfd, self.log_fd, self.setup_fd = fds
        os.set_blocking(self.setup_fd, False)
        self.reader = FrameReader(sock, self.pidfd)
        self.calls = 0
        self.idle_since = 0.0
        """When it last went warm, waiting for a call (`time.monotonic`)."""
        self.warm_until = math.inf
        """When it may serve no more, however often it is called: its first call's
        start plus `Limits.max_warm_age_s` (`time.monotonic`)."""
        self.network: NetworkMode = spawned.network
        self.profile = spawned.profile
        """What its set-up was done for ahead of the call (None: at the call)."""
        self.listener: socket.socket | None = None
        """A network allowlist's listener on the worker's loopback (`take_listener`)."""
        self._exited: Exited | None = None

    def take_listener(self, timeout: float) -> socket.socket:
        """The listening socket the worker's set-up code made in its own network
        namespace and sent before reading its first call (so no tool has run yet).
        Raises PeerGone if the worker died first (a set-up failure), OSError if what
        came is not a listening TCP socket."""
        if self.listener is not None:
            return self.listener
        import select

        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise OSError(f"the worker sent no listener within {timeout:g} s")
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, len(LISTENER_MARK), 1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise PeerGone from None
        sockets = [socket.socket(fileno=fd) for fd in fds]
        if not data:
            raise PeerGone
        if data != LISTENER_MARK or len(sockets) != 1 or not _is_listener(sockets[0]):
            for s in sockets:
                s.close()
            raise OSError("the worker's set-up sent no listening socket")
        self.listener = sockets[0]
        return self.listener

    def exit_report(self) -> Exited | None:
        """The zygote's report of this worker's exit, waited for once and kept: the
        call that explains a death and the retirement that follows both need it."""
        if self._exited is None:
            self._exited = self.template.exit_status(self.pid)
        return self._exited

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def kill_all(self, timeout: float) -> bool:
        """SIGKILL the worker and every other process of its call, and return once
        none of them can run again; True when so, False where that cannot be known
        (no cgroup to read) or did not happen within `timeout`.

        Every process the call started is in the worker's pids cgroup, which none can
        leave. First its pids.max goes to 0: no process can be made in it from then
        on. If then the count of tasks it charges equals the count it lists (read in
        that order, afresh), none is being forked or is dying unseen, and the listed
        ones are all there will ever be: each is SIGKILLed (a process with SIGKILL
        pending never runs an instruction of its own again) and the call may return
        while they exit (`_frozen_kill`). Otherwise each process listed is killed and
        waited for (`_kill_and_wait`). Their exits, the worker's teardown of its
        address space, mounts and PID namespace among them, go on after the call."""
        if self._cgroup is None:
            self.kill()
            return False
        if self._killed:
            return True  # certain once, certain for good: nothing of it can be made
        if self.wait_dead(0):  # exited (a fresh worker after its answer): little to do
            self._killed = self._kill_and_wait(timeout)
            return self._killed
        # Woken by its SIGKILL the worker would take our CPU for its teardown (the
        # kernel is not preempted here): as a batch task it does not preempt us, and on
        # another CPU it is not picked ahead of us when our slice ends (as it was, for
        # 1-2 ms, as a batch task alone). (Not exited a moment ago: its pid is its own.)
        _sched.batch_of(self.host_pid)
        _sched.off_this_cpu(self.host_pid)
        frozen = _write_file(os.path.join(self._cgroup, "pids.max"), b"0")
        self._killed = (frozen and self._frozen_kill()) or self._kill_and_wait(timeout)
        return self._killed

    def _frozen_kill(self) -> bool:
        """With no process to be made any more: SIGKILL every process listed if the
        listing is the whole of what the cgroup charges; False if it may not be."""
        charged = _read_int(os.path.join(self._cgroup, "pids.current"))
        tasks = self._listed(self._tasks_file)
        if charged is None or tasks is None or charged != len(tasks):
            return False  # a fork under way, a zombie, or an unreadable file: wait
        procs = self._listed("cgroup.procs")
        if procs is None:
            return False
        self.kill()
        return self._signal_listed(procs - {self.host_pid})

    def _kill_and_wait(self, timeout: float) -> bool:
        """Each process listed is killed and waited for on a pidfd opened while it was
        listed and found listed again after (so never another process that took its
        pid); whatever it forked before it died is listed in the next round. A dead
        process's pid cannot be taken while it is listed (nor after, unless the pids
        wrap around within one kill: 32,768 forks here). The worker itself, SIGKILLed,
        runs no code again (the kernel refuses a fork to a task with SIGKILL pending)."""
        self.kill()
        deadline = time.monotonic() + timeout
        dead = {self.host_pid}
        for _ in range(reaper.KILL_ROUNDS):
            listed = self._listed("cgroup.procs")
            if listed is None:
                return False
            others = listed - dead
            if not others:
                return True
            pidfds = {}
            for pid in others:
                try:
                    pidfds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    dead.add(pid)  # released already, on its way out of the list
                except OSError:
                    return False
            try:
                still = self._listed("cgroup.procs")
                if still is None:
                    return False
                poller = select.poll()
                for pid, fd in pidfds.items():
                    if pid in still:
                        with contextlib.suppress(OSError):
                            signal.pidfd_send_signal(fd, signal.SIGKILL)
                        poller.register(fd, select.POLLIN)
                waiting = {fd: pid for pid, fd in pidfds.items() if pid in still}
                while waiting:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    for fd, _ in poller.poll(left * 1000):
                        poller.unregister(fd)
                        dead.add(waiting.pop(fd))
            finally:
                for fd in pidfds.values():
                    os.close(fd)
        return False

    def _signal_listed(self, pids: set[int]) -> bool:
        """SIGKILL each of `pids` through a pidfd, if it is still listed once the pidfd
        is open (else the pid may be another process's by now: it is not signalled)."""
        pidfds = {}
        try:
            for pid in pids:
                try:
                    pidfds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    pass  # released already: it runs no more
                except OSError:
                    return False
            still = self._listed("cgroup.procs")
            if still is None:
                return False
            for pid, fd in pidfds.items():
                if pid in still:
                    _sched.batch_of(pid)  # as the worker: its exit waits for our return
                    _sched.off_this_cpu(pid)
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
            return True
        finally:
            for fd in pidfds.values():
                os.close(fd)

    def _listed(self, name: str) -> set[int] | None:
        """The pids (or thread ids) in the worker's pids cgroup's file `name`; None
        where it cannot be read whole. Opened afresh each time: cgroup v1 hands a
        descriptor held open the list it read the first time, for up to a second."""
        if self._cgroup is None:
            return None
        try:
            fd = os.open(os.path.join(self._cgroup, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            # Removed: a cgroup is removed only once no process is left in it.
            return set() if exc.errno in (errno.ENOENT, errno.ENODEV) else None
        try:
            data = os.read(fd, 1 << 16)
        except OSError as exc:
            return set() if exc.errno == errno.ENODEV else None
        finally:
            os.close(fd)
        if len(data) >= 1 << 16:
            return None
        try:
            return {int(pid) for pid in data.split()}
        except ValueError:
            return None

    def wait_dead(self, timeout: float) -> bool:
        """Wait for the worker to exit; with a PID namespace its whole tree is gone then."""
        import select

        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def read_log(self, limit: int) -> str:
        """The start of what the current call printed."""
        try:
            data = os.pread(self.log_fd, limit, 0)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def setup_failure(self) -> str | None:
        """Why the worker's sandbox could not be set up, if it said so. Only its set-up
        code holds this pipe, and closes it before a tool runs: nothing a tool writes
        or does (exit 70 included) can make this say anything."""
        try:
            data = os.read(self.setup_fd, 1000)
        except OSError:  # empty and still open: set-up is not over (or never failed)
            return None
        return data.decode("utf-8", "replace").partition("\n")[0] or None

    def close(self) -> None:
        if self.cpu_usage is not None:
            self.cpu_usage.close()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.listener is not None:  # the last hold on the worker's network namespace
            self.listener.close()
        for fd in (self.pidfd, self.log_fd, self.setup_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _is_listener(sock: socket.socket) -> bool:
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        host = sock.getsockname()[0]
    except OSError:
        return False
    kind = sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    return bool(listening) and kind and host == PROXY_HOST


SHM = "/dev/shm"


def workers_dir() -> str | None:
    """Where the workers' directories go: /dev/shm where it is a tmpfs we may write,
    unless TMPDIR says where temporary files go (None: `tempfile`'s own choice).

    A worker's directory holds only the mount points of its own tmpfs and root, and
    the zygote makes three directories per worker and removes them after, in its one
    loop: on this VM's disk each rmdir waited 0.4-2 ms for the journal, on a tmpfs
    25 µs. Without a mount namespace (no tmpfs of its own) a tool writes there, and
    on a tmpfs its pages are charged to its memory cgroup."""
    if os.environ.get("TMPDIR"):
        return None
    try:
        with open("/proc/self/mounts") as f:
            on_tmpfs = any(line.split()[1:3] == [SHM, "tmpfs"] for line in f)
    except OSError:
        return None
    return SHM if on_tmpfs and os.access(SHM, os.W_OK | os.X_OK) else None


def _open_usage(path: str | None) -> UsageFile | None:
    if path is None:
        return None
    try:
        return UsageFile(path)
    except OSError:  # gone already (the worker died): its exit status tells the rest
        return None


def _tasks_file(cgroup: str | None) -> str:
    """What lists every thread of a cgroup: `tasks` in cgroup v1, else v2's."""
    if cgroup is not None and not os.path.exists(os.path.join(cgroup, "tasks")):
        return "cgroup.threads"
    return "tasks"


def _write_file(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.write(fd, data) == len(data)
    except OSError:
        return False
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 64))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _host_pid(pidfd: int) -> int | None:
    """The pid a pidfd refers to, in our own PID namespace (its fdinfo says)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError, IndexError):
        pass
    return None


class Template:
    """A running zygote."""

    def __init__(
        self,
        sources: list[str],
        *,
        disabled: list[str],
        read_paths: list[str],
    ) -> None:
        subtree = os.environ.get(_cgroups.ROOT_ENV) or None
        _cgroups.parse_root(subtree)  # a value that is not a cgroup path: said here, now
        self.root = tempfile.mkdtemp(prefix="sandboxed-agent-", dir=workers_dir())
        config = ZygoteConfig(
            sys_path=[os.path.abspath(p) for p in sys.path if p],
            sources=sources,
            root=self.root,
            disabled=disabled,
            read_paths=read_paths,
            cgroup_subtree=subtree,
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctrl = ours
        self._send_lock = threading.Lock()
        context = multiprocess.get_context("fork")
        self.process = context.Process(
            target=exec_zygote,
            args=(theirs.fileno(), config.model_dump_json()),
            name="sandboxed-agent-zygote",
            daemon=True,
        )
        try:
            self.process.start()
        except BaseException:  # no process (fork refused: EAGAIN): leave nothing behind
            ours.close()
            theirs.close()
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        theirs.close()
        # Spares by network mode (those with a network only made on demand).
        self.spares: dict[NetworkMode, queue.Queue[WorkerHandle | BaseException]] = {
            "none": queue.Queue(),
            "proxy": queue.Queue(),
            "all": queue.Queue(),
        }
        self.prepared: OrderedDict[str, list[WorkerHandle]] = OrderedDict()
        """Spares whose set-up is done for a profile (`Profile.key`), least recently
        used first; guarded by `_prepared_lock`."""
        self.hits: dict[str, int] = {}
        """Calls served by a prepared spare, by profile."""
        self._owed: dict[str, int] = {}
        """Prepared spares asked for and not yet arrived, by profile."""
        self._prepared_lock = threading.Lock()
        self._exits: OrderedDict[int, Exited] = OrderedDict()
        self._unwanted: set[int] = set()
        """Discarded spares, whose exit reports nobody waits for."""
        self._exit_cond = threading.Condition()
        self.broken: str | None = None
        self.ready = self._wait_ready()
        self._reader = threading.Thread(
            target=self._read_loop, name="sandboxed-agent-zygote-reader", daemon=True
        )
        try:
            self._reader.start()
        except BaseException:  # no thread to spare: stop the zygote before giving up
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self) -> Ready:
        self._ctrl.settimeout(STARTUP_TIMEOUT_S)
        try:
            data = self._ctrl.recv(65536)
        except TimeoutError:
            self._abort()
            raise SandboxUnavailable(
                f"the worker template did not start within {STARTUP_TIMEOUT_S:g} s"
            ) from None
        finally:
            self._ctrl.settimeout(None)
        if not data:
            self._abort()
            raise SandboxUnavailable("the worker template exited while starting (see stderr)")
        message = FromZygote.validate_json(data)
        if isinstance(message, Failed):
            self._abort()
            raise SandboxUnavailable(message.message)
        if not isinstance(message, Ready):
            self._abort()
            raise SandboxUnavailable(f"the worker template sent {message.type!r} before 'ready'")
        return message

    def _abort(self) -> None:
        self._ctrl.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def _read_loop(self) -> None:
        try:
            self._read_messages()
        except Exception as exc:  # a bug here must not leave callers waiting for spares
            self._mark_broken(f"lost contact with the worker template: {exc}")

    def _read_messages(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._ctrl, 65536, 4)
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._mark_broken("the worker template process exited")
                return
            message = FromZygote.validate_json(data)
            if isinstance(message, Spawned):
                sock = socket.socket(fileno=fds[0])
                handle = WorkerHandle(self, message, sock, (fds[1], fds[2], fds[3]))
                if message.profile is None:
                    self.spares[message.network].put(handle)
                else:
                    self._arrived(message.profile.key, handle)
            elif isinstance(message, Exited):
                with self._exit_cond:
                    if message.pid in self._unwanted:
                        self._unwanted.discard(message.pid)
                        continue
                    self._exits[message.pid] = message
                    while len(self._exits) > _KEPT_EXITS:
                        self._exits.popitem(last=False)
                    self._exit_cond.notify_all()
            elif isinstance(message, Failed):
                if message.profile is None:
                    self.spares[message.network].put(SandboxUnavailable(message.message))
                else:  # its call takes a spare set up at the call instead
                    self._arrived(message.profile.key, None)

    def _mark_broken(self, why: str) -> None:
        self.broken = why
        for spares in self.spares.values():
            spares.put(SandboxUnavailable(why))
        with self._exit_cond:
            self._exit_cond.notify_all()

    def request_worker(self, network: NetworkMode = "none") -> None:
        if self.broken:
            return
        with self._send_lock, contextlib.suppress(OSError):
            self._ctrl.send(Spawn(network=network).model_dump_json().encode())

    def request_prepared(self, profile: Profile) -> None:
        """Ask for a spare set up ahead for `profile`, unless one is already on its
        way; the least recently used profile beyond `PREPARED_PROFILES` loses its own."""
        key = profile.key
        dropped: list[WorkerHandle] = []
        with self._prepared_lock:
            if self._owed.get(key):
                return
            self._owed[key] = 1
            self.prepared.setdefault(key, [])
            self.prepared.move_to_end(key)
            while len(self.prepared) > PREPARED_PROFILES:
                _, handles = self.prepared.popitem(last=False)
                dropped += handles
        for handle in dropped:
            self.discard(handle)
        if self.broken:
            return
        spawn = Spawn(network=profile.limits.network_mode, profile=profile)
        with self._send_lock, contextlib.suppress(OSError):
            self._ctrl.send(spawn.model_dump_json().encode())

    def take_prepared(self, profile: Profile, key: str | None = None) -> WorkerHandle | None:
        """A live spare set up for exactly `profile` (whose `key` it is, when given), if
        one is ready (never waits)."""
        key = profile.key if key is None else key
        while True:
            with self._prepared_lock:
                handles = self.prepared.get(key)
                if not handles:
                    return None
                handle = handles.pop(0)
                self.prepared.move_to_end(key)
            if not handle.wait_dead(0):
                with self._prepared_lock:
                    self.hits[key] = self.hits.get(key, 0) + 1
                return handle
            self.discard(handle)  # its set-up failed, or it was killed: the call's does it

    def discard(self, handle: WorkerHandle) -> None:
        """Kill an idle spare that no call will take (it never ran a tool: it has no
        tree), and drop the report of its exit; without waiting, since the reader
        thread calls this too."""
        handle.kill()
        self.forget_exit(handle.pid)
        handle.close()

    def _arrived(self, key: str, handle: WorkerHandle | None) -> None:
        with self._prepared_lock:
            owed = self._owed.pop(key, 0) - 1
            if owed > 0:
                self._owed[key] = owed
            handles = self.prepared.get(key)
            if handle is not None and handles is not None and not self.broken:
                handles.append(handle)
                return
        if handle is not None:
            self.discard(handle)  # its profile was dropped meanwhile

    def take_spare(self, network: NetworkMode, timeout: float) -> WorkerHandle:
        spares = self.spares[network]
        if network != "none" and spares.empty():
            self.request_worker(network)  # made on demand: most tools need none
        while True:
            if self.broken:
                raise SandboxUnavailable(self.broken)
            try:
                item = spares.get(timeout=timeout)
            except queue.Empty:
                raise SandboxUnavailable(f"no worker became ready within {timeout:g} s") from None
            if isinstance(item, BaseException):
                if self.broken:
                    spares.put(item)  # every later caller must learn it too
                else:
                    self.request_worker(network)  # the failed spawn still owes us a spare
                raise item
            if not item.wait_dead(0):
                return item
            item.close()  # died waiting (its zygote was killed): never hand it out
            self.request_worker(network)

    def exit_status(self, pid: int, timeout: float = EXIT_REPORT_TIMEOUT_S) -> Exited | None:
        with self._exit_cond:
            self._exit_cond.wait_for(lambda: pid in self._exits or self.broken, timeout)
            return self._exits.pop(pid, None)

    def forget_exit(self, pid: int) -> None:
        """Nobody will ask for this worker's exit report: drop it, now or as it comes."""
        with self._exit_cond:
            if self._exits.pop(pid, None) is None:
                self._unwanted.add(pid)

    def close(self, timeout: float = 10.0) -> None:
        """Ask the zygote to kill its workers and exit; then make sure it did."""
        with self._send_lock, contextlib.suppress(OSError):
            self._ctrl.send(Shutdown().model_dump_json().encode())
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        with contextlib.suppress(OSError):
            self._ctrl.close()
        for spares in self.spares.values():
            while True:
                try:
                    item = spares.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, WorkerHandle):
                    item.close()
        with self._prepared_lock:
            prepared = [h for handles in self.prepared.values() for h in handles]
            self.prepared.clear()
        for handle in prepared:
            handle.close()
        shutil.rmtree(self.root, ignore_errors=True)
