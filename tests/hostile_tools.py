"""Tools that misbehave on purpose, each in one way (pebble's `suicide_function`, typed).

Loaded by tests with `Registry.load(<this file>)`; they run in real workers.
"""

from __future__ import annotations

import ctypes
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
    """Allocate memory until something stops it."""
    hoard = []
    while True:
        hoard.append(bytearray(64 * 1024 * 1024))


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
    import json

    body = json.dumps({"type": "result", "ok": True, "output": "x" * chars}).encode()
    os.write(3, len(body).to_bytes(4, "big") + body)
    time.sleep(3600)
    return ""


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
