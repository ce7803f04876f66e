"""The isolation and attack suites once more, as a normal user.

Most people run agents as themselves, not as root: there the zygote makes a user
namespace of its own, and what root gets must hold there too. Run as root, this test
makes an unprivileged user, gives it a copy of the project and of this environment's
packages, and runs the suites below as that user; run as a normal user, the suites
themselves already are that run, and the host without user namespaces is emulated for
that user itself.

The cgroups come from a subtree delegated to that user, made here as an admin would on
cgroup v1 (a cgroup per controller, chowned with its cgroup.procs and tasks), and the
suites start inside it, as `systemd-run --user --scope -p Delegate=yes` starts its
command: so the memory, pids and CPU cgroups bind as they do for root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import _cgroups

ROOT = Path(__file__).resolve().parent.parent
USER = "sandboxed-agent-test"
SUITES = (
    "tests/test_attacks.py",
    "tests/test_attacks_host.py",
    "tests/test_attacks_redteam.py",
    "tests/test_attacks_warm.py",
    "tests/test_sandbox_isolation.py",
    "tests/test_read_set.py",
    "tests/test_egress.py",
    "tests/test_delegated_cgroups.py",
    "tests/test_sandbox_kills.py",
    "tests/test_launch.py",
)
DELEGATED = ("pids", "memory", "cpuacct")
JOIN_THEN_EXEC = (
    "import os, sys; cut = sys.argv.index('--')\n"
    "for group in sys.argv[1:cut]:\n"
    "    with open(os.path.join(group, 'cgroup.procs'), 'w') as f: f.write('0')\n"
    "os.execv(sys.argv[cut + 1], sys.argv[cut + 1:])\n"
)
"""Into the delegated cgroups, then the command: what a systemd scope does for it."""
COPIED = ("agent", "sandbox", "tools", "policies", "tests", "evals", "pyproject.toml")
RUN_TIMEOUT_S = 1200


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        pytest.skip("no useradd here to make an unprivileged user")
    made = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/false", USER],
        capture_output=True,
        text=True,
    )
    if made.returncode not in (0, 9):  # 9: made meanwhile
        pytest.skip(f"could not make the user {USER}: {made.stderr.strip()}")
    return pwd.getpwnam(USER)


def _runs_as(user: pwd.struct_passwd, argv: list[str]) -> bool:
    try:
        proc = subprocess.run(
            argv,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            timeout=60,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _python_for(user: pwd.struct_passwd) -> str:
    """This interpreter if the user may run it (a Python under a 0700 home is not),
    else the system's of the same version, whose ABI the packages were built for."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        if os.path.exists(candidate) and _runs_as(user, [candidate, "-c", "import sys"]):
            return candidate
    pytest.skip(f"no Python {version} that {USER} may run (the interpreter is private)")


def _environment(base: Path, python: str) -> Path:
    """A copy of the project and a virtual environment holding this one's packages,
    the project on its path as an editable install would put it."""
    project = base / "project"
    project.mkdir()
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy(source, project / name)
    venv = base / "venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = venv / "lib" / version / "site-packages"
    shutil.copytree(
        sysconfig.get_paths()["purelib"],
        target,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__editable__*", "__pycache__", "pip", "pip-*"),
    )
    (target / "sandboxed_agent_project.pth").write_text(f"{project}\n")
    script = venv / "bin" / "sandboxed-agent"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom agent.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    (base / "home").mkdir()
    return project


class AsUser:
    """The unprivileged user, its copy of the project, and how to run a command as it."""

    def __init__(self, user: pwd.struct_passwd, base: Path, project: Path) -> None:
        self.user, self.base, self.project = user, base, project
        self.python = str(base / "venv" / "bin" / "python")
        self.doctor = [str(base / "venv" / "bin" / "sandboxed-agent"), "doctor"]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.base / "home"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "SANDBOXED_AGENT_AS_USER": "1",
            **extra,
        }

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            extra_groups=[],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


