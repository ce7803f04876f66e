"""Where a pool may make its cgroups: a subtree delegated to it, or the one it runs in.

Root may make cgroups anywhere; a normal user only beneath a directory given to it.
That is what delegation is: systemd's `Delegate=yes` (`systemd-run --user --scope -p
Delegate=yes CMD` starts CMD in a cgroup v2 subtree its user owns), or, on cgroup v1,
an admin who makes a cgroup per controller and chowns it with its `cgroup.procs` and
`tasks` to the user. Either way the pool looks, per controller, in this order:

1. the cgroup that `SANDBOXED_AGENT_CGROUP_ROOT` names, and no other (a subtree named
   but not usable is said, not passed over): one path for every controller
   (`/agents/alice`, as `/proc/self/cgroup` writes paths, under each hierarchy's
   mount) or one per controller (`pids=/a,memory=/b,cpuacct=/c`);
2. else its own cgroup, as `/proc/self/cgroup` names it (a scope started with
   `systemd-run --user --scope`, or a container's), so a limit above it still holds;
3. for pids, else the top of the hierarchy (root's place before delegation existed).

Hierarchies are found in /proc/self/mountinfo, never assumed at /sys/fs/cgroup.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping

from . import _probes

ROOT_ENV = "SANDBOXED_AGENT_CGROUP_ROOT"
CONTROLLERS = ("pids", "memory", "cpuacct")


def parse_root(value: str | None) -> dict[str, str]:
    """The cgroup each controller's subtree is in, from `ROOT_ENV`'s value (empty: none
    named). Raises ValueError saying what is accepted."""
    value = (value or "").strip()
    if not value:
        return {}
    if "=" not in value:
        return dict.fromkeys(CONTROLLERS, _cgroup_path(value))
    named: dict[str, str] = {}
    for part in value.split(","):
        controller, _, path = (p.strip() for p in part.partition("="))
        if controller not in CONTROLLERS:
            raise ValueError(
                f"{ROOT_ENV}: unknown controller {controller!r} in {value!r}; accepted: "
                f"one cgroup path for all, or {','.join(f'{c}=PATH' for c in CONTROLLERS)}"
            )
        named[controller] = _cgroup_path(path)
    return named


def _cgroup_path(path: str) -> str:
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts or "\x00" in path or "\n" in path:
        raise ValueError(
            f"{ROOT_ENV}: {path!r} is not a cgroup path; accepted: an absolute path as "
            "/proc/self/cgroup writes them (/agents/alice), without '..'"
        )
    return "/" + "/".join(p for p in parts if p)


def mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, root of the hierarchy there, controllers) of every cgroup mount;
    cgroup v2 has the controllers `[""]`."""
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        kind, options = tail[0], tail[2].split(",")
        point, root = _unescape(fields[4]), _unescape(fields[3])
        if kind == "cgroup":
            found.append((point, root, options))
        elif kind == "cgroup2":
            found.append((point, root, [""]))
    return found


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def own_path(controller: str) -> str | None:
    """This process's cgroup for `controller` ("" for cgroup v2), from /proc/self/cgroup."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if controller == "" and hierarchy == "0" and controllers == "":
            return path
        if controller and controller in controllers.split(","):
            return path
    return None


def hierarchy(controller: str) -> tuple[str, str] | None:
    """(mount point, its root) of the hierarchy holding `controller` ("": cgroup v2)."""
    for point, root, controllers in mounts():
        if controller in controllers:
            return point, root
    return None


def _under(mount: tuple[str, str], path: str) -> str:
    """The directory of cgroup `path` under a mount of the hierarchy's `root` (a
    container may see only its own part of the tree, mounted as its top)."""
    point, root = mount
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root) :] or "/"
    return os.path.normpath(os.path.join(point, path.lstrip("/")))


def directory_of(controller: str, path: str) -> str | None:
    """Where cgroup `path` of `controller` ("": cgroup v2) is in the file system."""
    mount = hierarchy(controller)
    return None if mount is None else _under(mount, path)


def parents(controller: str, named: Mapping[str, str], v2: bool = False) -> list[str]:
    """Directories where this pool's own cgroup for `controller` may be made, best
    first (see the module's docstring); `v2`: in the cgroup v2 hierarchy instead."""
    mount = hierarchy("" if v2 else controller)
    if mount is None:
        return []
    if controller in named:
        return [_under(mount, named[controller])]
    found = []
    own = own_path("" if v2 else controller)
    if own is not None:
        found.append(_under(mount, own))
    top = mount[0]
    if controller == "pids" and top not in found:
        found.append(top)
    return found


def make_root(
    controller: str,
    limit_file: str,
    name: str,
    named: Mapping[str, str],
    sweep: Callable[[str], None],
) -> tuple[str | None, str]:
    """Our cgroup `name` of `controller` in the first place that takes it, tried for
    real (made, and joined by a throwaway child, as each worker will join its own):
    (its path, "") or (None, why not). `sweep` clears a parent of dead pools' cgroups."""
    reasons = []
    for parent in parents(controller, named):
        sweep(parent)
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except OSError as exc:
            reasons.append(f"mkdir {path}: {exc.strerror}")
            continue
        if not os.path.exists(os.path.join(path, limit_file)):
            failed: str | None = f"{path} has no {limit_file}"
        else:
            failed = _probes.in_child(lambda p=path: _probes.join_cgroup(p))
        if failed is None:
            return path, ""
        reasons.append(failed)
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return None, "; ".join(reasons) or f"no cgroup v1 {controller} hierarchy mounted"


def how_to_delegate(controller: str) -> str:
    """How a user gets a subtree of `controller` of its own on this host, briefly."""
    ways = []
    mount = hierarchy(controller)
    if mount is not None:
        top = mount[0]
        ways.append(
            f"as root, mkdir {top}/NAME and chown it, its cgroup.procs and tasks to the "
            f"user, then {ROOT_ENV}=/NAME"
        )
    if controller == "cpuacct" and hierarchy("") is not None:
        ways.append("systemd-run --user --scope -p Delegate=yes (cgroup v2)")
    if not ways:
        return (
            f"this machine has no cgroup v1 {controller} hierarchy, and its cgroup v2 "
            f"{controller} controller is not used yet"
        )
    return "to delegate one: " + "; or ".join(ways) + " (see the README)"
