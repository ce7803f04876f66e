"""Hostile tools aimed at what the zygote sets up once for every worker and what a
spare holds before its call: descriptors it opened, binds it planned, limits it
wrote, state one call could leave for the next."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import stat
import struct

from tools import tool

_PTRACE_ATTACH, _PTRACE_DETACH = 16, 17
_WALL = 0x40000000
_CLONE_NEWUSER, _CLONE_NEWNS = 0x10000000, 0x00020000
_MS_REMOUNT, _MS_BIND = 32, 4096
_SYS_MOUNT_SETATTR, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, 0x8000, 1
_OWN = (0, 1, 2, 3)
"""What a worker holds when its tool starts: /dev/null, the log twice, its socket."""


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"(unnamed: {exc.strerror})"


def _escape_through(fd: int) -> list[str]:
    """What opening its parent, and the host's files beside it, through `fd` gave."""
    reached = []
    for name in ("..", "../..", "../../etc/shadow", "../../../../../../etc/shadow"):
        try:
            opened = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            continue
        try:
            if stat.S_ISDIR(os.fstat(opened).st_mode):
                reached.append(f"{name}: {sorted(os.listdir(opened))[:20]}")
            else:
                reached.append(f"{name}: read {len(os.read(opened, 100))} bytes")
        finally:
            os.close(opened)
    try:
        os.fchdir(fd)
        reached.append(f"fchdir: now in {os.listdir('.')[:20]}")
    except OSError:
        pass
    return reached


@tool
def spare_descriptors() -> str:
    """Every descriptor this process holds beyond its own four, found by trying each
    number (one above RLIMIT_NOFILE may still be open), and what each reaches."""
    found: dict[str, dict[str, object]] = {}
    for fd in range(65536):
        try:
            info = os.fstat(fd)
        except OSError:
            continue
        kind = "directory" if stat.S_ISDIR(info.st_mode) else stat.filemode(info.st_mode)
        seen: dict[str, object] = {"what": _describe(fd), "kind": kind}
        if stat.S_ISDIR(info.st_mode):
            seen["reached"] = _escape_through(fd)
        if fd not in _OWN or stat.S_ISDIR(info.st_mode):
            found[str(fd)] = seen
    return json.dumps(found)


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]


