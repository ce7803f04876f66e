"""Tools that misbehave on purpose, each in one way (pebble's `suicide_function`, typed).

Loaded by tests with `Registry.load(<this file>)`; they run in real workers.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

from tools import tool


@tool
def busy_loop() -> str:
    """Spin on the CPU forever."""
    while True:
        pass


@tool
def sleep_forever() -> str:
    """Sleep far past any deadline."""
    time.sleep(3600)
    return "woke up"


@tool
def blocking_read() -> str:
    """Block reading a pipe that nobody will ever write to."""
    r, _w = os.pipe()
    return os.read(r, 1).decode()


@tool
def read_stdin() -> str:
    """Read standard input to its end (it must be /dev/null: empty at once)."""
    return repr(sys.stdin.read())


@tool
def ignore_sigterm() -> str:
    """Ignore SIGTERM and sleep."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


@tool
def double_fork(marker: str, hang: bool) -> str:
    """Leave a grandchild behind: fork, setsid, fork again, exec a long sleep.

    Args:
        marker: A unique sleep length, so the test can find the grandchild.
        hang: Whether this call then hangs (killed at the deadline) or returns at once.
    """
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execvp("sleep", ["sleep", marker])
        os._exit(0)
    os.waitpid(pid, 0)
    if hang:
        time.sleep(3600)
    return "grandchild left behind"


@tool
def spawn_helper(marker: str) -> str:
    """Start a helper process in a new session and return while it runs.

    Args:
        marker: A unique sleep length, so the test can find the helper.
    """
    subprocess.Popen(["sleep", marker], start_new_session=True)
    return "helper started"


@tool
def fork_bomb() -> str:
    """Fork without end; every child does the same."""
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)


@tool
def memory_bomb() -> str:
    """Allocate memory until something stops it, 8 MiB at a time."""
    hoard = []
    while True:
        hoard.append(bytearray(8 * 1024 * 1024))


@tool
def huge_file() -> str:
    """Write a 2 GiB file into the working directory."""
    block = b"x" * (1024 * 1024)
    with open("big.bin", "wb") as f:
        for _ in range(2048):
            f.write(block)
    return "wrote 2 GiB"


@tool
def many_files() -> str:
    """Open ten thousand files and keep them open."""
    handles = [open(os.devnull) for _ in range(10_000)]  # noqa: SIM115
    return f"opened {len(handles)}"


@tool
def huge_return(chars: int) -> str:
    """Return a string of the given length.

    Args:
        chars: How many characters to return.
    """
    return "x" * chars


@tool
def smuggle_frame() -> str:
    """Write a giant frame header straight into the worker's socket, then hang."""
    os.write(3, (2**31).to_bytes(4, "big"))
    time.sleep(3600)
    return ""


@tool
def garbage_frame() -> str:
    """Write a well-framed but meaningless answer into the worker's socket, then hang."""
    os.write(3, (5).to_bytes(4, "big") + b"hello")
    time.sleep(3600)
    return ""


@tool
def exit_now(code: int) -> str:
    """Exit the worker at once, without cleanup.

    Args:
        code: The exit status.
    """
    os._exit(code)


@tool
def segfault() -> str:
    """Read address 0 through ctypes."""
    return str(ctypes.string_at(0))


@tool
def raise_error(message: str) -> str:
    """Raise a RuntimeError.

    Args:
        message: Its message.
    """
    raise RuntimeError(message)


@tool
def return_object() -> object:
    """Return something that is not JSON."""
    return object()


@tool
def dump_environment() -> dict:
    """Everything a tool could learn about the environment it was given."""
    with open("/proc/self/environ", "rb") as f:
        initial = f.read().decode(errors="replace")
    parent = ""
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            parent = f.read().decode(errors="replace")
    except OSError:
        pass
    return {"environ": dict(os.environ), "initial": initial, "parent": parent}


