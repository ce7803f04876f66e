"""Probes run in throwaway children of the zygote: each tries, for real, what a
worker will do, so that a layer is reported active only once it has worked here."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from . import _jail, _landlock, _linux, _seccomp


def in_child(probe: Callable[[], object]) -> str | None:
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


def empty_network_namespace() -> int:
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


def seccomp_works() -> None:
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


def signals_scoped() -> None:
    """Landlock's signal scope (ABI 6) holds: once restricted, the zygote (this
    child's parent, of the same uid) can no longer be signalled."""
    _landlock.restrict([], [])
    try:
        os.kill(os.getppid(), 0)
    except PermissionError:
        return
    raise OSError("restricted with the signal scope, yet the zygote could be signalled")


def keyring_closed() -> None:
    _linux.join_new_session_keyring()
    _seccomp.install(_seccomp.Rules(network=False))
    try:
        _linux.keyctl_get_keyring_id(_linux.KEY_SPEC_SESSION_KEYRING)
    except PermissionError:
        return
    raise OSError("the filter was installed but keyctl still answered")


def userns_closed() -> None:
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


def join_cgroup(path: str) -> None:
    """As a worker joins its cgroups (cgroup v2 also wants write access where it leaves)."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write("0")


def jail_works(base: str, layout: _jail.Plan, own_proc: bool) -> None:
    workdir = enter_jail(base, layout, own_proc)
    with open(os.path.join(workdir, "written"), "w") as f:
        f.write("ok")
    if os.path.exists(os.path.join(base, "root")):
        raise OSError("the host's tree is still visible")
    try:
        os.mkdir("/jail-probe")
    except OSError:
        return
    raise OSError("the new root is writable")


def enter_jail(base: str, layout: _jail.Plan, own_proc: bool) -> str:
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


def readable_as(uid: int, paths: list[str], jail: tuple[str, _jail.Plan, bool] | None) -> None:
    """Every path readable by `uid` without any capability, inside the jail if given."""
    if jail is not None:
        enter_jail(*jail)
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
