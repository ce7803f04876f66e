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


MAX_INTERPRETERS = 4
"""Shebang lines followed, at most, from a command to the binary that runs it."""
_PYTHON_VALUE_OPTIONS = ("-W", "-X", "-Q")
_NODE_VALUE_OPTIONS = ("-r", "--require", "--import", "--loader", "--env-file")


class CommandNotFound(LookupError):
    """The command to launch is not an executable file on PATH or at its path."""


def command_read_paths(argv: list[str], search_path: str) -> tuple[str, list[str]]:
    """(the file to exec, what an arbitrary command needs to read to run).

    - The executable, found on `search_path` unless given with a slash, and each
      interpreter its `#!` line names (`#!/usr/bin/env node` looks `node` up too).
    - For each of these in an install prefix (`PREFIX/bin/NAME`, also before links
      are followed: a venv's `bin/python` links elsewhere), that prefix's `bin`,
      `lib`, `lib64` and `pyvenv.cfg`: a Python's stdlib and site-packages, a venv's
      packages, node's global `node_modules`, the libraries a binary ships with.
    - The script a Python or node command names (`python server.py`), that file only.

    Nothing else: not the directory the command starts in, not the user's home, not
    paths a `.pth` file adds (an editable install points at a whole project): give
    those in `read_paths`. What a system prefix holds (/usr, /lib) is in
    `SYSTEM_READ_PATHS` already."""
    if not argv:
        raise CommandNotFound("no command given")
    executable = _find(argv[0], search_path)
    chain = [executable]
    while len(chain) <= MAX_INTERPRETERS:
        interpreter = _shebang(chain[-1], search_path)
        if interpreter is None:
            break
        chain.append(interpreter)
    paths: set[str] = set()
    for program in chain:
        for path in (os.path.abspath(program), os.path.realpath(program)):
            paths.add(path)
            paths.update(_prefix_paths(path))
    script = _script_argument(os.path.basename(os.path.realpath(chain[-1])), argv[1:])
    if script is not None:
        paths.add(os.path.realpath(script))
    return executable, sorted(paths)


def _find(name: str, search_path: str) -> str:
    import shutil

    if "/" in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return os.path.abspath(name)
        raise CommandNotFound(f"{name} is not an executable file")
    found = shutil.which(name, path=search_path)
    if found is None:
        raise CommandNotFound(f"{name} was not found on PATH ({search_path})")
    return os.path.abspath(found)


def _shebang(program: str, search_path: str) -> str | None:
    """The interpreter a `#!` line at the top of `program` names, found; None if none."""
    try:
        with open(program, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        if not names:
            return None
        words = [names[0]]
    try:
        return _find(words[0], search_path)
    except CommandNotFound:
        return None


def _prefix_paths(path: str) -> list[str]:
    directory = os.path.dirname(path)
    if os.path.basename(directory) not in ("bin", "sbin"):
        return []
    prefix = os.path.dirname(directory)
    if prefix in ("/", "/usr"):
        return []
    return [directory] + [os.path.join(prefix, n) for n in ("lib", "lib64", "pyvenv.cfg")]


def _script_argument(interpreter: str, args: list[str]) -> str | None:
    """The script file `python [options] FILE` or `node [options] FILE` runs, if any."""
    if interpreter.startswith("python"):
        no_script, with_value = ("-m", "-c"), _PYTHON_VALUE_OPTIONS
    elif interpreter in ("node", "nodejs"):
        no_script, with_value = ("-e", "--eval", "-p", "--print"), _NODE_VALUE_OPTIONS
    else:
        return None
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in no_script or arg == "-":
            return None
        elif arg in with_value:
            skip = True
        elif not arg.startswith("-"):
            return arg if os.path.isfile(arg) else None
    return None
