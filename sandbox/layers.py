"""The isolation layers, as the zygote finds and sets them up on this machine.

Each layer is detected by trying it, never assumed; what is missing is reported with
the reason (`sandboxed-agent doctor` prints it), and `isolation = "strict"` refuses to
run tools without every layer.

| layer | what it stops |
|---|---|
| user_namespace | (not root) the zygote's own: what root gets below, without root |
| pid_namespace | a tool seeing or signalling other processes; any descendant outliving the call |
| network_namespace | any network use (the workers' namespace has no interface up) |
| ipc_namespace | SysV shared memory, semaphores and message queues shared with the host |
| seccomp | network and UNIX sockets of its own; open_by_handle_at, io_uring, bpf, ... |
| keyring | the orchestrator's keys: a fresh session keyring, keyring calls refused |
| userns_denied | new user namespaces (a full capability set inside one) |
| bind_mounts | a root of its own: only what the policy allows exists, read-only |
| landlock | the second wall inside that root: reads and writes beyond the policy |
| unprivileged_uid | writing the host's files; RLIMIT_NPROC not binding (root ignores it) |
| capabilities | acting as root: reading other processes' environment, mounting, tracing |
| cgroup_pids | fork bombs (a pids cgroup per worker) |
| cgroup_memory | memory RLIMIT_AS does not see: memfd, tmpfs, page cache |
| cgroup_cpu | a call's tree using more than `cpu_s` in all (RLIMIT_CPU counts one process) |
| mount_namespace | filling the disk (workdir: a tmpfs of max_disk_mb); seeing host processes |
| no_new_privs | gaining privileges through setuid binaries |
| rlimits | memory, CPU, files, file size, core dumps |
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Collection

import psutil

from . import _cpuacct, _jail, _landlock, _linux, _seccomp, _userns
from .protocol import Layer, ZygoteConfig

LAYER_NAMES = (
    "user_namespace",
    "pid_namespace",
    "network_namespace",
    "ipc_namespace",
    "seccomp",
    "keyring",
    "userns_denied",
    "bind_mounts",
    "landlock",
    "unprivileged_uid",
    "capabilities",
    "cgroup_pids",
    "cgroup_memory",
    "cgroup_cpu",
    "mount_namespace",
    "no_new_privs",
    "rlimits",
)

ALWAYS_ON = ("no_new_privs", "rlimits")
"""Layers a policy cannot turn off: Landlock and seccomp need the first, limits the
second."""


def check_layer_names(names: Collection[str]) -> list[str]:
    """The layers a policy may turn off; a clear error for any other name."""
    for name in names:
        if name in ALWAYS_ON:
            raise ValueError(f"the {name} layer cannot be turned off")
        if name not in LAYER_NAMES:
            known = ", ".join(n for n in LAYER_NAMES if n not in ALWAYS_ON)
            raise ValueError(f"unknown isolation layer {name!r}; known: {known}")
    return list(names)


UID_BASE = 1_000_000_000
UID_SPAN = 1_000_000
"""Workers get their own uid (and gid) from this range, one not in any passwd file,
so that RLIMIT_NPROC counts each worker's processes alone."""
NOBODY = 65534


SYSTEM_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/ld.so.cache",
    "/etc/passwd",
    "/etc/group",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/proc",  # other processes' secrets there are closed by the capability drop
    "/sys/devices/system/cpu",
)
"""What any Python program reads. Not /etc/shadow, not /root, not /home, not /tmp."""


def base_read_paths(extra: list[str]) -> list[str]:
    """What every worker may read: the interpreter's prefixes, the directory of each
    imported top-level package (with its package data) or the file of each top-level
    module, and the system files a Python program needs.

    Taken from the modules themselves, never from the import path: an entry there may
    be the directory a program started in (your home, a project with its `.env`), and
    an editable install puts none there for its packages.
    """
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *extra}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    for name, module in list(sys.modules.items()):
        if "." not in name and module is not None:
            paths.update(_module_paths(module))
    return sorted(p for p in paths if p and os.path.isabs(p)) + list(SYSTEM_READ_PATHS)


def _module_paths(module: object) -> list[str]:
    """A package's directories (a namespace package may have several); a module's file."""
    locations = getattr(module, "__path__", None)
    if locations is not None:
        try:
            return [os.path.realpath(p) for p in locations if isinstance(p, str)]
        except TypeError:
            return []
    filename = getattr(module, "__file__", None)
    return [os.path.realpath(filename)] if isinstance(filename, str) else []


