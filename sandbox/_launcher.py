"""The launcher's second stage (see `sandbox.launch`): the layers, the command's init,
and the wait.

It is the zygote's work for one long-lived worker whose "tool" is a command: the
same `Layers` (probed here, never assumed), `worker.isolate` and `worker.harden` in
the same order, the same cgroups. What differs: stdin, stdout and stderr stay the
caller's, the `--write` paths are bound writable, and the init execs nothing itself
but forks the command, so that it can reap what the command leaves as pid 1.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import tempfile
from typing import NoReturn

from . import _cpuacct, _jail, _landlock, _linux, _nofollow
from .launch import EXIT_CPU, EXIT_STOPPED, LaunchConfig
from .layers import Layers, orchestrator_traceable, unwalled_signals, user_namespace
from .limits import apply_rlimits
from .protocol import Call, Layer, ZygoteConfig
from .read_set import SYSTEM_READ_PATHS, command_read_paths
from .worker import (
    EXIT_SETUP_FAILED,
    WorkerSetup,
    _kill_descendants,
    _limit_processes,
    _nproc,
    harden,
    isolate,
    report_failure,
)
from .zygote import _drain, _kill_cgroup, _rmdir_cgroup

_SETUP_FD = 3
"""The init's end of the set-up pipe: closed on exec, so only set-up code writes it."""


