"""The isolation layers, as the zygote finds and sets them up on this machine.

Each layer is detected by trying it, never assumed; what is missing is reported with
the reason (`sandboxed-agent doctor` prints it), and `isolation = "strict"` refuses to
run tools without every layer. Where no layer keeps signals inside a call (a PID
namespace, a uid of the worker's own, Landlock's signal scope), the pool refuses to
start unless told to accept it (`unwalled_signals`).

| layer | what it stops |
|---|---|
| user_namespace | (not root, or root without CAP_SYS_ADMIN) the zygote's own, for what follows |
| pid_namespace | a tool seeing or signalling other processes; any descendant outliving the call |
| network_namespace | any network use (the workers' namespace has no interface up) |
| ipc_namespace | SysV shared memory, semaphores and message queues shared with the host |
| seccomp | network and UNIX sockets of its own; open_by_handle_at, io_uring, bpf, ... |
| keyring | the orchestrator's keys: a fresh session keyring, keyring calls refused |
| userns_denied | new user namespaces (a full capability set inside one) |
| bind_mounts | a root of its own: only what the policy allows exists, read-only |
| landlock | the second wall inside that root: reads and writes beyond the policy; signals (ABI 6) |
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
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping

from . import _cgroups, _cpuacct, _jail, _landlock, _linux, _netns, _probes, _seccomp, _userns
from .limits import NetworkMode
from .protocol import Layer, ZygoteConfig
from .read_set import SYSTEM_READ_PATHS
from .uids import NOBODY, UID_BASE, UidRange

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
            from difflib import get_close_matches  # here: the zygote imports this module

            known = [n for n in LAYER_NAMES if n not in ALWAYS_ON]
            close = get_close_matches(name, known, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown isolation layer {name!r}; known: {', '.join(known)}{hint}")
    return list(names)


class Layers:
    """Set up in the zygote, inherited by every worker it forks."""

    def __init__(self, config: ZygoteConfig, read_paths: list[str], user_namespace: Layer) -> None:
        self.status: dict[str, Layer] = {"user_namespace": user_namespace}
        self.disabled = set(config.disabled)
        self.cgroup_named = _cgroups.parse_root(config.cgroup_subtree)
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
        self._limits_out_of_reach()
        self.status["no_new_privs"] = Layer(state="active", detail="set in every worker")
        self.status["rlimits"] = Layer(
            state="active", detail="address space, CPU, open files, file size, core dumps"
        )
        self.status = {name: self.status[name] for name in LAYER_NAMES}

    def seccomp_rules(self, network: NetworkMode) -> _seccomp.Rules:
        return _seccomp.Rules(
            network=network == "all",
            loopback_tcp=network == "proxy",
            keyring=self.keyring,
            user_namespaces=self.userns_denied,
            kill_all=self.pidns is not None,
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
            state="active", detail="each worker is pid 1 of its own", walls_signals=True
        )
        return namespaces

    def _network_namespace(self) -> int | None:
        """An empty network namespace that workers without the network enter; the
        zygote stays in the host's, so that a worker whose tool may use the network
        simply stays there (a user namespace of our own could not `setns` back)."""
        try:
            empty = _probes.empty_network_namespace()
        except OSError as exc:
            self.status["network_namespace"] = Layer(
                state="unavailable",
                detail=f"{exc.strerror or exc}: only seccomp keeps tools off the network",
            )
            return None
        self.status["network_namespace"] = Layer(
            state="active",
            detail="workers share one with no interface up, unless network = true; "
            "a network list: one of its own, loopback alone",
        )
        return empty

    def _ipc_namespace(self) -> bool:
        failed = _probes.in_child(lambda: _linux.unshare(_linux.CLONE_NEWIPC))
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
        why = _seccomp.supported() or _probes.in_child(_probes.seccomp_works)
        if why:
            self.status["seccomp"] = Layer(state="unavailable", detail=why)
            return False
        self.status["seccomp"] = Layer(
            state="active",
            detail="no UNIX, packet or vsock sockets (stream socket pairs only), internet "
            "ones only with network = true (a network list: IPv4 TCP alone); no "
            "open_by_handle_at, io_uring, bpf, "
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
        failed = _probes.in_child(_probes.keyring_closed)
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
        failed = _probes.in_child(_probes.userns_closed)
        if failed:
            self.status["userns_denied"] = Layer(state="unavailable", detail=failed)
            return False
        self.status["userns_denied"] = Layer(
            state="active", detail="unshare and clone with CLONE_NEWUSER refused (clone3: ENOSYS)"
        )
        return True

    def _cgroups(self) -> str | None:
        """A pids cgroup per worker, beneath ours (`sandbox._cgroups` says where)."""
        path, why = self._make_cgroup("pids", "pids.max")
        if path is None:
            self.status["cgroup_pids"] = Layer(
                state="unavailable",
                detail=f"no writable pids cgroup ({why}): RLIMIT_NPROC only; "
                f"{_cgroups.how_to_delegate('pids')}",
            )
            return None
        self.status["cgroup_pids"] = Layer(
            state="active", detail=f"pids.max per worker{self._where(path)}"
        )
        return path

    def _memory_cgroup(self) -> str | None:
        """A memory cgroup per worker, nested in ours (so a container's own limit holds):
        it counts what RLIMIT_AS does not (memfd, tmpfs, page cache)."""
        path, why = self._make_cgroup("memory", "memory.limit_in_bytes")
        if path is None:
            self.status["cgroup_memory"] = Layer(
                state="unavailable",
                detail=f"no writable memory cgroup ({why}): memory is bounded by "
                f"RLIMIT_AS and the tmpfs size only; {_cgroups.how_to_delegate('memory')}",
            )
            return None
        self.status["cgroup_memory"] = Layer(
            state="active",
            detail="memory.limit_in_bytes per worker (memfd, tmpfs, cache included)"
            + self._where(path),
        )
        return path

    def _make_cgroup(self, controller: str, limit_file: str) -> tuple[str | None, str]:
        name = f"{CGROUP_PREFIX}{_linux.host_pid()}"
        return _cgroups.make_root(
            controller, limit_file, name, self.cgroup_named, sweep_stale_cgroups
        )

    def _where(self, path: str) -> str:
        """Said only where the pool is not root: in which delegated subtree it runs."""
        return "" if os.geteuid() == 0 else f", in {os.path.dirname(path)}"

    def _limits_out_of_reach(self) -> None:
        """Without a uid of their own (not root, or root's uid 0 without capabilities)
        workers run as the owner of their cgroup's files: only the jail (which leaves
        /sys/fs/cgroup out) or Landlock (which refuses to open them for writing) keeps
        a tool from raising its limits or leaving its cgroup."""
        if (os.geteuid() == 0 and self.uids is not None) or self.jail or self.landlock:
            return
        for name, attr in (
            ("cgroup_pids", "cgroup_root"),
            ("cgroup_memory", "memory_root"),
            ("cgroup_cpu", "cpu_root"),
        ):
            path = getattr(self, attr)
            if path is None:
                continue
            _rmdir_quietly(path)
            setattr(self, attr, None)
            self.status[name] = Layer(
                state="unavailable",
                detail="workers would own their cgroup's limit files, and neither "
                "bind_mounts nor landlock keeps them out of reach",
            )

    def _cpu_cgroup(self) -> None:
        """A CPU accounting cgroup per worker (`sandbox._cpuacct`): the orchestrator
        reads its usage while the call runs and kills the tree at `cpu_s`."""
        name = f"{CGROUP_PREFIX}{_linux.host_pid()}"
        path, usage, why = _cpuacct.make_root(name, sweep_stale_cgroups, self.cgroup_named)
        if path is None:
            self.status["cgroup_cpu"] = Layer(
                state="unavailable",
                detail=f"no writable CPU cgroup ({why}): cpu_s bounds each process alone; "
                f"{_cgroups.how_to_delegate('cpuacct')}",
            )
            return
        self.cpu_root, self.cpu_usage = path, usage
        self.status["cgroup_cpu"] = Layer(
            state="active",
            detail=f"{usage} per worker: cpu_s bounds the call's whole tree{self._where(path)}",
        )

    def _landlock(self) -> bool:
        abi = _landlock.abi_version()
        if abi < 1:
            self.status["landlock"] = Layer(
                state="unavailable",
                detail="the kernel has no Landlock: file access is not restricted",
            )
            return False
        scoped = abi >= 6 and _probes.in_child(_probes.signals_scoped) is None
        scope = ", signals and abstract sockets scoped" if scoped else ""
        self.status["landlock"] = Layer(
            state="active",
            detail=f"ABI {abi}: opening files for reading or writing restricted{scope}",
            walls_signals=scoped,
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
                unreadable = _probes.in_child(
                    lambda: _probes.readable_as(uids.first, private, (base, jail, own_proc))
                )
            finally:
                shutil.rmtree(base, ignore_errors=True)
        else:
            unreadable = _probes.in_child(lambda: _probes.readable_as(uids.first, private, None))
        if unreadable:
            self.status["unprivileged_uid"] = Layer(
                state="unavailable",
                detail=f"{unreadable}: workers run as uid 0 without capabilities",
            )
            return
        self.uids = uids
        self.status["unprivileged_uid"] = Layer(
            state="active", detail=uids.describe(), walls_signals=uids.span > 1
        )  # `nobody` is every worker's, and the host's too

    def _private_mounts(self, root: str) -> bool:
        """Try, in a throwaway child, what each worker will do at fork."""
        probe = os.path.join(root, "mount-probe")
        os.makedirs(probe, exist_ok=True)
        own_proc = self.pidns is not None
        failed = _probes.in_child(lambda: _linux.private_mounts(probe, 1, own_proc=own_proc))
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
            failed = _probes.in_child(
                lambda: _probes.jail_works(base, layout, self.pidns is not None)
            )
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

    def enter_network(self, network: NetworkMode, channel_fd: int) -> int | None:
        """In a freshly forked worker: into the empty namespace unless the tool may use
        the network; for an allowlist, into a namespace of its own with loopback up,
        its listener handed to the orchestrator (returns the port). An allowlist is
        never served without a network namespace: the worker fails closed."""
        if network == "none" and self.empty_net is not None:
            _linux.setns(self.empty_net, _linux.CLONE_NEWNET)
        if network != "proxy":
            return None
        if self.empty_net is None:
            layer = self.status["network_namespace"]
            raise OSError(
                f"a network allowlist needs the network_namespace layer, which is "
                f"{layer.state} ({layer.detail})"
            )
        return _netns.enter_and_hand_over(channel_fd)


SIGNAL_WALLS = ("pid_namespace", "landlock", "unprivileged_uid")
"""The layers that can keep a tool's signals inside its call (`Layer.walls_signals`)."""


def unwalled_signals(status: Mapping[str, Layer], accept: str) -> str | None:
    """Why no tool may run here unless accepted (`accept` says how): no active layer
    walls signals, so a tool's kill(-1) reaches every process of its uid on the host
    and in other calls: root's sshd, or a normal user's shell, and the orchestrator
    where the workers run as it does."""
    if any(layer.active and layer.walls_signals for layer in status.values()):
        return None
    root = os.geteuid() == 0
    why, turn_on = [], []
    for name in SIGNAL_WALLS:
        layer = status.get(name)
        if layer is None:
            continue
        if layer.state == "off" and (name != "unprivileged_uid" or root):
            turn_on.append(name)
        if not layer.active:
            why.append(f"{name} {layer.state}")
        elif name == "landlock":
            why.append("landlock without the signal scope of ABI 6 (Linux 6.12+)")
        else:
            why.append("a uid shared with other processes")  # nobody, the user, a --write owner
    if turn_on:
        names = ", ".join(turn_on[:-1]) + " or " if len(turn_on) > 1 else ""
        fix = f"turn {names}{turn_on[-1]} back on"
    else:
        fix = "make PID namespaces available (`sandboxed-agent doctor` says why they are not)"
    uid = status.get("unprivileged_uid")
    ours = not root or uid is None or not uid.active  # the workers run as we do
    return (
        f"no layer walls signals ({', '.join(why)}): a tool could kill any process on "
        f"the host that shares its uid{', the orchestrator included' if ours else ''}; "
        f"{fix}, or {accept} to accept it"
    )


def orchestrator_traceable(status: Mapping[str, Layer]) -> str | None:
    """Why no tool may run here, in any mode: the workers would share the
    orchestrator's uid and user namespace with no capability of its own to set it
    apart (a normal user on a host without user namespaces; root with none), so only
    Landlock, whatever its ABI, keeps a tool from its /proc/PID/environ and memory and
    from ptrace: from the API key, and from running code in it."""
    uid = status.get("unprivileged_uid")
    own_uid = os.geteuid() == 0 and uid is not None and uid.active
    if own_uid or _linux.capabilities_effective() != 0:
        return None
    walls = {name: status[name] for name in ("user_namespace", "landlock") if name in status}
    if any(layer.active for layer in walls.values()):
        return None
    fixes = {
        "user_namespace": "allow user namespaces (`sandboxed-agent doctor` says how)",
        "landlock": "run a kernel with Landlock (Linux 5.13+)",
    }
    why, fix = [], []
    for name, layer in walls.items():
        why.append(f"{name} {layer.state}")
        fix.append(f"turn {name} back on" if layer.state == "off" else fixes[name])
    return (
        f"workers could read the orchestrator's memory and environment and trace it "
        f"(they would share its uid {os.geteuid()}, with {' and '.join(why)}); "
        f"{' or '.join(fix)}"
    )


def user_namespace(disabled: Collection[str]) -> Layer:
    """Run first in the zygote, while it is single-threaded: where we are not root,
    or root without CAP_SYS_ADMIN (a container's default), become the owner of a user
    namespace (and pid 1 of a PID namespace in it), so that the layers below can be
    made without root's own power. Root with it needs none."""
    root = os.geteuid() == 0
    if root and _linux.capabilities_effective() & (1 << _userns.CAP_SYS_ADMIN):
        return Layer(state="standby", detail="not needed: the orchestrator is root")
    if "user_namespace" in disabled:
        return Layer(state="off", detail="turned off")
    with_pid = "pid_namespace" not in disabled
    failed = _probes.in_child(lambda: _userns.probe(with_pid))
    if failed and with_pid and _probes.in_child(lambda: _userns.probe(False)) is None:
        with_pid, failed = False, None  # the user namespace, but no PID one in it
    if failed:
        return Layer(state="unavailable", detail=_userns.why_refused(failed))
    _userns.enter(with_pid)
    mapped = f"uid {os.getuid()} mapped to itself"
    if root and _uids_mapped():
        ranges = ", ".join(f"{i}+" if n > 1 else str(i) for i, n in _userns.root_ranges())
        mapped = f"uids {ranges} mapped to themselves"
    why = "root without CAP_SYS_ADMIN: " if root else ""
    return Layer(
        state="active",
        detail=f"{why}the zygote's own, {mapped}; workers drop every capability it holds there",
    )


def _uids_mapped() -> bool:
    with open("/proc/self/uid_map") as f:
        return len(f.read().splitlines()) > 1


CGROUP_PREFIX = "sandboxed-agent-"


def sweep_stale_cgroups(parent: str) -> None:
    """Remove the cgroups of zygotes that died without cleaning up (SIGKILL gives no
    chance): else they pile up, and a later zygote given the same pid finds its
    name taken and runs without cgroups. A cgroup with a process left is kept (the
    kernel refuses), as is any whose zygote is alive: looked up in /proc, as
    `host_pid` names them, since a zygote that is pid 1 of a PID namespace of its own
    (a normal user's) cannot signal, so cannot see, another pool's zygote."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(CGROUP_PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            pid = int(name[len(CGROUP_PREFIX) :])
        except ValueError:
            continue
        if pid != _linux.host_pid() and os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(parent, name)
        with contextlib.suppress(OSError):
            for child in os.scandir(path):
                if child.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(child.path)
            os.rmdir(path)


def _rmdir_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