@tool
def where_am_i() -> dict:
    """The worker's working directory, its contents, and what fds 0-2 are."""
    print("hello from the tool")
    return {
        "cwd": os.getcwd(),
        "entries": sorted(os.listdir(".")),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "sid_is_pid": os.getsid(0) == os.getpid(),
        "pid": os.getpid(),
    }


@tool
def write_in_workdir(name: str) -> str:
    """Create a file in the working directory and report what was already there.

    Args:
        name: File to create.
    """
    before = sorted(os.listdir("."))
    with open(name, "w") as f:
        f.write("data")
    return ",".join(before)


@tool
def forged_result(chars: int) -> str:
    """Bypass the worker: write a well-formed 'ok' frame of any length, then hang.

    Args:
        chars: Length of the forged output.
    """
    _write_frame({"ok": True, "output": "x" * chars})
    time.sleep(3600)
    return ""


def _current_call_id() -> str:
    """What the worker's own stack holds: a tool runs in its process, so it can read it."""
    frame = sys._getframe()
    while frame is not None:
        call = frame.f_locals.get("call")
        if type(call).__name__ == "Call":
            return call.id
        frame = frame.f_back
    raise LookupError("no call on the stack")


def _write_frame(fields: dict, call_id: str | None = None) -> None:
    import json

    frame = {"type": "result", "id": call_id or _current_call_id(), "reusable": True, **fields}
    body = json.dumps(frame).encode()
    os.write(3, len(body).to_bytes(4, "big") + body)


@tool
def extra_frame(text: str, own_id: bool) -> str:
    """Write a well-formed 'ok' frame with `text` to the socket, then return normally.

    Args:
        text: The forged output.
        own_id: Name this call's id (read from the worker's stack) or a made-up one.
    """
    _write_frame({"ok": True, "output": text}, None if own_id else "0" * 32)
    return "the real answer"


@tool
def late_frame(text: str) -> str:
    """Leave a child and a thread behind, each writing a forged 'ok' frame a moment
    after this call returns (for the next call).

    Args:
        text: The forged output.
    """
    import threading

    def write_later() -> None:
        time.sleep(0.3)
        for guess in ("0" * 32, "f" * 32):
            _write_frame({"ok": True, "output": text}, guess)

    if os.fork() == 0:
        write_later()
        os._exit(0)
    threading.Thread(target=write_later, daemon=True).start()
    return "returned"


@tool
def leave_thread() -> str:
    """Start a thread that outlives the call."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    return "thread left"


@tool
def raise_limits() -> dict:
    """Try to raise every rlimit, soft and hard, to what it was before; say what holds."""
    import resource

    seen = {}
    for name in ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CPU"):
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
        try:
            resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
        try:
            resource.setrlimit(which, (hard, hard))
        except (ValueError, OSError):
            pass
        seen[name] = [soft, hard, *resource.getrlimit(which)]
    return seen


@tool
def lock_workdir(outside: str) -> str:
    """Leave things a naive clean-up cannot remove or would follow: a 0500 directory with
    a file in it, a 0000 directory, and links to `outside` (a file and its directory).

    Args:
        outside: A host path the links point to.
    """
    os.makedirs("locked/inner")
    with open("locked/inner/file", "w") as f:
        f.write("x")
    os.chmod("locked/inner", 0o500)
    os.chmod("locked", 0o500)
    os.mkdir("closed")
    os.chmod("closed", 0)
    os.symlink(outside, "link-to-file")
    os.symlink(os.path.dirname(outside), "link-to-dir")
    os.chmod(".", 0o500)
    return ",".join(sorted(os.listdir(".")))


@tool
def net_interfaces() -> list[str]:
    """The network interfaces this worker sees, and its address-space limit."""
    import resource

    with open("/proc/self/net/dev") as f:
        names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    return [*sorted(names), str(resource.getrlimit(resource.RLIMIT_AS)[1])]


@tool
def slow_stamp(seconds: float) -> dict:
    """Sleep, and say when it started and ended (to show calls overlapping).

    Args:
        seconds: How long to sleep.
    """
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time(), "pid": os.getpid()}


@tool
def show_settings() -> str:
    """The policy's settings for this tool, as the worker sees them (JSON)."""
    from tools.context import current

    return json.dumps(current().settings, sort_keys=True)