@tool
def spare_write_every_mount() -> str:
    """Try to write in, or to, every mount this worker sees but its workdir: a file
    and a directory in each bound directory, each bound file opened for writing.
    Character devices are left out (a read-only mount lets them be written: /dev/null)."""
    written = []
    own = os.getcwd()
    for mount in _mounts():
        if mount == own:
            continue
        try:
            info = os.stat(mount)
        except OSError:
            continue
        if stat.S_ISCHR(info.st_mode):
            continue
        if not stat.S_ISDIR(info.st_mode):
            try:
                os.close(os.open(mount, os.O_WRONLY | os.O_CLOEXEC))
                written.append(f"opened {mount} for writing")
            except OSError:
                pass
            continue
        planted = os.path.join(mount, f"planted-{os.getpid()}")
        try:
            os.close(os.open(planted, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        except OSError:
            pass
        else:
            os.unlink(planted)
            written.append(f"made a file in {mount}")
        try:
            os.mkdir(planted)
        except OSError:
            pass
        else:
            os.rmdir(planted)
            written.append(f"made a directory in {mount}")
    return json.dumps({"uid": os.getuid(), "mounts": len(_mounts()), "written": written})


_PLACES = ("{cwd}", "{home}", "{tmpdir}", "/tmp", "/dev/shm", "/var/tmp", "{cwd}/..")


def _places() -> list[str]:
    cwd = os.getcwd()
    names = {
        "cwd": cwd,
        "home": os.environ.get("HOME", cwd),
        "tmpdir": os.environ.get("TMPDIR", cwd),
    }
    return sorted({os.path.normpath(p.format(**names)) for p in _PLACES})


@tool
def spare_leave_traces(marker: str) -> str:
    """Leave `marker` wherever a later call could look: files in the workdir, HOME,
    TMPDIR, /tmp, /dev/shm and beside the workdir, an environment variable, a
    process group's signal disposition.

    Args:
        marker: A name of this test's own.
    """
    left = []
    for place in _places():
        try:
            with open(os.path.join(place, marker), "w") as f:
                f.write(marker)
            left.append(place)
        except OSError:
            pass
    os.environ[marker] = marker
    os.putenv(marker, marker)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return json.dumps(left)


@tool
def spare_find_traces(marker: str) -> str:
    """Where a call before this one left `marker` (see `spare_leave_traces`).

    Args:
        marker: The name that call used.
    """
    found = [p for p in _places() if os.path.lexists(os.path.join(p, marker))]
    if marker in os.environ:
        found.append("environment")
    if signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN:
        found.append("SIGUSR1 ignored")
    return json.dumps(found)


@tool
def spare_signal(pids: list[int]) -> str:
    """Signal 0 (a permission check that harms no one) and pidfd_open each pid.

    Args:
        pids: Host pids of the zygote, its spares and the orchestrator.
    """
    reached = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            reached.append(f"kill {pid}")
        except OSError:
            pass
        try:
            os.close(os.pidfd_open(pid))
            reached.append(f"pidfd {pid}")
        except OSError:
            pass
    return json.dumps({"pid": os.getpid(), "reached": reached})


@tool
def spare_trace(pids: list[int]) -> str:
    """Reach into each process: its memory and environment through /proc, and
    PTRACE_ATTACH (detached again at once, so a process reached runs on).

    Args:
        pids: Host pids of the zygote, its spares and the orchestrator.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    reached = []
    for pid in pids:
        if pid == os.getpid():
            continue  # its own (without a PID namespace, its host pid is its pid)
        for name in ("mem", "environ"):
            try:
                os.close(os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC))
                reached.append(f"opened /proc/{pid}/{name}")
            except OSError:
                pass
        if libc.ptrace(_PTRACE_ATTACH, pid, None, None) == 0:
            reached.append(f"attached to {pid}")
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, _WALL)
            libc.ptrace(_PTRACE_DETACH, pid, None, None)
    return json.dumps({"uid": os.getuid(), "reached": reached})


@tool
def spare_read(paths: list[str]) -> str:
    """Read each file: its text, or why not; and when this process started (seconds
    of CLOCK_BOOTTIME, rounded down to the clock tick).

    Args:
        paths: Files to read.
    """
    with open("/proc/self/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    seen: dict[str, object] = {"started": int(fields[19]) / os.sysconf("SC_CLK_TCK")}
    for path in paths:
        try:
            with open(path) as f:
                seen[path] = f.read(200)
        except OSError as exc:
            seen[path] = f"denied: {exc.strerror}"
    return json.dumps(seen)


@tool
def spare_remount_in_user_namespace() -> str:
    """In a user namespace of its own (a full capability set there) and a mount
    namespace copied from the jail's: make the binds writable again, every way there
    is, then write in each bound directory."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        return json.dumps({"unshare": os.strerror(ctypes.get_errno()), "done": []})
    clear = ctypes.create_string_buffer(struct.pack("=QQQQ", 0, _MOUNT_ATTR_RDONLY, 0, 0), 32)
    done = []
    for mount in _mounts():
        if mount == os.getcwd():
            continue  # its workdir, writable already
        target = mount.encode()
        if libc.mount(None, target, None, _MS_REMOUNT | _MS_BIND, None) == 0:
            done.append(f"remounted {mount} writable")
        if libc.syscall(_SYS_MOUNT_SETATTR, -100, target, _AT_RECURSIVE, clear, 32) == 0:
            done.append(f"cleared read-only on {mount}")
    for mount in _mounts():
        if os.path.isdir(mount) and mount != os.getcwd():
            planted = os.path.join(mount, f"planted-{os.getpid()}")
            try:
                os.mkdir(planted)
            except OSError:
                continue
            os.rmdir(planted)
            done.append(f"made a directory in {mount}")
    return json.dumps({"unshare": "done", "done": done})
