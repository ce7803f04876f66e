"""The isolation and attack suites once more, as a normal user.

Most people run agents as themselves, not as root: there the zygote makes a user
namespace of its own, and what root gets must hold there too. Run as root, this test
makes an unprivileged user, gives it a copy of the project and of this environment's
packages, and runs the suites below as that user; run as a normal user, the suites
themselves already are that run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER = "sandboxed-agent-test"
SUITES = (
    "tests/test_attacks.py",
    "tests/test_attacks_host.py",
    "tests/test_attacks_redteam.py",
    "tests/test_sandbox_isolation.py",
    "tests/test_read_set.py",
    "tests/test_egress.py",
)
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


def test_the_attack_suites_pass_as_a_normal_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("already a normal user: the attack suites in this run are that run")
    if os.environ.get("SANDBOXED_AGENT_AS_USER"):
        pytest.skip("this is the run as a normal user")  # pragma: no cover
    user = _user()
    python = _python_for(user)
    base = Path(tempfile.mkdtemp(prefix="as-user-"))
    try:
        base.chmod(0o755)
        project = _environment(base, python)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(base)], check=True)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(base / "home"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "SANDBOXED_AGENT_AS_USER": "1",
        }
        proc = subprocess.run(
            [
                str(base / "venv" / "bin" / "python"),
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
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    print(tail)  # the inner run's summary, for -s and for failures
    assert proc.returncode == 0, f"the suites failed as {USER}:\n{tail}"
    assert " passed" in tail and " failed" not in tail, tail
