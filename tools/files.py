"""`read_file`: UTF-8 text from inside one root directory, and nowhere else.

The path is walked one component at a time with `openat(..., O_NOFOLLOW)` from a
descriptor of the root, so the check and the open are the same operation: a symlink
swapped in between cannot redirect it, and no component may be a link at all. Only
regular files are read, and never more than the cap plus a few bytes.

Error messages repeat only the path the caller gave, so they reveal nothing about
what lies outside the root.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat

from . import context
from .registry import tool

DEFAULT_MAX_BYTES = 64 * 1024


class FileAccessError(ValueError):
    """The path was refused or the file could not be read as text."""


class NoSuchFile(FileAccessError):
    """Nothing at that path in the document root."""


MAX_LISTED = 20
"""Documents named when a path does not exist: enough for a support desk's few."""


def _components(path: str) -> list[str]:
    if not isinstance(path, str) or not path.strip():
        raise FileAccessError("give a relative path inside the document root, e.g. 'policy.txt'")
    if "\x00" in path:
        raise FileAccessError("the path contains a NUL byte")
    try:
        path.encode("utf-8")  # a lone surrogate, or a byte smuggled in as one
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "backslashreplace").decode()
        raise FileAccessError(
            f"{shown!r} is not valid Unicode text (a lone surrogate); give a UTF-8 path"
        ) from None
    if path.startswith(("/", "\\")) or path.startswith("~"):
        raise FileAccessError(f"{path!r} is absolute; give a path relative to the document root")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FileAccessError(f"{path!r} leaves the document root ('..' is not allowed)")
    if not parts:
        raise FileAccessError(f"{path!r} is the root directory, not a file")
    return parts


def _open_in_root(root: str, parts: list[str], shown: str) -> int:
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            flags |= (os.O_NONBLOCK | os.O_NOCTTY) if last else os.O_DIRECTORY
            try:
                fd = os.open(part, flags, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and _is_link(part, dir_fd):
                    exc.errno = errno.ELOOP  # O_DIRECTORY reports a link as "not a directory"
                raise _explain(exc, shown) from None
            os.close(dir_fd)
            dir_fd = fd
        return dir_fd
    except BaseException:
        os.close(dir_fd)
        raise


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _explain(exc: OSError, shown: str) -> FileAccessError:
    if exc.errno == errno.ENOENT:
        return NoSuchFile(f"{shown!r} does not exist in the document root")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return FileAccessError(f"{shown!r} goes through a symbolic link; links are not followed")
    if exc.errno == errno.ENOTDIR:
        return FileAccessError(f"{shown!r}: a component of the path is not a directory")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileAccessError(f"{shown!r} is not readable")
    return FileAccessError(f"{shown!r} cannot be opened ({os.strerror(exc.errno or 0)})")


def read_text(root: str, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    parts = _components(path)
    fd = _open_in_root(root, parts, path)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise FileAccessError(f"{path!r} is {kind}; only regular files can be read")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        got = 0
        # Read one byte past the cap to know whether there is more (st_size can lie:
        # files in /proc, files still growing).
        while got <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=not truncated)
    except UnicodeDecodeError as exc:
        raise FileAccessError(
            f"{path!r} is not UTF-8 text (undecodable byte at offset {exc.start})"
        ) from None
    if truncated:
        size = max(info.st_size, len(data) + 1)
        text += f"\n[truncated: showing the first {len(data)} of {size} bytes]"
    return text


@tool
def read_file(path: str) -> str:
    """Read one of the shop's documents, such as its policies (returns, refunds).

    Use it whenever an answer depends on the shop's rules, and quote what it says. Not
    for order details (get_order_status). The policies are in policy.txt; a path that
    does not exist is answered with the documents there are.

    Args:
        path: The document's path relative to the document root.
    """
    root = context.current().root
    if root is None:
        raise FileAccessError(
            "read_file has no document root configured (set 'root' in the policy)"
        )
    max_bytes = int(context.setting("max_read_bytes", DEFAULT_MAX_BYTES))
    try:
        return read_text(root, path, max_bytes)
    except NoSuchFile as exc:
        # A model that guessed a name gets the real ones, to try again with.
        raise NoSuchFile(f"{exc}; the documents there: {documents(root)}") from None


def documents(root: str) -> str:
    """The regular files at the top of the root (links are not followed), by name."""
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED]) or "none"
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
