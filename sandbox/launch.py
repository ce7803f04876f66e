"""Any command, long-lived, inside every layer a tool gets; stdin and stdout its caller's.

    python -m sandbox.launch '{"memory_mb": 256}' --read /srv/repo -- python -m mcp_server_git

The command (an MCP server, say) gets a root of its own holding only its code (see
`read_set.command_read_paths`), the system files, the `--read` paths read-only and the
`--write` paths writable; an empty network namespace unless `network` is true; PID,
IPC and mount namespaces; Landlock, seccomp, no_new_privs, no capabilities, an
unprivileged uid; rlimits and cgroups from the `Limits` (`cpu_s` and `memory_mb` are
for the command's whole life; `timeout_s` is the caller's per-request deadline and is
not used here); only PATH, the locale, TZ and the `--env` names of the environment.

Three processes, as for a tool: this launcher, which stays outside and answers SIGTERM,
SIGINT and SIGHUP by killing the rest at once; an init, pid 1 of the command's PID
namespace, which takes every layer (Landlock and seccomp survive execve with
no_new_privs) and reaps; and the command, its child, exec'd with nothing left to do
but seccomp's filter already on. When the command exits, or the init is killed, the
kernel kills everything else in the namespace. Exit status: the command's (128 + the
signal that killed it), 70 when the sandbox could not be set up (the reason on
stderr), 2 for a usage error, 143 when stopped by a signal, 152 past `cpu_s`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from difflib import get_close_matches
from typing import NoReturn

from pydantic import BaseModel, ConfigDict, ValidationError

from .limits import Limits

EXIT_USAGE = 2
EXIT_STOPPED = 128 + signal.SIGTERM
EXIT_CPU = 128 + signal.SIGXCPU
CPU_POLL_S = 0.25
"""How often the launcher reads the command's CPU cgroup (`cpu_s` for the whole tree)."""


ACCEPT_FLAG = "--accept-unwalled-signals"
"""Run even where no layer walls the command's signals (`sandbox.layers.unwalled_signals`)."""


class LaunchConfig(BaseModel):
    """What the clean second stage of the launcher is handed (on its command line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: list[str]
    limits: Limits
    read_paths: list[str] = []
    write_paths: list[str] = []
    env: list[str] = []
    """Names of the caller's variables that reach the command."""
    disabled: list[str] = []
    strict: bool = False
    accept_unwalled_signals: bool = False
    tmp: str = "/tmp"
    sys_path: list[str] = []
    cgroup_subtree: str | None = None
    """`SANDBOXED_AGENT_CGROUP_ROOT` (`sandbox._cgroups`), read before the clean exec."""


def command_line(
    command: Sequence[str],
    limits: Limits,
    *,
    read_paths: Sequence[str] = (),
    write_paths: Sequence[str] = (),
    env: Sequence[str] = (),
    disable: Sequence[str] = (),
    strict: bool = False,
    accept_unwalled_signals: bool = False,
) -> list[str]:
    """The argv that runs `command` under the launcher, for any stdio client."""
    argv = [sys.executable, "-m", "sandbox.launch", limits.model_dump_json()]
    for flag, values in (
        ("--read", read_paths),
        ("--write", write_paths),
        ("--env", env),
        ("--disable", disable),
    ):
        for value in values:
            argv += [flag, value]
    if strict:
        argv += ["--isolation", "strict"]
    if accept_unwalled_signals:
        argv.append(ACCEPT_FLAG)
    return [*argv, "--", *command]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _die(
            f"{message} (usage: python -m sandbox.launch LIMITS_JSON [--read PATH]... "
            "[--write PATH]... [--env NAME]... [--disable LAYER]... [--isolation strict] "
            f"[{ACCEPT_FLAG}] -- COMMAND [ARG]...)",
            EXIT_USAGE,
        )