class Layers:
    """Set up in the zygote, inherited by every worker it forks."""

    def __init__(self, config: ZygoteConfig, read_paths: list[str], user_namespace: Layer) -> None:
        self.status: dict[str, Layer] = {"user_namespace": user_namespace}
        self.disabled = set(config.disabled)
        for name in self.disabled:
            self.status[name] = Layer(state="off", detail="turned off")
        self.pidns = self._pid_namespaces() if self._wanted("pid_namespace") else None
        self.empty_net = self._network_namespace() if self._wanted("network_namespace") else None
        self.ipc = self._ipc_namespace() if self._wanted("ipc_namespace") else False
        self.seccomp = self._seccomp() if self._wanted("seccomp") else False
        self.keyring = self._keyring() if self._wanted("keyring") else False
        self.userns_denied = self._userns_denied() if self._wanted("userns_denied") else False
        self.cgroup_root = self._cgroups() if self._wanted("cgroup_pids") else None
        self.memory_root = self._memory_cgroup() if self._wanted("cgroup_memory") else None
        self.cpu_root, self.cpu_usage = None, ""
        if self._wanted("cgroup_cpu"):
            self._cpu_cgroup()
        self.landlock = self._landlock() if self._wanted("landlock") else False
        self.drop_capabilities = self._wanted("capabilities")
        if self.drop_capabilities:
            self._capabilities()
        self.private_mounts = False
        if self._wanted("mount_namespace"):
            self.private_mounts = self._private_mounts(config.root)
        self.jail: _jail.Plan | None = None
        if self._wanted("bind_mounts"):
            self.jail = self._bind_mounts(config.root, read_paths)
        self.uids: UidRange | None = None
        if self._wanted("unprivileged_uid"):
            self._unprivileged_uid(config.root, read_paths)
        self.status["no_new_privs"] = Layer(state="active", detail="set in every worker")
        self.status["rlimits"] = Layer(
            state="active", detail="address space, CPU, open files, file size, core dumps"
        )
        self.status = {name: self.status[name] for name in LAYER_NAMES}

    def seccomp_rules(self, network: bool) -> _seccomp.Rules:
        return _seccomp.Rules(
            network=network, keyring=self.keyring, user_namespaces=self.userns_denied
        )

    def _wanted(self, name: str) -> bool:
        return name not in self.disabled

    def _pid_namespaces(self) -> _linux.PidNamespaces | None:
        try:
            namespaces = _linux.PidNamespaces()
        except OSError as exc:
            namespaces = None
            why = str(exc)
        else:
            why = "unshare(CLONE_NEWPID) refused"
        if namespaces is None or not namespaces.available:
            self.status["pid_namespace"] = Layer(
                state="unavailable", detail=f"{why}: falling back to a subreaper and a tree kill"
            )
            return None
        self.status["pid_namespace"] = Layer(
            state="active", detail="each worker is pid 1 of its own"
        )
        return namespaces

    def _network_namespace(self) -> int | None:
        """An empty network namespace that workers without the network enter; the
        zygote stays in the host's, so that a worker whose tool may use the network
        simply stays there (a user namespace of our own could not `setns` back)."""
        try:
            empty = _empty_network_namespace()
        except OSError as exc:
            self.status["network_namespace"] = Layer(
                state="unavailable",
                detail=f"{exc.strerror or exc}: only seccomp keeps tools off the network",
            )
            return None
        self.status["network_namespace"] = Layer(
            state="active", detail="workers share one with no interface up, unless network = true"
        )
        return empty

    def _ipc_namespace(self) -> bool:
        failed = _in_child(lambda: _linux.unshare(_linux.CLONE_NEWIPC))
        if failed:
            self.status["ipc_namespace"] = Layer(
                state="unavailable",
                detail=f"{failed}: SysV shared memory, semaphores and message queues are "
                "the host's",
            )
            return False
        self.status["ipc_namespace"] = Layer(
            state="active", detail="each worker has its own SysV IPC and POSIX message queues"
        )
        return True

    def _seccomp(self) -> bool:
        why = _seccomp.supported() or _in_child(_seccomp_works)
        if why:
            self.status["seccomp"] = Layer(state="unavailable", detail=why)
            return False
        self.status["seccomp"] = Layer(
            state="active",
            detail="no UNIX, packet or vsock sockets (stream socket pairs only), internet "
            "ones only with network = true; no open_by_handle_at, io_uring, bpf, "
            "userfaultfd, perf_event_open or foreign ABI",
        )
        return True

    def _keyring(self) -> bool:
        """A fresh session keyring in every worker, and the keyring calls refused:
        keyrings are not namespaced, so the orchestrator's would otherwise be in reach."""
        if not self.seccomp:
            self.status["keyring"] = Layer(
                state="unavailable", detail="needs seccomp to refuse the keyring calls"
            )
            return False
        failed = _in_child(_keyring_closed)
        if failed:
            self.status["keyring"] = Layer(state="unavailable", detail=failed)
            return False
        self.status["keyring"] = Layer(
            state="active",
            detail="a fresh session keyring; add_key, keyctl and request_key refused",
        )
        return True

    def _userns_denied(self) -> bool:
        if not self.seccomp:
            self.status["userns_denied"] = Layer(
                state="unavailable", detail="needs seccomp to refuse CLONE_NEWUSER"
            )
            return False
        failed = _in_child(_userns_closed)
        if failed:
            self.status["userns_denied"] = Layer(state="unavailable", detail=failed)
            return False
        self.status["userns_denied"] = Layer(
            state="active", detail="unshare and clone with CLONE_NEWUSER refused (clone3: ENOSYS)"
        )
        return True

    def _cgroups(self) -> str | None:
        if not _linux.cgroup_pids_available():
            self.status["cgroup_pids"] = Layer(
                state="unavailable",
                detail=f"{_linux.CGROUP_PIDS_ROOT} is not writable: RLIMIT_NPROC only",
            )
            return None
        sweep_stale_cgroups(_linux.CGROUP_PIDS_ROOT)
        path = os.path.join(_linux.CGROUP_PIDS_ROOT, f"{CGROUP_PREFIX}{_linux.host_pid()}")
        try:
            os.mkdir(path)
        except OSError as exc:
            self.status["cgroup_pids"] = Layer(
                state="unavailable", detail=f"mkdir {path}: {exc.strerror}"
            )
            return None
        self.status["cgroup_pids"] = Layer(state="active", detail="pids.max per worker")
        return path

    def _memory_cgroup(self) -> str | None:
        """A memory cgroup per worker, nested in ours (so a container's own limit holds):
        it counts what RLIMIT_AS does not (memfd, tmpfs, page cache)."""
        parent = os.path.join(_linux.CGROUP_MEMORY_ROOT, _linux.own_cgroup("memory").lstrip("/"))
        sweep_stale_cgroups(parent)
        path = os.path.join(parent, f"{CGROUP_PREFIX}{_linux.host_pid()}")
        try:
            os.mkdir(path)
        except OSError as exc:
            self.status["cgroup_memory"] = Layer(
                state="unavailable",
                detail=f"no writable memory cgroup ({exc.strerror}): memory is bounded by "
                "RLIMIT_AS and the tmpfs size only",
            )
            return None
        self.status["cgroup_memory"] = Layer(
            state="active", detail="memory.limit_in_bytes per worker (memfd, tmpfs, cache included)"
        )
        return path

    def _cpu_cgroup(self) -> None:
        """A CPU accounting cgroup per worker (`sandbox._cpuacct`): the orchestrator
        reads its usage while the call runs and kills the tree at `cpu_s`."""
        name = f"{CGROUP_PREFIX}{_linux.host_pid()}"
        path, usage, why = _cpuacct.make_root(name, sweep_stale_cgroups)
        if path is None:
            self.status["cgroup_cpu"] = Layer(
                state="unavailable",
                detail=f"no writable CPU cgroup ({why}): cpu_s bounds each process alone",
            )
            return
        self.cpu_root, self.cpu_usage = path, usage
        self.status["cgroup_cpu"] = Layer(
            state="active", detail=f"{usage} per worker: cpu_s bounds the call's whole tree"
        )

    def _landlock(self) -> bool:
        abi = _landlock.abi_version()
        if abi < 1:
            self.status["landlock"] = Layer(
                state="unavailable",
                detail="the kernel has no Landlock: file access is not restricted",
            )
            return False
        scope = ", signals and abstract sockets scoped" if abi >= 6 else ""
        self.status["landlock"] = Layer(
            state="active",
            detail=f"ABI {abi}: opening files for reading or writing restricted{scope}",
        )
        return True

    def _capabilities(self) -> None:
        if os.geteuid() != 0 and _linux.capabilities_effective() == 0:
            self.status["capabilities"] = Layer(state="active", detail="not root: none to drop")
            return
        if os.geteuid() != 0:
            detail = "all those of the zygote's user namespace dropped (bounding set emptied)"
        else:
            detail = "all dropped (bounding set emptied, NOROOT locked)"
        self.status["capabilities"] = Layer(state="active", detail=detail)

    def _unprivileged_uid(self, root: str, read_paths: list[str]) -> None:
        """As root: each worker gets a uid of its own, with no capability at all. It
        must be able to read what it imports: inside its own root the interpreter is
        bound beneath directories anyone may pass, so a Python under a 0700 home is
        fine there; without that root it must be readable where it lies."""
        if os.geteuid() != 0:
            self.status["unprivileged_uid"] = Layer(
                state="active", detail=f"not root: workers run as uid {os.getuid()}"
            )
            return
        if not self.drop_capabilities:
            self.status["unprivileged_uid"] = Layer(
                state="unavailable", detail="needs the capabilities layer, which is turned off"
            )
            return
        uids = UidRange.find()
        if uids is None:
            self.status["unprivileged_uid"] = Layer(
                state="unavailable",
                detail=f"neither uids {UID_BASE}+ nor {NOBODY} are mapped in this user "
                "namespace: workers run as uid 0 without capabilities",
            )
            return
        private = [p for p in read_paths if p not in SYSTEM_READ_PATHS and os.path.exists(p)]
        if self.jail is not None:
            base = tempfile.mkdtemp(prefix="uid-probe-", dir=root)
            try:
                jail = self.jail
                own_proc = self.pidns is not None
                unreadable = _in_child(
                    lambda: _readable_as(uids.first, private, (base, jail, own_proc))
                )
            finally:
                shutil.rmtree(base, ignore_errors=True)
        else:
            unreadable = _in_child(lambda: _readable_as(uids.first, private, None))
        if unreadable:
            self.status["unprivileged_uid"] = Layer(
                state="unavailable",
                detail=f"{unreadable}: workers run as uid 0 without capabilities",
            )
            return
        self.uids = uids
        self.status["unprivileged_uid"] = Layer(state="active", detail=uids.describe())

    def _private_mounts(self, root: str) -> bool:
        """Try, in a throwaway child, what each worker will do at fork."""
        probe = os.path.join(root, "mount-probe")
        os.makedirs(probe, exist_ok=True)
        own_proc = self.pidns is not None
        failed = _in_child(lambda: _linux.private_mounts(probe, 1, own_proc=own_proc))
        os.rmdir(probe)
        if failed:
            self.status["mount_namespace"] = Layer(
                state="unavailable",
                detail=f"cannot make a mount namespace ({failed}): no disk quota "
                "(max_disk_mb), the host's process list stays visible in /proc",
            )
            return False
        detail = "workdir is a tmpfs of max_disk_mb"
        if self.pidns is not None:
            detail += "; /proc shows only the worker's processes"
        self.status["mount_namespace"] = Layer(state="active", detail=detail)
        return True

    def _bind_mounts(self, root: str, read_paths: list[str]) -> _jail.Plan | None:
        """The first wall: a root of the worker's own, holding only what it may read
        (read-only) and its workdir. Landlock, where the kernel has it, is the second
        wall inside it, never instead of it."""
        if not self.private_mounts:
            self.status["bind_mounts"] = Layer(
                state="unavailable",
                detail="needs a mount namespace: the host's file system stays visible "
                "(Landlock alone restricts what may be opened)",
            )
            return None
        layout = _jail.plan(read_paths)
        base = tempfile.mkdtemp(prefix="jail-probe-", dir=root)
        try:
            failed = _in_child(lambda: _jail_works(base, layout, self.pidns is not None))
        finally:
            shutil.rmtree(base, ignore_errors=True)
        if failed:
            self.status["bind_mounts"] = Layer(
                state="unavailable",
                detail=f"{failed}: the host's file system stays visible",
            )
            return None
        self.status["bind_mounts"] = Layer(
            state="active",
            detail=f"a root of its own: {len(layout.binds)} paths bound read-only, "
            "the workdir writable; nothing else exists",
        )
        return layout

    def enter_network(self, network: bool) -> None:
        """In a freshly forked worker: into the empty namespace unless the tool may use
        the network."""
        if not network and self.empty_net is not None:
            _linux.setns(self.empty_net, _linux.CLONE_NEWNET)