class Launcher:
    def __init__(self, config: LaunchConfig) -> None:
        self.config = config
        self.limits = config.limits
        user_ns = user_namespace(config.disabled)  # first, while single-threaded
        self.root = tempfile.mkdtemp(prefix="sandboxed-agent-launch-", dir=config.tmp)
        self.cgroups: list[str] = []
        try:
            self.executable, code = command_read_paths(config.command, os.environ.get("PATH", ""))
            self.read_paths = sorted({*code, *config.read_paths}) + list(SYSTEM_READ_PATHS)
            zygote_config = ZygoteConfig(
                sys_path=[],
                sources=[],
                root=self.root,
                disabled=config.disabled,
                read_paths=[],
                cgroup_subtree=config.cgroup_subtree,
            )
            self.layers = Layers(zygote_config, self.read_paths, user_ns)
            self.uid = self._uid()
            self._check_layers()
            _linux.set_child_subreaper()  # without a PID namespace, orphans come to us
            if self.layers.drop_capabilities:
                _linux.drop_bounding_set()
        except BaseException:
            self._remove()
            raise

    def _uid(self) -> int | None:
        """The uid the command runs as. As root with `--write` paths: their owner's, so
        that it can write there (a uid of our block could not) and nothing else of
        that user's, which the jail does not hold; never uid 0."""
        uids = self.layers.uids
        if uids is None:
            return None
        if not self.config.write_paths:
            return uids.take()
        owners = {os.stat(p).st_uid for p in self.config.write_paths}
        if len(owners) != 1 or 0 in owners:
            raise OSError(
                "the --write paths must all belong to one user other than root (the "
                f"command runs as their owner); they belong to uids {sorted(owners)}"
            )
        return owners.pop()

    def _check_layers(self) -> None:
        from .launch import ACCEPT_FLAG
        from .pool import _root_without_walls

        status = self.layers.status
        refused = _root_without_walls(status) or orchestrator_traceable(status)
        walls = dict(status)
        if self.config.write_paths and "unprivileged_uid" in walls:
            # It runs as their owner, whose other processes it could signal.
            walls["unprivileged_uid"] = walls["unprivileged_uid"].model_copy(
                update={"walls_signals": False}
            )
        if not self.config.accept_unwalled_signals:
            refused = refused or unwalled_signals(walls, f"pass {ACCEPT_FLAG}")
        if refused:
            raise OSError(refused.replace("workers", "the command").replace("a tool", "it"))
        missing = {n: layer for n, layer in status.items() if layer.required and not layer.active}
        if missing and self.config.strict:
            names = "; ".join(f"{name} ({layer.detail})" for name, layer in missing.items())
            raise OSError(f"isolation is strict and these layers are missing: {names}")
        if missing:
            _warn(f"layers unavailable here: {', '.join(missing)} (see: sandboxed-agent doctor)")

    @property
    def status(self) -> dict[str, Layer]:
        return self.layers.status

    # -- the launcher, outside ---------------------------------------------------

    def run(self) -> int:
        """Start the init, wait for it; on SIGTERM, SIGINT or SIGHUP kill it at once."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        stop: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _: stop.append(signum))
        signal.signal(signal.SIGCHLD, lambda *_: None)
        try:
            pid, pidfd, setup_r, usage = self._spawn()
            # Only the command holds the caller's pipes now: its end of file is theirs.
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.close(null)
            return self._wait(pid, pidfd, setup_r, usage, wake_r, stop)
        finally:
            self._remove()

    def _wait(
        self, pid: int, pidfd: int, setup_r: int, usage: str | None, wake_r: int, stop: list[int]
    ) -> int:
        poller = select.poll()
        for fd in (pidfd, setup_r, wake_r):
            poller.register(fd, select.POLLIN)
        failure = b""
        outcome: int | None = None
        timeout = CPU_POLL_MS if usage else None
        while True:
            events = dict(poller.poll(timeout))
            if wake_r in events:
                while _drain(wake_r):
                    pass
            if stop and outcome is None:
                outcome = EXIT_STOPPED
                _kill(pidfd)
            if setup_r in events:
                data = os.read(setup_r, 1000)
                failure += data
                if not data:
                    poller.unregister(setup_r)
            if usage and outcome is None and _cpu_used(usage) > self.limits.cpu_s:
                outcome = EXIT_CPU
                _kill(pidfd)
                _warn(f"the command used its {self.limits.cpu_s} s of CPU time (cpu_s): killed")
            if pidfd in events:
                break
        _, status = os.waitpid(pid, 0)
        failure += _read_rest(setup_r)
        os.close(setup_r)
        os.close(pidfd)
        if self.layers.pidns is None:
            self._sweep()
        code = os.waitstatus_to_exitcode(status)
        if failure:
            _warn(failure.decode("utf-8", "replace").partition("\n")[0])
            return EXIT_SETUP_FAILED
        if outcome is not None:
            return outcome
        return code if code >= 0 else 128 - code

    def _sweep(self) -> None:
        """Without a PID namespace: whatever the command left (orphans came to us, a
        subreaper) is killed with its tree, as the zygote does."""
        import psutil

        from . import reaper

        for group in self.cgroups[:1]:
            _kill_cgroup(group)
        for _ in range(reaper.KILL_ROUNDS):
            left = [c for c in psutil.Process().children() if reaper.is_running(c)]
            if not left:
                break
            for child in left:
                reaper.kill_tree(child.pid)
                try:
                    child.kill()
                except psutil.Error:
                    pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    def _spawn(self) -> tuple[int, int, int, str | None]:
        """Fork the init into its cgroups, then let it go: (pid, pidfd, set-up pipe, CPU
        usage file)."""
        layers = self.layers
        base = tempfile.mkdtemp(prefix="w-", dir=self.root)
        workdir = os.path.join(base, "work")
        os.mkdir(workdir, 0o700)
        if layers.jail is not None:
            os.mkdir(os.path.join(base, "root"), 0o700)
        if self.uid is not None:
            for directory in (self.root, base):
                os.chmod(directory, 0o711)
            os.chown(workdir, self.uid, self.uid)
        pids = memory = cpu = None
        if layers.cgroup_root:
            pids = _make(os.path.join(layers.cgroup_root, "launch"), self.cgroups)
        if layers.memory_root:
            memory = _make(os.path.join(layers.memory_root, "launch"), self.cgroups)
        if layers.cpu_root:
            cpu = _make(os.path.join(layers.cpu_root, "launch"), self.cgroups)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        setup_r, setup_w = os.pipe2(os.O_CLOEXEC)
        pid = -1
        if layers.pidns:
            layers.pidns.enter()
        try:
            pid = os.fork()
        finally:
            if layers.pidns and pid != 0:
                layers.pidns.leave()
        if pid == 0:
            os.close(go_w)
            os.close(setup_r)
            self._init(workdir, (pids, memory), go_r, setup_w)
        os.close(go_r)
        os.close(setup_w)
        pidfd = os.pidfd_open(pid)
        for group in (pids, memory, cpu):
            if group:
                with open(os.path.join(group, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
        os.write(go_w, b"g")
        os.close(go_w)
        usage = os.path.join(cpu, layers.cpu_usage) if cpu else None
        return pid, pidfd, setup_r, usage

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for group in reversed(self.cgroups):
            _rmdir_cgroup(group)
        layers = getattr(self, "layers", None)
        if layers is not None:
            for root in (layers.cgroup_root, layers.memory_root, layers.cpu_root):
                if root:
                    _rmdir_cgroup(root)

    # -- the init, inside ----------------------------------------------------------

    def _init(
        self, workdir: str, cgroups: tuple[str | None, str | None], go_r: int, setup_w: int
    ) -> NoReturn:
        """pid 1 of the command's namespace: every layer on itself, then the command as
        its child, then reap until the command exits. Any failure before the exec is
        a set-up failure, said on the set-up pipe; nothing runs with fewer layers."""
        try:
            os.read(go_r, 1)  # in its cgroups now: everything from here counts
            os.close(go_r)
            layers, limits = self.layers, self.limits
            layers.enter_network(limits.network_mode, -1)
            setup_w = os.dup2(setup_w, _SETUP_FD, inheritable=False)
            os.closerange(_SETUP_FD + 1, _max_fd())
            setup = WorkerSetup(
                -1,
                -1,
                setup_w,
                workdir,
                cgroups[0],
                memory_cgroup=cgroups[1],
                in_pid_namespace=layers.pidns is not None,
                landlock_read=self.read_paths if layers.landlock else None,
                drop_capabilities=layers.drop_capabilities,
                private_mounts=layers.private_mounts,
                uid=self.uid,
                ipc_namespace=layers.ipc,
                keyring=layers.keyring,
                seccomp=layers.seccomp_rules(limits.network_mode) if layers.seccomp else None,
                proxy_port=None,
                jail=layers.jail,
                data_gid=None,
            )
            isolate(setup)
            self._writable(setup)
            _limit_processes(setup, limits)
            apply_rlimits(limits, reusable=False, nproc=_nproc(setup, limits))
            env = self._environment(workdir)
            harden(setup, Call(tool="launch", args={}, limits=limits))
            _linux.set_parent_death_signal(signal.SIGKILL)  # a change of uid cleared it
            command = os.fork()
            if command == 0:
                _exec(self.executable, self.config.command, env, setup_w)
            os.close(setup_w)
            # What the command may read of us in /proc (our environment, our memory) is
            # closed: the launcher's interpreter stays ours.
            _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
            os._exit(_reap(command, setup))
        except BaseException as exc:
            report_failure(setup_w, exc)
            os._exit(EXIT_SETUP_FAILED)

    def _writable(self, setup: WorkerSetup) -> None:
        """The `--write` directories, bound writable in the new root and allowed to
        write under Landlock; each held open, reached without following a link."""
        opened = []
        try:
            for path in self.config.write_paths:
                fd = _nofollow.open_dir(path)
                if fd is None:
                    raise OSError(f"--write {path}: no longer there")
                opened.append((path, fd))
            if setup.jail is not None:
                bound = list(setup.jail.binds)
                for path, fd in opened:
                    _jail.add_open(setup.new_root, path, fd, bound, readonly=False)
            if setup.landlock_read is not None:
                setup.rules = _landlock.Ruleset(
                    read=setup.landlock_read, write=[setup.workdir, os.devnull]
                )
                for _, fd in opened:
                    setup.rules.allow_open_dir(fd, write=True)
        finally:
            for _, fd in opened:
                os.close(fd)

    def _environment(self, workdir: str) -> dict[str, str]:
        """What this clean interpreter was given (`launch.main` kept only PATH, the
        locale, TZ and the `--env` names), with HOME and TMPDIR in the workdir."""
        env = dict(os.environ)
        env["HOME"] = env["TMPDIR"] = env["PWD"] = workdir
        return env


CPU_POLL_MS = 250


def _exec(executable: str, argv: list[str], env: dict[str, str], setup_w: int) -> NoReturn:
    """The command's process: default signal dispositions (Python ignores SIGPIPE and
    the worker SIGXFSZ; an ignored signal stays ignored across exec), then exec. A
    failed exec is a set-up failure: the pipe closes on a successful one."""
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(executable, argv, env)
    except BaseException as exc:
        report_failure(setup_w, OSError(f"cannot run {argv[0]} inside the sandbox: {exc}"))
    os._exit(127)


def _reap(command: int, setup: WorkerSetup) -> int:
    """As init: reap everything until the command exits; its status is ours. Without a
    PID namespace, kill what it left (we are its subreaper)."""
    code = 1
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == command:
            code = os.waitstatus_to_exitcode(status)
            break
    if not setup.in_pid_namespace:
        while True:
            _kill_descendants(setup)
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    return code if code >= 0 else 128 - code


def _make(path: str, made: list[str]) -> str:
    os.mkdir(path)
    made.append(path)
    return path


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cpu_used(usage: str) -> float:
    try:
        return _cpuacct.usage_s(usage)
    except (OSError, ValueError):
        return 0.0


def _read_rest(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1000)
    except OSError:
        return b""


def _max_fd() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 65536


def _warn(message: str) -> None:
    os.write(2, f"sandbox.launch: {message}\n".encode(errors="replace"))
