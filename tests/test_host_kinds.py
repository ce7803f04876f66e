"""What `doctor` says, what strict refuses and what best-effort runs with, on hosts
that forbid what the sandbox builds on: Docker's defaults, emulated here for real
(`tests/host_emulation.py`: Docker's capabilities, moby's seccomp rules for
namespaces), and the sysctls of Ubuntu and Debian, read from a proc tree of the
test's own. A host whose user.max_user_namespaces is 0 is emulated for a normal user
in `tests/test_as_normal_user.py`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import _userns

ROOT = Path(__file__).resolve().parent.parent
EMULATE = str(Path(__file__).with_name("host_emulation.py"))
DOCTOR = [os.path.join(os.path.dirname(sys.executable), "sandboxed-agent"), "doctor"]
TRY_BOTH_MODES = """
import json, warnings
from sandbox import IsolationWarning, Pool, SandboxUnavailable
seen = {}
try:
    Pool(size=1, isolation="strict")
except SandboxUnavailable as exc:
    seen["strict"] = str(exc)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Pool(size=1) as pool:
        seen["result"] = pool.call("calculate", {"expression": "6*7"}).output
        seen["again"] = pool.call("calculate", {"expression": "1+1"}).output
seen["warnings"] = [str(w.message) for w in caught if w.category is IsolationWarning]
print(json.dumps(seen))
"""


def emulated(kind: str, command: list[str]) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("needs root: this emulates a container's root")
    if kind == "docker-default" and platform.machine() != "x86_64":
        pytest.skip("the emulated seccomp profile is written for x86_64")  # pragma: no cover
    proc = subprocess.run(
        [sys.executable, EMULATE, kind, "--", *command],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def layer_lines(output: str) -> dict[str, str]:
    lines = {}
    for line in output.splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) == 3 and fields[0] in ("active", "UNAVAILABLE", "off", "standby"):
            lines[fields[1]] = line.strip()
    return lines


def test_docker_defaults_are_named_with_the_flags_to_add() -> None:
    lines = layer_lines(emulated("docker-default", DOCTOR).stdout)
    print("\n".join(lines.values()))
    line = lines["user_namespace"]
    assert line.startswith("UNAVAILABLE"), line
    for said in (
        "a seccomp filter refuses unshare, and root has no CAP_SYS_ADMIN (Docker's defaults)",
        "--security-opt seccomp=unconfined",
        "--cap-add SYS_ADMIN",
    ):
        assert said in line, line
    for name in ("pid_namespace", "mount_namespace", "bind_mounts"):
        assert lines[name].startswith("UNAVAILABLE"), lines[name]
    # What is there still holds: the filter and Landlock need no namespace.
    for name in ("seccomp", "landlock", "capabilities", "no_new_privs"):
        assert lines[name].startswith("active"), lines[name]


def test_under_docker_defaults_strict_refuses_and_best_effort_warns_once() -> None:
    seen = json.loads(emulated("docker-default", [sys.executable, "-c", TRY_BOTH_MODES]).stdout)
    assert "isolation is strict and these layers are missing: user_namespace (" in seen["strict"]
    assert "--security-opt seccomp=unconfined" in seen["strict"]
    assert (seen["result"], seen["again"]) == ("42", "2")
    assert len(seen["warnings"]) == 1, seen["warnings"]
    assert seen["warnings"][0].startswith("sandbox layers unavailable here: user_namespace, ")


def test_docker_without_its_seccomp_filter_gets_the_namespaces_through_a_user_namespace() -> None:
    """`--security-opt seccomp=unconfined` alone: root still has no CAP_SYS_ADMIN, so
    the zygote makes a user namespace of its own, as for a normal user; Docker leaves
    it CAP_SETUID, CAP_SETGID and CAP_SETFCAP, so a child left outside maps the
    workers' uid block too, and they run as uids of their own, as root's do."""
    proc = emulated("docker-seccomp-unconfined", DOCTOR)
    lines = layer_lines(proc.stdout)
    print("\n".join(lines.values()))
    assert lines["user_namespace"].startswith("active       user_namespace     root without CAP")
    assert "uids 0, 65534, 1000000000+ mapped to themselves" in lines["user_namespace"]
    missing = [line for line in lines.values() if not line.startswith("active")]
    assert not missing, missing
    assert lines["unprivileged_uid"].endswith("this pool's block)"), lines["unprivileged_uid"]
    assert "uid/gid                  1000" in proc.stdout, proc.stdout
    for said in ("capabilities             0000000000000000", "read /etc/shadow         denied"):
        assert said in proc.stdout, proc.stdout
    assert "write /tmp               denied" in proc.stdout


def test_docker_with_the_readmes_flags_gets_every_layer() -> None:
    lines = layer_lines(emulated("docker-flags", DOCTOR).stdout)
    print("\n".join(lines.values()))
    assert lines["user_namespace"].startswith("standby"), lines["user_namespace"]
    missing = [line for line in lines.values() if line.startswith("UNAVAILABLE")]
    assert not missing, missing


@pytest.mark.parametrize(
    ("sysctl", "value", "said"),
    [
        (
            "kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "kernel.apparmor_restrict_unprivileged_userns = 1 (Ubuntu 23.10+): add an "
            "AppArmor profile",
        ),
        (
            "kernel/unprivileged_userns_clone",
            "0",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ),
        ("user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    ],
)
def test_the_sysctl_that_forbids_user_namespaces_is_named(
    tmp_path: Path, sysctl: str, value: str, said: str
) -> None:
    """This kernel has no AppArmor and no Debian sysctl: their files are read from a
    proc tree of the test's own, as the kernel would show them."""
    (tmp_path / "sys" / sysctl).parent.mkdir(parents=True)
    (tmp_path / "sys" / sysctl).write_text(f"{value}\n")
    why = _userns.why_refused("uid_map: Permission denied", str(tmp_path), str(tmp_path))
    assert why.startswith("uid_map: Permission denied: ") and said in why, why
    (tmp_path / "sys" / sysctl).write_text("1\n" if value == "0" else "0\n")  # allowed
    assert _userns.why_refused("boom", str(tmp_path), str(tmp_path)) == "boom"
    (tmp_path / ".dockerenv").touch()  # a container that refuses without a filter of its own
    assert "boom: the container refuses it" in _userns.why_refused(
        "boom", str(tmp_path), str(tmp_path)
    )
