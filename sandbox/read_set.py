"""What every worker may read: the interpreter, what the tools import, and the
system files a Python program needs; never the directory a program starts in."""

from __future__ import annotations

import os
import sys

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
