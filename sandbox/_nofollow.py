"""Reaching a call's `root` or `data_dir` without following a symbolic link.

The policy resolved each path once, when it was loaded, to an absolute, symlink-free
path. A link found on the way now was put there since (by a tool, say), and the worker
runs as root at this point: it must not chown, chmod, bind or allow what the link
points to. Each component is opened with O_NOFOLLOW from `/`, so no link is followed
even for a moment; what is refused raises `PathChanged` (an OSError).
"""

from __future__ import annotations

import errno
import os
import stat

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathChanged(OSError):
    """A directory the policy resolved is no longer what it was at load."""


def open_dir(path: str, create: bool = False) -> int | None:
    """An O_PATH descriptor of directory `path`, each component opened without
    following a link; `create`: missing directories are made as `os.makedirs` makes
    them (the last 0770, those on the way 0777, less the umask).
    None: a component is missing (and not created). Raises PathChanged for a link or a
    non-directory on the way, or for a path that is not absolute and normal."""
    if not os.path.isabs(path) or os.path.normpath(path) != path or path.startswith("//"):
        raise PathChanged(f"{path!r} is not an absolute, normalised path")
    fd = os.open("/", _DIR)
    reached = "/"
    try:
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            reached = os.path.join(reached, part)
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(part, 0o770 if i == len(parts) - 1 else 0o777, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile: opened (and checked) below
                child = _open_existing(part, fd, reached, path)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                child = _open_existing(part, fd, reached, path)
            os.close(fd)
            fd = child
        found, fd = fd, -1
        return found
    finally:
        if fd >= 0:
            os.close(fd)


def _open_existing(part: str, parent: int, reached: str, path: str) -> int:
    try:
        return os.open(part, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
    info = os.lstat(part, dir_fd=parent)
    what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
    raise PathChanged(
        f"{reached} is {what} now, on the way to {path} (the policy resolved it, "
        "symlink-free, when it was loaded): refusing to follow it"
    )