class AsSelf:
    """Run as a normal user, the suite is already that user: commands run as they are."""

    def __init__(self) -> None:
        self.project, self.python = ROOT, sys.executable
        self.doctor = [os.path.join(os.path.dirname(sys.executable), "sandboxed-agent"), "doctor"]

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, cwd=self.project, env=env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def a_user(request: pytest.FixtureRequest) -> AsUser | AsSelf:
    """As root, the unprivileged user made here; as a normal user, that user itself."""
    if os.geteuid() != 0:
        return AsSelf()
    return request.getfixturevalue("as_user")


@pytest.fixture(scope="module")
def as_user() -> Iterator[AsUser]:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root: to make a user and delegate it a cgroup subtree (as a normal user "
            "the attack suites in this run are that run)"
        )
    if os.environ.get("SANDBOXED_AGENT_AS_USER"):
        pytest.skip("this is the run as a normal user")  # pragma: no cover
    user = _user()
    python = _python_for(user)
    base = Path(tempfile.mkdtemp(prefix="as-user-"))
    try:
        base.chmod(0o755)
        project = _environment(base, python)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(base)], check=True)
        yield AsUser(user, base, project)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def delegated(as_user: AsUser) -> Iterator[dict[str, tuple[str, str]]]:
    """Per cgroup v1 controller, a cgroup beneath ours (so our own limits still hold)
    given to the user as an admin delegates one: controller -> (cgroup, directory)."""
    made: dict[str, tuple[str, str]] = {}
    name = f"sandboxed-agent-delegated-{os.getpid()}"
    owner = (as_user.user.pw_uid, as_user.user.pw_gid)
    try:
        for controller in DELEGATED:
            own = _cgroups.own_path(controller)
            if own is None or _cgroups.hierarchy(controller) is None:
                continue
            path = own.rstrip("/") + "/" + name
            directory = _cgroups.directory_of(controller, path)
            assert directory is not None
            os.mkdir(directory)
            made[controller] = (path, directory)
            for entry in (directory, f"{directory}/cgroup.procs", f"{directory}/tasks"):
                os.chown(entry, *owner)
        yield made
    finally:
        for _, directory in made.values():
            for below, _, _ in sorted(os.walk(directory), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(below)


def test_the_attack_suites_pass_as_a_normal_user(
    as_user: AsUser, delegated: dict[str, tuple[str, str]]
) -> None:
    groups = [directory for _, directory in delegated.values()]
    scope = [as_user.python, "-c", JOIN_THEN_EXEC, *groups, "--"] if groups else []
    extra = {"SANDBOXED_AGENT_DELEGATED": "1"} if len(groups) == len(DELEGATED) else {}
    proc = as_user.run(
        [
            *scope,
            as_user.python,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",  # one process: this run is already one of the outer run's two
            "-W",
            "ignore::sandbox.IsolationWarning",
            *SUITES,
        ],
        as_user.env(**extra),
        RUN_TIMEOUT_S,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    print(tail)  # the inner run's summary, for -s and for failures
    assert proc.returncode == 0, f"the suites failed as {USER}:\n{tail}"
    assert " passed" in tail and " failed" not in tail, tail


def doctor_lines(output: str) -> dict[str, str]:
    """`doctor`'s layer lines: name -> the line as printed."""
    lines = {}
    for line in output.splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) == 3 and fields[0] in ("active", "UNAVAILABLE", "off", "standby"):
            lines[fields[1]] = line.strip()
    return lines


def test_doctor_as_a_normal_user_finds_a_delegated_subtree_or_says_how_to_get_one(
    as_user: AsUser, delegated: dict[str, tuple[str, str]]
) -> None:
    """Without a subtree the cgroup lines say so and how to delegate one; with one
    named by SANDBOXED_AGENT_CGROUP_ROOT (one path per controller: ours differ) the
    cgroup layers are active, from a process that is not in it (cgroup v1 allows it)."""
    if len(delegated) < len(DELEGATED):
        pytest.skip(f"no cgroup v1 hierarchy here for {set(DELEGATED) - set(delegated)}")
    doctor = as_user.doctor
    plain = as_user.run(doctor, as_user.env(), 300)
    named = ",".join(f"{c}={path}" for c, (path, _) in delegated.items())
    given = as_user.run(doctor, as_user.env(**{_cgroups.ROOT_ENV: named}), 300)
    for proc in (plain, given):
        assert proc.returncode == 0, proc.stdout + proc.stderr
    without, with_subtree = doctor_lines(plain.stdout), doctor_lines(given.stdout)
    print("\n".join(["without a subtree:", *without.values(), "with one:", *with_subtree.values()]))
    for name in ("cgroup_pids", "cgroup_memory", "cgroup_cpu"):
        assert without[name].startswith("UNAVAILABLE"), without[name]
        assert "to delegate one: as root, mkdir " in without[name], without[name]
        assert _cgroups.ROOT_ENV in without[name], without[name]
        assert with_subtree[name].startswith("active"), with_subtree[name]
    assert f"in {delegated['memory'][1]}" in with_subtree["cgroup_memory"]
    active = [
        sum(line.startswith("active") for line in d.values()) for d in (without, with_subtree)
    ]
    assert active[0] + 3 == active[1], active


def test_a_host_without_user_namespaces_is_named_strict_refuses_best_effort_runs(
    a_user: AsUser | AsSelf,
) -> None:
    """user.max_user_namespaces = 0, emulated as bubblewrap's --disable-userns does it
    (tests/host_emulation.py): doctor names the sysctl and its fix in one line; strict
    refuses; best-effort warns once and runs with what is left (Landlock, seccomp)."""
    from test_host_kinds import TRY_BOTH_MODES

    as_user = a_user
    emulate = [as_user.python, str(as_user.project / "tests" / "host_emulation.py"), "no-userns"]
    report = as_user.run([*emulate, "--", *as_user.doctor], as_user.env(), 300)
    assert report.returncode == 0, report.stdout + report.stderr
    lines = doctor_lines(report.stdout)
    print("\n".join(lines.values()))
    line = lines["user_namespace"]
    assert line.startswith("UNAVAILABLE") and line.count("\n") == 0, line
    assert "user.max_user_namespaces = 0: sysctl -w user.max_user_namespaces=15000" in line
    for name in ("seccomp", "landlock", "no_new_privs", "rlimits"):
        assert lines[name].startswith("active"), lines[name]
    modes = as_user.run([*emulate, "--", as_user.python, "-c", TRY_BOTH_MODES], as_user.env(), 300)
    assert modes.returncode == 0, modes.stdout + modes.stderr
    seen = json.loads(modes.stdout)
    assert "these layers are missing: user_namespace (" in seen["strict"], seen
    assert "user.max_user_namespaces = 0" in seen["strict"], seen
    assert (seen["result"], seen["again"]) == ("42", "2"), seen
    assert len(seen["warnings"]) == 1, seen["warnings"]
    assert seen["warnings"][0].startswith("sandbox layers unavailable here: user_namespace, ")


TRACE_THE_ORCHESTRATOR = """
import json, os, sys, warnings
from sandbox import IsolationWarning, Pool, SandboxUnavailable
from tools import Registry
registry = Registry.default()
registry.load(sys.argv[1])
warnings.simplefilter("ignore", IsolationWarning)
try:
    pool = Pool(registry=registry, size=1, disable=["landlock"], accept_unwalled_signals=True)
except SandboxUnavailable as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit()
with pool:
    print(pool.call("spare_trace", {"pids": [os.getpid()]}).output)
"""
"""A pool that accepts unwalled signals, with Landlock off; its tool opens the
orchestrator's /proc/PID/mem and environ (its API key) and PTRACE_ATTACHes to it."""


def test_no_tool_can_trace_the_orchestrator_on_a_host_without_user_namespaces(
    a_user: AsUser | AsSelf,
) -> None:
    """There no namespace is made: the workers run as the user, as the orchestrator
    does, in its user namespace, with no capability of its own to set it apart. Only
    Landlock (any ABI) keeps them from tracing it: without it the pool refuses to
    start, whatever it was told to accept about signals."""
    emulate = [a_user.python, str(a_user.project / "tests" / "host_emulation.py"), "no-userns"]
    tools = str(a_user.project / "tests" / "spare_attack_tools.py")
    argv = [*emulate, "--", a_user.python, "-c", TRACE_THE_ORCHESTRATOR, tools]
    proc = a_user.run(argv, a_user.env(), 300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(proc.stdout)
    assert seen.get("reached", []) == [], seen
    assert "could read the orchestrator's memory" in seen["refused"], seen
