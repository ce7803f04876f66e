"""The filesystem layer where Landlock is missing: a root made of read-only binds.

In the worker's own mount namespace a small tmpfs becomes the new root. Each path the
worker may read is bound into it read-only at the same place, the workdir read-write,
and `pivot_root` leaves the host's tree behind: what is not bound does not exist for
the tool. Symbolic links on the way to a path (`/lib -> usr/lib`) are copied as links,
so that paths resolve inside the new root as they did outside.

The skeleton (directories, mount points, links) is made on the tmpfs before anything
is bound, and never inside a bound directory: a mkdir there would land on the host.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from . import _linux

_MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup


class Plan(NamedTuple):
    """What to put in a new root: links to copy, directories and files to bind."""

    links: list[tuple[str, str]]
    """(path, target) of each symbolic link met on the way to a bound path."""
    binds: list[str]
    """Symlink-free paths, none inside another."""
    skeleton: tuple[tuple[str, str | None], ...] = ()
    """What `build` makes on the new root's tmpfs before anything is bound, in order:
    (path, None) a directory, (path, "") an empty file to bind a file on, (path,
    target) a link. Worked out once by `plan` (in the zygote), not in every worker."""


def plan(paths: Sequence[str], inside: Sequence[str] = ()) -> Plan:
    """Plan the binds for `paths`, leaving out what `inside` (already bound) holds."""
    links: dict[str, str] = {}
    found: set[str] = set()
    for path in paths:
        real = _resolve(os.path.join(os.getcwd(), path), links, 0)
        if real is not None and os.path.lexists(real):
            found.add(real)
    binds: list[str] = []
    for path in sorted(found, key=len):  # shorter first: a parent before its children
        if not _within(path, [*inside, *binds]):
            binds.append(path)
    kept_links = sorted(
        (link, target) for link, target in links.items() if not _within(link, [*inside, *binds])
    )
    return Plan(kept_links, binds, _skeleton(kept_links, binds))


def _skeleton(links: list[tuple[str, str]], binds: list[str]) -> tuple[tuple[str, str | None], ...]:
    """The skeleton of a new root, in the order it is made on its empty tmpfs: the
    parents of each link, the link; the mount point of each bind, a directory or a
    file as its source is. Each is made once."""
    made: set[str] = {"/"}
    steps: list[tuple[str, str | None]] = []

    def dirs(path: str) -> None:
        missing = []
        while path not in made:
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            made.add(directory)
            steps.append((directory, None))

    for link, target in links:
        dirs(os.path.dirname(link))
        if link not in made:
            made.add(link)
            steps.append((link, target))
    for path in binds:
        if os.path.isdir(path):
            dirs(path)
        else:
            dirs(os.path.dirname(path))
            if path not in made:
                made.add(path)
                steps.append((path, ""))
    return tuple(steps)


def _within(path: str, parents: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def _resolve(path: str, links: dict[str, str], depth: int) -> str | None:
    """`path` with every symbolic link along it followed; each link recorded."""
    parts = [p for p in path.split("/") if p and p != "."]
    current = "/"
    for i, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current)
            continue
        step = os.path.join(current, part)
        if os.path.islink(step):
            if depth >= _MAX_LINKS:
                return None
            target = os.readlink(step)
            links[step] = target
            # Not normalised: `..` after a link is taken from where the link leads.
            rest = os.path.join(current, target, *parts[i + 1 :])
            return _resolve(rest, links, depth + 1)
        current = step
    return current


MASKED = ("/proc/keys", "/proc/key-users", "/proc/kcore", "/proc/timer_list", "/proc/sched_debug")
"""Files under /proc that speak of the whole machine, not the worker's namespaces
(keyrings are not namespaced): /dev/null is bound over each, as container runtimes do."""


def build(new_root: str, layout: Plan, workdir: str) -> None:
    """In a fresh mount namespace: a tmpfs at `new_root` holding `layout` read-only and
    `workdir` read-write. Bound, not yet entered (see `enter`)."""
    _linux.mount("tmpfs", new_root, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "mode=0755")
    if not layout.skeleton and (layout.links or layout.binds):
        layout = plan_skeleton(layout)
    _make_skeleton(new_root, layout.skeleton)
    _mount_point(new_root + workdir, directory=True)
    for path in layout.binds:
        _linux.mount(path, new_root + path, None, _linux.MS_BIND)
    if "/proc" in layout.binds:
        for path in MASKED:
            if os.path.exists(path):
                _linux.mount(os.devnull, new_root + path, None, _linux.MS_BIND)
    # Every bind read-only in one call (each keeps its other flags, which a container
    # may have locked), then the skeleton writable again for the call's mount points
    # until `enter`. With the skeleton worked out in the zygote, the build fell from
    # 1.9 to 1.0-1.2 ms of CPU per spare (25 binds, 6 links).
    if _linux.set_readonly(new_root, True, recursive=True):
        _linux.set_readonly(new_root, False, recursive=False)
    else:  # no mount_setattr (Linux < 5.12): one remount per bind
        for path in layout.binds:
            _remount_readonly(new_root + path)
        if "/proc" in layout.binds:
            for path in MASKED:
                if os.path.exists(path):
                    _remount_readonly(new_root + path)
    _bind(new_root, workdir, readonly=False)


def plan_skeleton(layout: Plan) -> Plan:
    """`layout` with its skeleton worked out (a `Plan` built by hand has none)."""
    return layout._replace(skeleton=_skeleton(layout.links, layout.binds))


def _make_skeleton(new_root: str, steps: tuple[tuple[str, str | None], ...]) -> None:
    """Each directory 0755 and each file 0644 whatever the umask (a worker with a
    data_dir has 007): the worker's uid must pass through them."""
    umask = os.umask(0o022)
    try:
        for path, target in steps:
            here = new_root + path
            if target is None:
                os.mkdir(here, 0o755)
            elif target:
                os.symlink(target, here)
            else:
                os.close(os.open(here, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    finally:
        os.umask(umask)


def add_open(new_root: str, path: str, fd: int, bound: Sequence[str], readonly: bool) -> None:
    """Bind the directory open as `fd` (a call's root or data_dir, reached without
    following a link: see `_nofollow`) at `path`, also where it lies inside a read-only
    bind. The source is the descriptor, so no path to it is looked up again."""
    inside = _within(path, list(bound))
    if inside and readonly:
        return  # readable already, through the bind that holds it
    if not inside:
        _mount_point(new_root + path, directory=True)
    # The read-only bind shows its mount point when `path` lies inside one.
    _bind(new_root, path, readonly=readonly, source=f"/proc/self/fd/{fd}")


def enter(new_root: str) -> None:
    """Make the skeleton read-only and move into it; the host's root goes away."""
    _linux.mount(
        None,
        new_root,
        None,
        _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | _linux.MS_NOSUID | _linux.MS_NODEV,
    )
    cwd = os.getcwd()
    os.chdir(new_root)
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves
    # the new root alone, without a directory to hold the old one.
    _linux.pivot_root(".", ".")
    _linux.umount2(".", _linux.MNT_DETACH)
    os.chdir(cwd)


def _mount_point(path: str, directory: bool) -> None:
    if directory:
        _skeleton_dirs(path)
        return
    _skeleton_dirs(os.path.dirname(path))
    if not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _skeleton_dirs(path: str) -> None:
    """Like `os.makedirs`, but each new directory is 0755 whatever the umask (a worker
    with a data_dir has 007): the worker's uid must pass through them."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory)
        os.chmod(directory, 0o755)


def _bind(new_root: str, path: str, readonly: bool, source: str | None = None) -> None:
    target = new_root + path
    _linux.mount(source or path, target, None, _linux.MS_BIND)
    if readonly:
        _remount_readonly(target)


def _remount_readonly(target: str) -> None:
    # A bind keeps the flags of the mount it came from; a container may have
    # locked them (nodev, noexec), and a remount that drops one is refused.
    kept = os.statvfs(target).f_flag & (_linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC)
    flags = _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | kept
    _linux.mount(None, target, None, flags)