def _die(message: str, status: int) -> NoReturn:
    print(f"sandbox.launch: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def parse(argv: list[str]) -> LaunchConfig:
    """The command line → a checked `LaunchConfig`; a usage error exits 2 in one line."""
    if "--" not in argv:
        _Parser().error("the command must follow --")
    cut = argv.index("--")
    parser = _Parser(prog="python -m sandbox.launch", add_help=False, allow_abbrev=False)
    parser.add_argument("limits")
    for flag in ("--read", "--write", "--env", "--disable"):
        parser.add_argument(flag, action="append", default=[])
    parser.add_argument("--isolation", choices=["best-effort", "strict"], default="best-effort")
    parser.add_argument(ACCEPT_FLAG, action="store_true")
    args = parser.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        parser.error("no command after --")
    try:
        # Strict, as a policy file is: lax JSON would read "network": "yes" as the
        # host's network and "256" as a number.
        limits = Limits.model_validate_json(args.limits, strict=True)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = str(err["loc"][0]) if err["loc"] else ""  # not pydantic's union branches
        msg = str(err["msg"]).removeprefix("Value error, ")
        if where == "network" and err["type"] != "value_error":
            msg = f"must be true or false (got {err['input']!r})"
        elif where and err["type"] not in ("extra_forbidden", "value_error"):
            msg = f"{msg} (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            close = get_close_matches(where, list(Limits.model_fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"unknown field{hint} (accepted: {', '.join(Limits.model_fields)})"
        _die(
            f"LIMITS_JSON: {where + ': ' if where else ''}{msg} (a JSON object of "
            'sandbox.Limits fields, for example \'{"memory_mb": 256, "network": false}\')',
            EXIT_USAGE,
        )
    if limits.network_mode == "proxy":
        _die(
            "LIMITS_JSON: network: a list of host:port (an egress allowlist) needs the "
            "pool's proxy; sandbox.launch takes true or false",
            EXIT_USAGE,
        )
    from .layers import check_layer_names

    try:
        check_layer_names(args.disable)
    except ValueError as exc:
        _die(f"--disable: {exc}", EXIT_USAGE)
    paths = {}
    for flag, given in (("--read", args.read), ("--write", args.write)):
        paths[flag] = [_existing(flag, p, directory=flag == "--write") for p in given]
    from .read_set import CommandNotFound, command_read_paths

    try:
        command_read_paths(command, os.environ.get("PATH", ""))
    except CommandNotFound as exc:
        _die(f"cannot run the command: {exc}", EXIT_USAGE)
    for name in args.env:
        if not name or "=" in name or "\0" in name:
            _die(
                f"--env takes a variable's name (its value comes from the environment), "
                f"got {name!r}",
                EXIT_USAGE,
            )
    from ._cgroups import ROOT_ENV, parse_root

    subtree = os.environ.get(ROOT_ENV) or None
    try:
        parse_root(subtree)
    except ValueError as exc:
        _die(str(exc), EXIT_USAGE)
    return LaunchConfig(
        command=command,
        cgroup_subtree=subtree,
        limits=limits,
        read_paths=paths["--read"],
        write_paths=paths["--write"],
        env=args.env,
        disabled=args.disable,
        strict=args.isolation == "strict",
        accept_unwalled_signals=args.accept_unwalled_signals,
        tmp=tempfile.gettempdir(),
        sys_path=[os.path.abspath(p) for p in sys.path if p],
    )


def _existing(flag: str, path: str, directory: bool) -> str:
    """An absolute path with its links resolved: the jail binds what is there now."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        _die(f"{flag} {path}: no such file or directory", EXIT_USAGE)
    if directory and not os.path.isdir(real):
        _die(f"{flag} {path}: not a directory (writable paths are directories)", EXIT_USAGE)
    return real


_BOOTSTRAP = (
    "import sys, json; cfg = sys.argv[1]; "
    "sys.path[:0] = json.loads(cfg)['sys_path']; "
    "from sandbox.launch import run; run(cfg)"
)


def main(argv: list[str] | None = None) -> NoReturn:
    """First stage: check the command line, then exec a clean interpreter (as the zygote
    does) whose environment holds only what may reach the command: nothing else of
    ours is ever in the memory the command's init is forked from."""
    parent = os.getppid()
    config = parse(list(sys.argv[1:] if argv is None else argv))
    from . import _linux
    from .zygote import clean_environment

    # Stopped with whoever started it, even by SIGKILL: it kills the command's tree then.
    _linux.set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        _die("the process that started the launcher has exited", EXIT_STOPPED)

    env = clean_environment(dict(os.environ))
    env.update({name: os.environ[name] for name in config.env if name in os.environ})
    argv = [sys.executable, "-I", "-c", _BOOTSTRAP, config.model_dump_json()]
    try:
        os.execve(sys.executable, argv, env)
    except OSError as exc:
        _die(f"cannot start the launcher: {exc}", 70)


def run(config_json: str) -> NoReturn:
    """Second stage: the layers, the init, and the wait."""
    from ._launcher import Launcher

    config = LaunchConfig.model_validate_json(config_json)
    os.chdir("/")
    try:
        launcher = Launcher(config)
    except Exception as exc:
        _die(str(exc), 70)
    raise SystemExit(launcher.run())


if __name__ == "__main__":
    main()