@tool
def echo_text(text: str, chatter: str = "") -> str:
    """Return the text as given; print `chatter` to stdout first when there is some.

    Args:
        text: Any text.
        chatter: Printed to the log.
    """
    if chatter:
        print(chatter)
    return text


@tool
def lone_surrogate() -> str:
    """Return a str that is not valid Unicode."""
    return "bad \udc80 text"


@tool
def claim_kind(kind: str, then: str) -> str:
    """Answer this call with a failure of any kind, written straight to the socket
    with the call's own id.

    Args:
        kind: The kind to claim (timeout, denied, unknown_tool, memory_limit, ...).
        then: "return" (the real answer follows) or "hang".
    """
    _write_frame({"ok": False, "error": {"kind": kind, "message": f"claimed {kind}"}})
    if then == "hang":
        time.sleep(3600)
    return "the real answer"


@tool
def raise_memory_error() -> str:
    """Raise MemoryError without using any memory."""
    raise MemoryError("pretend")


class _Meta(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("no name either")


class _Nasty(Exception, metaclass=_Meta):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class _Evil(str):
    def __format__(self, spec: str) -> str:
        raise RuntimeError("format")

    def __len__(self) -> int:
        raise RuntimeError("len")


@tool
def odd_exception(how: str) -> str:
    """Raise an exception that is hard to describe.

    Args:
        how: str_raises, all_raise, str_subclass, surrogate, huge, exit, not_str.
    """
    if how == "str_raises":

        class StrRaises(Exception):
            def __str__(self) -> str:
                raise ValueError("nope")

        raise StrRaises()
    if how == "all_raise":
        raise _Nasty()
    if how == "str_subclass":

        class Sub(Exception):
            def __str__(self) -> str:
                return _Evil("evil text")

        raise Sub()
    if how == "not_str":

        class NotStr(Exception):
            def __str__(self) -> str:
                return 42  # type: ignore[return-value]

        raise NotStr()
    if how == "surrogate":
        raise ValueError("bad \udc80 text")
    if how == "huge":
        raise ValueError("y" * 10_000_000)
    if how == "exit":
        raise SystemExit(3)
    raise ValueError(how)


@tool
def busy_children(count: int, marker: str) -> str:
    """Fork `count` children that each spin on the CPU (ignoring SIGXCPU), and wait.

    Args:
        count: How many children.
        marker: A unique sleep length: each child first starts `sleep marker`, so the
            test can find what is left.
    """
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    for _ in range(count):
        if os.fork() == 0:
            subprocess.Popen(["sleep", marker], start_new_session=True)
            while True:
                pass
    while True:
        time.sleep(3600)


@tool
def fill_data(files: int, mb: int, sparse: bool = False) -> str:
    """Write `files` files of `mb` MiB each into the data_dir; say where writing stopped.

    Args:
        files: How many files.
        mb: Size of each, in MiB.
        sparse: Make each file sparse with truncate instead of writing it.
    """
    from tools import context

    block = b"d" * (1024 * 1024)
    written = 0
    for i in range(files):
        path = os.path.join(context.data_dir(), f"fill-{i}-{time.monotonic_ns()}.bin")
        try:
            with open(path, "wb") as f:
                if sparse:
                    f.truncate(mb * 1024 * 1024)
                for _ in range(0 if sparse else mb):
                    f.write(block)
                    f.flush()
                    written += 1
        except OSError as exc:
            return f"stopped after {written} MiB: {exc.strerror}"
    return f"wrote {written} MiB"
