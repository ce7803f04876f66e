"""The isolation layers, as the zygote finds and sets them up on this machine.

Each layer is detected by trying it, never assumed; what is missing is reported with
the reason (`sandboxed-agent doctor` prints it), and `isolation = "strict"` refuses to
run tools without every layer.

| layer | what it stops |
|---|---|
| pid_namespace | a tool seeing or signalling other processes; any descendant outliving the call |
| network_namespace | any network use (the workers' namespace has no interface up) |
| landlock | reads outside the interpreter, the tools and their root; writes outside the workdir |
| capabilities | uid 0 acting as root: reading other processes' environment, mounting, tracing |
| cgroup_pids | fork bombs (a pids cgroup per worker) |
| cgroup_memory | memory RLIMIT_AS does not see: memfd, tmpfs, page cache |
| mount_namespace | filling the disk (workdir: a tmpfs of max_disk_mb); seeing host processes |
| no_new_privs | gaining privileges through setuid binaries |
| rlimits | memory, CPU, files, file size, core dumps |
"""

from __future__ import annotations

import os
import sys

from . import _landlock, _linux
from .protocol import Layer, ZygoteConfig

LAYER_NAMES = (
    "pid_namespace",
    "network_namespace",
    "landlock",
    "capabilities",
    "cgroup_pids",
    "cgroup_memory",
    "mount_namespace",
    "no_new_privs",
    "rlimits",
)


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
    """The interpreter's prefixes, each imported module's top-level package (or the
    module file itself), and system files. Not the import path entries themselves: the
    directory a project runs from may hold a `.env`, the one you started in may be
    your home."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *extra}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    entries = [os.path.realpath(p) for p in sys.path if p]
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if filename:
            paths.add(_top_level(os.path.realpath(filename), entries))
    return sorted(p for p in paths if p and os.path.isabs(p)) + list(SYSTEM_READ_PATHS)


def _top_level(filename: str, entries: list[str]) -> str:
    for entry in entries:
        if filename.startswith(entry + os.sep):
            top = os.path.relpath(filename, entry).split(os.sep)[0]
            return os.path.join(entry, top)
    return filename


class Layers:
    """Set up in the zygote, inherited by every worker it forks."""

    def __init__(self, config: ZygoteConfig) -> None:
        self.status: dict[str, Layer] = {}
        self.pidns = self._pid_namespaces(config)
        self.host_net = self._network_namespace()
        self.cgroup_root = self._cgroups(config)
        self.memory_root = self._memory_cgroup(config)
        self.landlock = self._landlock()
        self.drop_capabilities = self._capabilities()
        self.private_mounts = self._private_mounts(config.root)
        self.status["no_new_privs"] = Layer(active=True, detail="set in every worker")
        self.status["rlimits"] = Layer(
            active=True, detail="address space, CPU, open files, file size, core dumps"
        )
        self.status = {name: self.status[name] for name in LAYER_NAMES}

    def _pid_namespaces(self, config: ZygoteConfig) -> _linux.PidNamespaces | None:
        if not config.pid_namespaces:
            self.status["pid_namespace"] = Layer(
                active=False, detail="turned off (process_tree='subreaper'): subreaper + tree kill"
            )
            return None
        try:
            namespaces = _linux.PidNamespaces()
        except OSError as exc:
            namespaces = None
            why = str(exc)
        else:
            why = "unshare(CLONE_NEWPID) refused"
        if namespaces is None or not namespaces.available:
            self.status["pid_namespace"] = Layer(
                active=False, detail=f"{why}: falling back to a subreaper and a tree kill"
            )
            return None
        self.status["pid_namespace"] = Layer(active=True, detail="each worker is pid 1 of its own")
        return namespaces

    def _network_namespace(self) -> int | None:
        """Move the zygote (so every worker) into an empty network namespace; keep a
        descriptor of the host's for tools whose policy allows the network."""
        try:
            host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.status["network_namespace"] = Layer(active=False, detail=f"no /proc: {exc}")
            return None
        try:
            _linux.unshare(_linux.CLONE_NEWNET)
        except OSError as exc:
            os.close(host)
            self.status["network_namespace"] = Layer(
                active=False, detail=f"{exc.strerror or exc}: tools can use the network"
            )
            return None
        self.status["network_namespace"] = Layer(
            active=True, detail="workers share one with no interface up, unless network = true"
        )
        return host

    def _cgroups(self, config: ZygoteConfig) -> str | None:
        if not config.cgroups:
            self.status["cgroup_pids"] = Layer(active=False, detail="turned off")
            return None
        if not _linux.cgroup_pids_available():
            self.status["cgroup_pids"] = Layer(
                active=False,
                detail=f"{_linux.CGROUP_PIDS_ROOT} is not writable: RLIMIT_NPROC only "
                "(which does not bind uid 0)",
            )
            return None
        path = os.path.join(_linux.CGROUP_PIDS_ROOT, f"sandboxed-agent-{os.getpid()}")
        try:
            os.mkdir(path)
        except OSError as exc:
            self.status["cgroup_pids"] = Layer(active=False, detail=f"mkdir {path}: {exc.strerror}")
            return None
        self.status["cgroup_pids"] = Layer(active=True, detail="pids.max per worker")
        return path

    def _memory_cgroup(self, config: ZygoteConfig) -> str | None:
        """A memory cgroup per worker, nested in ours (so a container's own limit holds):
        it counts what RLIMIT_AS does not (memfd, tmpfs, page cache)."""
        if not config.cgroups:
            self.status["cgroup_memory"] = Layer(active=False, detail="turned off")
            return None
        parent = os.path.join(_linux.CGROUP_MEMORY_ROOT, _linux.own_cgroup("memory").lstrip("/"))
        path = os.path.join(parent, f"sandboxed-agent-{os.getpid()}")
        try:
            os.mkdir(path)
        except OSError as exc:
            self.status["cgroup_memory"] = Layer(
                active=False,
                detail=f"no writable memory cgroup ({exc.strerror}): memory is bounded by "
                "RLIMIT_AS and the tmpfs size only",
            )
            return None
        self.status["cgroup_memory"] = Layer(
            active=True, detail="memory.limit_in_bytes per worker (memfd, tmpfs, cache included)"
        )
        return path

    def _landlock(self) -> bool:
        abi = _landlock.abi_version()
        if abi < 1:
            self.status["landlock"] = Layer(
                active=False, detail="the kernel has no Landlock: file access is not restricted"
            )
            return False
        scope = ", signals and abstract sockets scoped" if abi >= 6 else ""
        self.status["landlock"] = Layer(
            active=True, detail=f"ABI {abi}: reads and writes restricted{scope}"
        )
        return True

    def _capabilities(self) -> bool:
        if os.geteuid() != 0 and _linux.capabilities_effective() == 0:
            self.status["capabilities"] = Layer(active=True, detail="not root: none to drop")
            return False
        self.status["capabilities"] = Layer(
            active=True, detail="uid 0 without capabilities (bounding set emptied, NOROOT locked)"
        )
        return True

    def _private_mounts(self, root: str) -> bool:
        """Try, in a throwaway child, what each worker will do at fork."""
        probe = os.path.join(root, "mount-probe")
        os.makedirs(probe, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            try:
                _linux.private_mounts(probe, 1, own_proc=self.pidns is not None)
            except BaseException:
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        os.rmdir(probe)
        if os.waitstatus_to_exitcode(status) != 0:
            self.status["mount_namespace"] = Layer(
                active=False,
                detail="cannot make a mount namespace: no disk quota (max_disk_mb), "
                "the host's process list stays visible in /proc",
            )
            return False
        detail = "workdir is a tmpfs of max_disk_mb"
        if self.pidns is not None:
            detail += "; /proc shows only the worker's processes"
        self.status["mount_namespace"] = Layer(active=True, detail=detail)
        return True

    def enter_network(self, network: bool) -> None:
        """In a freshly forked worker: back to the host's network if the tool may use it."""
        if network and self.host_net is not None:
            _linux.setns(self.host_net, _linux.CLONE_NEWNET)