def user_namespace(disabled: Collection[str]) -> Layer:
    """Run first in the zygote, while it is single-threaded: where we are not root,
    become the owner of a user namespace (and pid 1 of a PID namespace in it), so that
    the layers below can be made without root. Root needs none."""
    if os.geteuid() == 0:
        return Layer(state="standby", detail="not needed: the orchestrator is root")
    if "user_namespace" in disabled:
        return Layer(state="off", detail="turned off")
    with_pid = "pid_namespace" not in disabled
    failed = _in_child(lambda: _userns.probe(with_pid))
    if failed and with_pid and _in_child(lambda: _userns.probe(False)) is None:
        with_pid, failed = False, None  # the user namespace, but no PID one in it
    if failed:
        return Layer(state="unavailable", detail=_userns.why_refused(failed))
    _userns.enter(with_pid)
    return Layer(
        state="active",
        detail=f"the zygote's own, uid {os.getuid()} mapped to itself; workers drop "
        "every capability it holds there",
    )


CGROUP_PREFIX = "sandboxed-agent-"


def sweep_stale_cgroups(parent: str) -> None:
    """Remove the cgroups of zygotes that died without cleaning up (SIGKILL gives no
    chance): else they pile up, and a later zygote given the same pid finds its
    name taken and runs without cgroups. A cgroup with a process left is kept (the
    kernel refuses), as is any whose zygote is alive."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(CGROUP_PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            pid = int(name[len(CGROUP_PREFIX) :])
        except ValueError:
            continue
        if pid != _linux.host_pid() and psutil.pid_exists(pid):
            continue
        path = os.path.join(parent, name)
        with contextlib.suppress(OSError):
            for child in os.scandir(path):
                if child.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(child.path)
            os.rmdir(path)


class UidRange:
    """The uids workers run as: one per live worker, or `nobody` for all where the
    user namespace maps no wider range."""

    def __init__(self, first: int, span: int) -> None:
        self.first = first
        self.span = span
        self._next = 0
        self.data_gid = first + span - 1 if span > 1 else first
        """The group every worker joins for a policy's `data_dir`, which it owns: so
        that workers of different uids share a tool's state, and nothing else."""
        self._used: set[int] = {self.data_gid} if span > 1 else set()

    @classmethod
    def find(cls) -> UidRange | None:
        """A block of uids no other live zygote on this machine holds (an flock on a
        file per block, held for the zygote's life): two pools' workers never share a
        uid, so that RLIMIT_NPROC and what a uid owns stay each call's own."""
        if _mapped(UID_BASE, UID_SPAN):
            block = _lock_uid_block()
            if block is not None:
                return cls(UID_BASE + block * UID_BLOCK, UID_BLOCK)
        if _mapped(NOBODY, 1):
            return cls(NOBODY, 1)
        return None

    def describe(self) -> str:
        if self.span == 1:
            return f"all workers run as uid/gid {self.first} (nobody)"
        return f"each worker runs as a uid/gid of its own ({self.first}+, this pool's block)"

    def take(self) -> int:
        if self.span == 1:
            return self.first
        for _ in range(self.span):
            uid = self.first + self._next
            self._next = (self._next + 1) % self.span
            if uid not in self._used:
                self._used.add(uid)
                return uid
        raise OSError("every worker uid is in use")

    def release(self, uid: int) -> None:
        self._used.discard(uid)


