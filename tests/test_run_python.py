"""`run_python`: the model's code in a fresh worker, where the classic escapes of
in-process Python sandboxes have nothing to reach.

smolagents' local executor filters what the code may touch inside the interpreter that
runs the agent; its escapes (CVE-2025-5120: reaching `os` through modules it allowed;
CVE-2025-9959: dunder walks it did not validate; the ctypes bypass) get back to the real
`os`. Here nothing is filtered: every route to `os`, libc or a shell works, and each
arrives inside the jail, with no secret, network or process of the host to find.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import agent_cli, shared, sleepers, unique_marker

import tools.python
from agent.audit import read_trace
from agent.cli import UsageError, load_setup
from agent.replay import ScriptedModelServer, call, say
from policies import parse_policy
from sandbox import Pool
from tools import Registry

POLICY = """
load_tools = ["tools.python"]
[tools.run_python]
timeout_s = 3
cpu_s = 2
memory_mb = 128
max_processes = 8
trusted = true       # asked for, and overruled: run_python never reuses a worker
"""


@pytest.fixture(scope="module")
def docs() -> Iterator[Path]:
    """The one directory of the host the policy lets the code read, where workers of
    any uid may pass (pytest's own tmp is private to root), with a file beside it."""
    base = Path(tempfile.mkdtemp(prefix="sandboxed-agent-docs-"))
    base.chmod(0o711)
    (base / "beside.txt").write_text("not listed")
    root = base / "docs"
    root.mkdir(mode=0o755)
    (root / "notes.txt").write_text("listed in the policy")
    yield root
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def pool(docs: Path) -> Iterator[Pool]:
    registry = Registry.default()
    registry.load("tools.python")
    policy = parse_policy(POLICY + f"root = {str(docs)!r}\n", "test.toml", Path.cwd())
    with Pool(policy, registry=registry, size=2, **policy.pool_options()) as p:
        yield shared(p)


def run(pool: Pool, code: str) -> dict[str, Any]:
    result = pool.call("run_python", {"code": textwrap.dedent(code)})
    assert result.ok, result.error
    assert result.output is not None
    out: dict[str, Any] = json.loads(result.output)
    return out


def test_stdout_stderr_and_the_last_value_come_back_capped(pool: Pool) -> None:
    out = run(pool, "import sys\nprint('x' * 20000)\nprint('e' * 5000, file=sys.stderr)\n6 * 7")
    assert out["value"] == "42" and out["error"] is None
    assert out["stdout"].startswith("x" * 8000)
    assert "[truncated: showing the first 8000 of 20001 characters]" in out["stdout"]
    assert out["stderr"].endswith("e" * 1999 + "\n") and "showing the last 2000" in out["stderr"]
    long = run(pool, "list(range(100000))")
    assert len(long["value"]) < 2100 and long["value"].endswith("characters]")


def test_the_codes_exception_is_an_observation_with_its_traceback(pool: Pool) -> None:
    out = run(pool, "print('before')\ndef f():\n    return 1 / 0\nf()")
    assert out["stdout"] == "before\n"
    assert out["error"] == "ZeroDivisionError: division by zero"
    assert 'File "<code>", line 3, in f' in out["stderr"]
    assert "tools/python.py" not in out["stderr"]  # only the code's own frames
    bad = run(pool, "def (")
    assert bad["error"].startswith("SyntaxError")
    assert run(pool, "raise SystemExit(3)")["error"] == "SystemExit: 3"


# Each route reaches the real `os` (or libc, or a shell) as the escapes do, then tries
# the host: /etc/shadow, a secret file the orchestrator can read, the network, the
# orchestrator and its zygote. It reports what happened; the test checks from outside.
ATTACK = """
import os as _os0
{route}
results = {{}}
def attempt(name, fn):
    try:
        results[name] = "reached: " + repr(fn())[:200]
    except BaseException as exc:
        results[name] = "failed: " + type(exc).__name__
attempt("shadow", lambda: read("/etc/shadow"))
attempt("secret", lambda: read({secret!r}))
attempt("listdir", lambda: os.listdir({secret_dir!r}))
def net():
    s = socket.socket()
    s.settimeout(1)
    s.connect(("127.0.0.1", {port}))
    return "connected"
attempt("network", net)
attempt("kill orchestrator", lambda: os.kill({orchestrator}, 9))
attempt("kill zygote", lambda: os.kill({zygote}, 9))
results
"""

ROUTES = {
    "import os": "import os, socket\nread = lambda p: open(p).read()",
    # CVE-2025-9959's kind: walk from a literal to a class whose module holds builtins.
    "__subclasses__ walk": textwrap.dedent("""
        walk = ().__class__.__base__.__subclasses__()
        cw = [c for c in walk if c.__name__ == "catch_warnings"][0]
        b = cw()._module.__builtins__
        os = b["__import__"]("os")
        socket = b["__import__"]("socket")
        read = lambda p: b["open"](p).read()
    """),
    # CVE-2025-5120's kind: `os` reached through a module that was allowed.
    "os via an allowed module": textwrap.dedent("""
        import random, socket
        os = random._os
        read = lambda p: os.read(os.open(p, os.O_RDONLY), 4096)
    """),
    "ctypes into libc": textwrap.dedent("""
        import ctypes, socket
        libc = ctypes.CDLL(None, use_errno=True)
        class _Os:
            def listdir(self, p):
                d = libc.opendir(p.encode())
                if not d:
                    raise OSError(ctypes.get_errno(), "opendir")
                return "opened"
            def kill(self, pid, sig):
                if libc.kill(pid, sig) != 0:
                    raise OSError(ctypes.get_errno(), "kill")
        os = _Os()
        def read(p):
            fd = libc.open(p.encode(), 0)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "open")
            buf = ctypes.create_string_buffer(4096)
            return buf.raw[: libc.read(fd, buf, 4096)]
    """),
    "os.system and a shell": textwrap.dedent("""
        import os, socket, subprocess
        def read(p):
            if os.system(f"cat {p} > /dev/null 2>&1") != 0:
                raise OSError("cat failed")
            return subprocess.run(["cat", p], capture_output=True, check=True).stdout
    """),
}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_to_os_arrives_inside_the_jail(
    pool: Pool, route: str, tmp_path: Path, listener: socket.socket
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("sk-host-secret-4419")
    code = ATTACK.format(
        route=ROUTES[route],
        secret=str(secret),
        secret_dir=str(tmp_path),
        port=listener.getsockname()[1],
        orchestrator=os.getpid(),
        zygote=pool.template_pid,
    )
    out = run(pool, code)
    assert out["error"] is None, out["stderr"]
    results = ast.literal_eval(out["value"])  # a literal, never code run here
    assert all(v.startswith("failed") for v in results.values()), results
    assert "sk-host-secret" not in json.dumps(out)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    os.kill(pool.template_pid, 0)  # the zygote is alive
    assert run(pool, "1 + 1")["value"] == "2"


def test_the_code_reads_what_the_policy_lists_and_nothing_beside_it(pool: Pool, docs: Path) -> None:
    out = run(
        pool,
        f"""
        import os
        def read(path):
            try:
                return open(path).read()
            except OSError as exc:
                return type(exc).__name__
        read({str(docs / "notes.txt")!r}), read({str(docs.parent / "beside.txt")!r})
        """,
    )
    assert out["value"] == "('listed in the policy', 'FileNotFoundError')"


def test_bombs_and_loops_are_contained_and_killed(pool: Pool) -> None:
    marker = unique_marker()
    loop = pool.call("run_python", {"code": "while True:\n    pass"})
    assert loop.error is not None and loop.error.kind in ("timeout", "cpu_limit"), loop
    forks = pool.call(
        "run_python",
        {
            "code": textwrap.dedent(f"""
                import os, subprocess
                subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
                while True:
                    try:
                        os.fork()
                    except OSError:
                        pass
            """)
        },
    )
    assert forks.error is not None and forks.error.kind in ("timeout", "cpu_limit"), forks
    assert sleepers(marker) == []
    # Stopped by its address-space limit (the code sees MemoryError), or, when memory
    # runs short around it first, killed by the kernel: contained either way.
    memory = pool.call(
        "run_python", {"code": "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))"}
    )
    if memory.ok:
        assert json.loads(memory.output or "")["error"] == "MemoryError"
    else:
        assert memory.error is not None and memory.error.kind == "memory_limit", memory
    # After all that, the pool still serves a call at once.
    assert run(pool, "sum(range(10))")["value"] == "45"


def test_each_call_is_fresh_and_leaves_nothing(pool: Pool) -> None:
    """Trusted in the policy, and still a new worker each time; nothing of a call (a
    file, a process, a changed module, a variable) is there for the next; and the code
    never ran in this process."""
    marker = unique_marker()
    step = textwrap.dedent(f"""
        import builtins, os, subprocess, sys
        seen = (os.listdir("."), hasattr(builtins, "LEFT"), "tools.python" in sys.modules
                and hasattr(sys.modules["tools.python"], "LEFT"), "x" in globals())
        builtins.LEFT = True
        if "tools.python" in sys.modules:
            sys.modules["tools.python"].LEFT = True
        x = 1
        open("left.txt", "w").write("x")
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        seen
    """)
    pids = set()
    for _ in range(20):
        result = pool.call("run_python", {"code": step})
        assert result.ok, result.error
        assert json.loads(result.output or "")["value"] == "([], False, False, False)"
        pids.add(result.worker_pid)
    assert len(pids) == 20
    assert not hasattr(tools.python, "LEFT")
    assert sleepers(marker) == []


def test_run_python_is_off_unless_asked_for(tmp_path: Path) -> None:
    default = agent_cli("tools", "--json", home=tmp_path)
    assert "run_python" not in default.stdout
    policy = tmp_path / "p.toml"
    policy.write_text("[tools.run_python]\ntimeout_s = 1\n")
    with pytest.raises(UsageError, match=r'load_tools = \["tools.python"\]'):
        load_setup([], str(policy))
    via_flag = agent_cli(
        "tool",
        "run_python",
        "--tools",
        "tools.python",
        "--args",
        '{"code": "2 ** 10"}',
        home=tmp_path,
    )
    assert via_flag.returncode == 0, via_flag.stderr
    assert json.loads(json.loads(via_flag.stdout)["output"])["value"] == "1024"


def test_the_agent_loop_sees_the_result(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('load_tools = ["tools.python"]\n')
    trace = tmp_path / "trace.jsonl"
    script = [call(("run_python", {"code": "print('hello')\n21 * 2"})), say("It is 42.")]
    with ScriptedModelServer(script) as server:
        proc = agent_cli(
            "run",
            "What is 21 * 2?",
            "--policy",
            str(policy),
            "--base-url",
            server.base_url,
            "--trace",
            str(trace),
            home=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    fed_back = json.loads(server.requests[1]["messages"][-1]["content"])
    assert fed_back["stdout"] == "hello\n" and fed_back["value"] == "42"
    calls = [e for e in read_trace(trace) if e["event"] == "tool_call"]
    assert [c["tool"] for c in calls] == ["run_python"] and calls[0]["ok"]
