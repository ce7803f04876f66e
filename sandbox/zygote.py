"""The zygote: a pre-imported template process that forks workers on request.

The orchestrator starts it with `multiprocess` and it immediately `exec`s a fresh
interpreter with an allowlisted environment, so no secret of the orchestrator is in
its memory, its environment block or `/proc/<pid>/environ`, and so nothing it forks
can inherit one. It then imports the tools once; forking it costs well under a
millisecond, against tens for a new interpreter.

It is single-threaded and waits on two things: its control socket (`Spawn`,
`Shutdown`, or end of file when the orchestrator dies) and a signal wakeup pipe
(`SIGCHLD`: reap a worker and report `Exited`). When the orchestrator goes away it
kills every worker and exits.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import os
import secrets
import select
import shutil
import signal
import socket
import sys
from typing import NoReturn

from . import _landlock, _linux, _sched, _seccomp
from .layers import Layers, user_namespace
from .limits import NetworkMode
from .protocol import (
    Exited,
    Failed,
    Layer,
    Profile,
    Ready,
    Shutdown,
    Spawn,
    Spawned,
    ToZygote,
    ZygoteConfig,
)
from .read_set import base_read_paths
from .worker import EXIT_SETUP_FAILED, WorkerSetup, detach, report_failure, serve, warm_up

ENV_ALLOWLIST = ("PATH", "LANG", "LANGUAGE", "TZ")
ENV_PREFIX_ALLOWLIST = ("LC_",)


def clean_environment(env: dict[str, str]) -> dict[str, str]:
    """Only locale, time zone and PATH: no key, token or credential crosses."""
    kept = {
        k: v for k, v in env.items() if k in ENV_ALLOWLIST or k.startswith(ENV_PREFIX_ALLOWLIST)
    }
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return kept


_BOOTSTRAP = (
    "import sys, json; cfg = sys.argv[2]; "
    "sys.path[:0] = json.loads(cfg)['sys_path']; "
    "from sandbox.zygote import main; main(int(sys.argv[1]), cfg)"
)


def exec_zygote(ctrl_fd: int, config_json: str) -> NoReturn:
    """Runs in the child `multiprocess` forked: replace it with a clean interpreter."""
    os.set_inheritable(ctrl_fd, True)
    env = clean_environment(dict(os.environ))
    argv = [sys.executable, "-I", "-c", _BOOTSTRAP, str(ctrl_fd), config_json]
    try:
        os.execve(sys.executable, argv, env)
    finally:
        os._exit(127)


class _WorkerRecord:
    def __init__(
        self, base: str, cgroups: tuple[str | None, str | None, str | None], uid: int | None
    ) -> None:
        self.base = base
        self.cgroup, self.memory, self.cpu = cgroups
        self.uid = uid


class Zygote:
    def __init__(self, ctrl: socket.socket, config: ZygoteConfig, user_ns: Layer) -> None:
        from tools.registry import Registry

        self.ctrl = ctrl
        self.config = config
        self.registry = Registry()
        for source in config.sources:
            self.registry.load(source)
        self.workers: dict[int, _WorkerRecord] = {}
        self.count = 0
        self.read_paths = base_read_paths(config.read_paths)
        self.layers = Layers(config, self.read_paths, user_ns)
        # Opened once here, inherited by every worker (`_landlock.OpenPaths`).
        self.landlock_read = (
            _landlock.OpenPaths(_landlock.outermost(self.read_paths))
            if self.layers.landlock
            else None
        )
        self.pidns = self.layers.pidns
        self.cgroup_root = self.layers.cgroup_root
        self.memory_root = self.layers.memory_root
        if self.layers.uids is not None:
            os.chmod(config.root, 0o711)  # workers of other uids pass through, not list
        # Orphans of workers come to us, not to init, so none escapes the sweep.
        _linux.set_child_subreaper()
        if self.layers.drop_capabilities:
            _linux.drop_bounding_set()  # inherited by every worker; the zygote never execs
        if self.layers.seccomp:
            for network in ("none", "proxy", "all"):
                _seccomp.compiled(self.layers.seccomp_rules(network))  # once, not per fork
        self.short_slice = _sched.short_slice_for_children()  # SCHED_OTHER, as now
        _sched.set_batch()
        warm_up(fallback_clean_up=self.pidns is None)

    def send(self, message: Ready | Spawned | Exited | Failed, fds: list[int] = ()) -> None:
        data = message.model_dump_json().encode()
        if fds:
            socket.send_fds(self.ctrl, [data], list(fds))
        else:
            self.ctrl.send(data)

    def spawn(self, network: NetworkMode, profile: Profile | None = None) -> None:
        self.count += 1
        base = _new_directory(self.config.root, f"w{self.count}-")
        workdir = os.path.join(base, "work")
        os.mkdir(workdir, 0o700)
        if self.layers.jail is not None:
            os.mkdir(os.path.join(base, "root"), 0o700)  # a mount point in the worker only
        uid = self.layers.uids.take() if self.layers.uids else None
        if uid is not None:
            os.chmod(base, 0o711)
            os.chown(workdir, uid, uid)
        # The log lives in memory, never on the host's disk: its pages are charged to
        # the worker's memory cgroup, and RLIMIT_FSIZE bounds each call's part. The
        # orchestrator reads it through a read-only descriptor of its own.
        log_fd = os.memfd_create(f"w{self.count}-output.log", os.MFD_CLOEXEC)
        fcntl.fcntl(log_fd, fcntl.F_SETFL, os.O_APPEND)  # after ftruncate, writes start at 0
        log_reader = os.open(f"/proc/self/fd/{log_fd}", os.O_RDONLY | os.O_CLOEXEC)
        # Only the worker's set-up code holds the write end, closed before any tool runs.
        setup_reader, setup_fd = os.pipe2(os.O_CLOEXEC)
        cgroup = memory = cpu = None
        if self.layers.cpu_root:
            cpu = os.path.join(self.layers.cpu_root, f"w{self.count}")
            os.mkdir(cpu)
        if self.cgroup_root:
            cgroup = os.path.join(self.cgroup_root, f"w{self.count}")
            os.mkdir(cgroup)
        if self.memory_root:
            memory = os.path.join(self.memory_root, f"w{self.count}")
            os.mkdir(memory)
        # The C sockets under `socket`'s classes: a fileno and a close are all we use.
        ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = -1
        if self.pidns:
            self.pidns.enter()
        try:
            pid = os.fork()
        finally:
            if self.pidns and pid != 0:
                self.pidns.leave()  # also when fork failed: the next spawn must work
        if pid == 0:
            fds = (theirs.fileno(), log_fd, setup_fd)
            self._become_worker(fds, workdir, (cgroup, memory, cpu), network, uid, profile)
        theirs.close()
        os.close(log_fd)
        os.close(setup_fd)
        pidfd = os.pidfd_open(pid)
        self.workers[pid] = _WorkerRecord(base, (cgroup, memory, cpu), uid)
        try:
            usage = os.path.join(cpu, self.layers.cpu_usage) if cpu else None
            spawned = Spawned(
                pid=pid,
                network=network,
                workdir=workdir,
                cpu_usage=usage,
                profile=profile,
                pids_cgroup=cgroup,
            )
            self.send(spawned, [ours.fileno(), pidfd, log_reader, setup_reader])
        finally:
            ours.close()
            for fd in (pidfd, log_reader, setup_reader):
                os.close(fd)

    def _become_worker(
        self,
        fds: tuple[int, int, int],
        workdir: str,
        cgroups: tuple[str | None, str | None, str | None],
        network: NetworkMode,
        uid: int | None,
        profile: Profile | None,
    ) -> NoReturn:
        """`fds`: the worker's socket, its log and the write end of its set-up pipe;
        `cgroups`: its pids, memory and CPU cgroups."""
        setup: WorkerSetup | None = None
        # Woken at once by its call (`_sched`); not the zygote, which would then take
        # the CPU from the orchestrator each time it is asked for a spare.
        if not self.short_slice():
            _sched.set_normal()  # not the zygote's SCHED_BATCH: woken by its call, it runs
        try:
            # First, and before any call can come, so everything a call does counts.
            # The worker joins them itself: each join waits for the kernel (an RCU
            # grace period), and the zygote, which forks and reaps every worker in
            # turn, waited three times per spawn when it moved them.
            _join_cgroups(cgroups)
            proxy_port = self.layers.enter_network(network, fds[0])
            layers = self.layers
            setup = WorkerSetup(
                *fds,
                workdir,
                cgroups[0],
                memory_cgroup=cgroups[1],
                in_pid_namespace=self.pidns is not None,
                landlock_read=self.landlock_read,
                drop_capabilities=layers.drop_capabilities,
                private_mounts=layers.private_mounts,
                uid=uid,
                ipc_namespace=layers.ipc,
                keyring=layers.keyring,
                seccomp=layers.seccomp_rules(network) if layers.seccomp else None,
                proxy_port=proxy_port,
                jail=layers.jail,
                data_gid=layers.uids.data_gid if layers.uids else None,
                profile=profile,
            )
            chan = detach(setup)
            serve(chan, self.registry, setup)
        except BaseException as exc:
            # Fail closed, and say why on the set-up pipe while set-up is not done.
            report_failure(fds[2] if setup is None else setup.setup_fd, exc)
        os._exit(EXIT_SETUP_FAILED)

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            record = self.workers.pop(pid, None)
            if record is None:
                continue  # an orphan of some worker, re-parented to us
            if self.pidns is None:
                self._sweep(record)
            cpu = usage.ru_utime + usage.ru_stime
            oom = _oom_kills(record.memory) > 0 if record.memory else False
            self.send(Exited(pid=pid, status=status, cpu_s=cpu, oom_killed=oom))
            self._remove(record)

    def _sweep(self, record: _WorkerRecord) -> None:
        """Without PID namespaces: kill what the dead worker left behind. Its orphans
        were re-parented to us (a subreaper); each is stopped and killed with its tree,
        until none is left that is not a worker. Runs before `Exited` is sent."""
        if record.cgroup:
            _kill_cgroup(record.cgroup)
        if os.getpid() == 1:
            return  # our own namespace's init: the host's /proc would misname our pids
        import psutil

        from . import reaper

        for _ in range(reaper.KILL_ROUNDS):
            orphans = [c for c in psutil.Process().children() if c.pid not in self.workers]
            orphans = [c for c in orphans if reaper.is_running(c)]
            if not orphans:
                return
            for orphan in orphans:
                reaper.kill_tree(orphan.pid)
                try:
                    orphan.kill()
                except psutil.Error:
                    pass

    def _remove(self, record: _WorkerRecord) -> None:
        _remove_base(record.base)
        if record.uid is not None and self.layers.uids is not None:
            self.layers.uids.release(record.uid)
        for group in (record.cgroup, record.memory, record.cpu):
            if group:
                _rmdir_cgroup(group)

    def run(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        # Ctrl-C reaches the whole foreground group; the orchestrator decides what to do.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        poller = select.poll()
        poller.register(self.ctrl.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        self.send(Ready(layers=self.layers.status, tools=self.registry.names()))
        while not stop:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    while _drain(wake_r):
                        pass
                    self.reap()
                    continue
                data = self.ctrl.recv(65536)
                if not data:
                    return
                message = ToZygote.validate_json(data)
                if isinstance(message, Shutdown):
                    return
                if isinstance(message, Spawn):
                    try:
                        self.spawn(message.network, message.profile)
                    except OSError as exc:
                        failure = f"cannot start a worker: {exc}"
                        self.send(
                            Failed(
                                message=failure, network=message.network, profile=message.profile
                            )
                        )

    def shutdown(self) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid, record in list(self.workers.items()):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            if self.pidns is None:
                self._sweep(record)
            self._remove(record)
        self.workers.clear()
        _reap_all_children()
        shutil.rmtree(self.config.root, ignore_errors=True)
        for root in (self.cgroup_root, self.memory_root, self.layers.cpu_root):
            if root:
                _rmdir_cgroup(root)


def _new_directory(parent: str, prefix: str) -> str:
    """A new directory of mode 0700 in `parent`, named `prefix` and random letters, as
    `tempfile.mkdtemp` makes one (whose name generator, Python code run after every
    fork, copied 24 more of the zygote's pages per worker than this)."""
    while True:
        path = os.path.join(parent, prefix + secrets.token_hex(4))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path


def _join_cgroups(groups: tuple[str | None, ...]) -> None:
    for group in groups:
        if group:
            fd = os.open(os.path.join(group, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")  # 0: the writer itself
            finally:
                os.close(fd)


def _remove_base(base: str) -> None:
    """A worker's directory: its empty work and root mount points, removed as such
    (a tmpfs held what the tool wrote); anything else there goes by `rmtree`, whose
    descriptor-safe walk cost a fifth of the zygote's time per worker."""
    try:
        for name in ("work", "root"):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(base, name))
        os.rmdir(base)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(base, ignore_errors=True)


def _oom_kills(memory_cgroup: str) -> int:
    try:
        with open(os.path.join(memory_cgroup, "memory.oom_control")) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


def _kill_cgroup(path: str) -> None:
    for _ in range(100):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(line) for line in f if line.strip()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        select.select([], [], [], 0.001)


def _rmdir_cgroup(path: str) -> None:
    # A cgroup can be removed only once its last process is gone and reaped.
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            select.select([], [], [], 0.01)


def _reap_all_children() -> None:
    if os.getpid() == 1:
        # pid 1 of our own namespace (see _userns): everyone else in it is ours, and
        # psutil, reading the host's /proc, would take a host pid for one of ours.
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        import psutil

        for child in psutil.Process().children():
            try:
                child.kill()
            except psutil.Error:
                pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def main(ctrl_fd: int, config_json: str) -> None:
    ctrl = socket.socket(fileno=ctrl_fd)
    os.set_inheritable(ctrl_fd, False)
    # Nothing may depend on where the orchestrator was started (the import path the
    # orchestrator passed is absolute).
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    config = ZygoteConfig.model_validate_json(config_json)
    _sched.set_default_slice()  # a caller's short one came with the fork (see `_sched`)
    try:
        user_ns = user_namespace(config.disabled)  # first: while single-threaded
        zygote = Zygote(ctrl, config, user_ns)
    except BaseException as exc:
        ctrl.send(
            Failed(message=f"cannot load the tools: {type(exc).__name__}: {exc}")
            .model_dump_json()
            .encode()
        )
        shutil.rmtree(config.root, ignore_errors=True)
        raise SystemExit(1) from None
    try:
        zygote.run()
    finally:
        zygote.shutdown()