UID_BLOCK = 1000
"""Uids per zygote: up to 999 workers at once, and the data group."""
UID_LOCKS = "/run/sandboxed-agent/uid-blocks"

_held_block: int | None = None
"""The descriptor whose flock holds this zygote's block (never closed: the kernel lets
the block go when the zygote dies, however)."""


def _lock_uid_block() -> int | None:
    global _held_block
    try:
        os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
    except OSError:
        return None
    blocks = UID_SPAN // UID_BLOCK
    start = int.from_bytes(os.urandom(4), "little") % blocks
    for i in range(blocks):
        block = (start + i) % blocks
        fd = os.open(f"{UID_LOCKS}/{block}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_block = fd
        return block
    return None


def _mapped(first: int, count: int) -> bool:
    """Both the uid and the gid range exist in this user namespace."""
    for name in ("uid_map", "gid_map"):
        try:
            with open(f"/proc/self/{name}") as f:
                ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
        except OSError:
            return False
        if not any(inside <= first and first + count <= inside + n for inside, _, n in ranges):
            return False
    return True


def _in_child(probe: Callable[[], object]) -> str | None:
    """Run `probe` in a throwaway fork; None when it worked, else why not."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            probe()
        except BaseException as exc:
            os.write(write, (str(exc) or type(exc).__name__).encode()[:500])
            os._exit(1)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return message or f"the probe exited with status {status}"


def _empty_network_namespace() -> int:
    """A descriptor of a new network namespace, made by a throwaway child and passed
    back over a socket (the zygote may be pid 1 of a namespace of its own, where its
    /proc, the host's, would not name the child)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            _linux.unshare(_linux.CLONE_NEWNET)
            fd = os.open("/proc/self/ns/net", os.O_RDONLY)
            socket.send_fds(theirs, [b"ok"], [fd])
        except BaseException as exc:
            theirs.send(f"{exc}".encode()[:500] or b"failed")
            os._exit(1)
        os._exit(0)
    theirs.close()
    try:
        message, fds, _, _ = socket.recv_fds(ours, 600, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if message != b"ok" or not fds:
        raise OSError(message.decode(errors="replace") or "the child died")
    os.set_inheritable(fds[0], False)
    return fds[0]


def _seccomp_works() -> None:
    import socket

    _seccomp.install(_seccomp.Rules(network=False))
    for family in (socket.AF_INET, socket.AF_UNIX):
        try:
            socket.socket(family, socket.SOCK_STREAM).close()
        except PermissionError:
            continue
        raise OSError(f"the filter was installed but a {family.name} socket could still be made")
    for end in socket.socketpair():  # still allowed: its two ends reach nobody else
        end.close()


def _keyring_closed() -> None:
    _linux.join_new_session_keyring()
    _seccomp.install(_seccomp.Rules(network=False))
    try:
        _linux.keyctl_get_keyring_id(_linux.KEY_SPEC_SESSION_KEYRING)
    except PermissionError:
        return
    raise OSError("the filter was installed but keyctl still answered")


def _userns_closed() -> None:
    import threading

    _seccomp.install(_seccomp.Rules(network=False))
    try:
        _linux.unshare(_linux.CLONE_NEWUSER)
    except PermissionError:
        pass
    else:
        raise OSError("the filter was installed but a user namespace could still be made")
    # clone3 answers ENOSYS: threads and processes must still start (libc falls back).
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _jail_works(base: str, layout: _jail.Plan, own_proc: bool) -> None:
    workdir = _enter_jail(base, layout, own_proc)
    with open(os.path.join(workdir, "written"), "w") as f:
        f.write("ok")
    if os.path.exists(os.path.join(base, "root")):
        raise OSError("the host's tree is still visible")
    try:
        os.mkdir("/jail-probe")
    except OSError:
        return
    raise OSError("the new root is writable")


def _enter_jail(base: str, layout: _jail.Plan, own_proc: bool) -> str:
    """As a worker does: a mount namespace, the new root, and into it from the
    workdir (the zygote's own working directory may be anywhere)."""
    new_root, workdir = os.path.join(base, "root"), os.path.join(base, "work")
    os.mkdir(new_root)
    os.mkdir(workdir, 0o777)
    _linux.private_mounts(workdir, 1, own_proc=own_proc)
    os.chmod(workdir, 0o777)
    _jail.build(new_root, layout, workdir)
    os.chdir(workdir)
    _jail.enter(new_root)
    return workdir


def _readable_as(uid: int, paths: list[str], jail: tuple[str, _jail.Plan, bool] | None) -> None:
    """Every path readable by `uid` without any capability, inside the jail if given."""
    if jail is not None:
        _enter_jail(*jail)
    _linux.drop_privileges(uid)
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb"):
                    pass
        except OSError:
            raise OSError(f"{path} is not readable by another uid") from None
