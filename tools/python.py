"""`run_python(code)`: the model's Python, run in a fresh worker under the tool's policy.

Offered only when asked for (`--tools tools.python`, or `load_tools = ["tools.python"]`
in a policy). The code is compiled and run here, inside the worker the pool forked for
this one call, never in the orchestrator: the walls are the sandbox's (its own root,
no network, rlimits, cgroups, seccomp), not a restricted interpreter, so nothing in
the code needs to be refused. The worker and its directory are thrown away after it.

What comes back is capped: the start of stdout, the end of stderr (a traceback is
there), the repr of the last expression's value, and the exception's one-line summary.
A caller that keeps state between calls (the smolagents executor) passes it in the
settings and gets it back; see `tools.python_state`.
"""

from __future__ import annotations

import ast
import builtins
import io
import linecache
import sys
import traceback
from types import TracebackType
from typing import Any

from . import context, python_state
from .registry import tool

FILENAME = "<code>"
STDOUT_CHARS = 8000
STDERR_CHARS = 2000
VALUE_CHARS = 2000
MAX_CODE_CHARS = 100_000


class _Head(io.TextIOBase):
    """Keeps the first `cap` characters written and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap, self.total = cap, 0
        self.kept: list[str] = []
        self._room = cap

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.total += len(text)
        if self._room > 0:
            self.kept.append(text[: self._room])
            self._room -= len(self.kept[-1])
        return len(text)

    def text(self) -> str:
        shown = "".join(self.kept)
        if self.total > len(shown):
            shown += f"\n[truncated: showing the first {len(shown)} of {self.total} characters]"
        return _valid(shown)


class _Tail(_Head):
    """Keeps the last `cap` characters written."""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.total += len(text)
        self.kept.append(text)
        self._room -= len(text)  # here: how far past the cap the kept pieces may grow
        if self._room < -self.cap:
            self.kept = ["".join(self.kept)[-self.cap :]]
            self._room = self.cap - len(self.kept[0])
        return len(text)

    def text(self) -> str:
        shown = "".join(self.kept)[-self.cap :] if self.cap else ""
        if self.total > len(shown):
            shown = (
                f"[truncated: showing the last {len(shown)} of {self.total} characters]\n" + shown
            )
        return _valid(shown)


class FinalAnswer(BaseException):
    """Raised by `final_answer(value)` in state-keeping runs: the code is done."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def _final_answer(answer: Any) -> None:
    raise FinalAnswer(answer)


@tool(fresh=True)
def run_python(code: str) -> dict[str, Any]:
    """Run Python 3 code in a fresh, isolated sandbox and see what it printed and the
    value of its last expression. Each call starts from nothing: define and import in
    the same code everything it uses. No network unless its policy allows it; files
    written go away after the call.

    Args:
        code: Python source, e.g. "import math\\nprint(math.pi)\\nsum(range(10))".
    """
    if len(code) > MAX_CODE_CHARS:
        raise ValueError(f"the code has {len(code)} characters; the limit is {MAX_CODE_CHARS}")
    out = _Head(int(context.setting("python_stdout_chars", STDOUT_CHARS)))
    err = _Tail(int(context.setting("python_stderr_chars", STDERR_CHARS)))
    keep_state = bool(context.setting(python_state.KEEP, False))
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    notes: list[str] = []
    if keep_state:
        notes += python_state.restore(namespace, context.setting(python_state.STATE))
        variables = context.setting(python_state.VARIABLES)
        if isinstance(variables, dict):
            namespace.update(variables)
        namespace["final_answer"] = _final_answer
    value: Any = None
    has_value = final = False
    error = None
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        body, last = _compile(code)
        exec(body, namespace)  # in this worker only: the sandbox is the wall
        if last is not None:
            value, has_value = eval(last, namespace), True
    except FinalAnswer as answer:
        value, has_value, final = answer.value, True, True
    except BaseException as exc:  # the code's own failure is the model's observation
        if not keep_state:
            # A memory bomb stopped by its limit still holds what it took: let it go
            # before the traceback is formatted, or that fails too.
            namespace.clear()
        error = _summary(exc)
        _print_traceback(exc, err)
    finally:
        sys.stdout, sys.stderr = saved
    result: dict[str, Any] = {
        "stdout": out.text(),
        "stderr": err.text(),
        "value": _repr(value, int(context.setting("python_value_chars", VALUE_CHARS)))
        if has_value and (value is not None or final)
        else None,
        "error": error,
    }
    if keep_state:
        result["final"] = final
        result["final_value"] = python_state.plain(value) if final else None
        state, dropped = python_state.save(namespace)
        result["state"] = state
        result["notes"] = notes + dropped
    return result


def _compile(code: str) -> tuple[Any, Any]:
    """The code as a module, and its last statement as an expression when it is one."""
    linecache.cache[FILENAME] = (len(code), None, code.splitlines(True), FILENAME)
    tree = ast.parse(code, FILENAME, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), FILENAME, "eval")
    return compile(tree, FILENAME, "exec"), last


def _summary(exc: BaseException) -> str:
    try:
        lines = traceback.format_exception_only(type(exc), exc)
        return _valid(lines[-1].strip())[:VALUE_CHARS]
    except BaseException:
        return type(exc).__name__


def _print_traceback(exc: BaseException, err: _Tail) -> None:
    """The traceback from the code's own frames on (not this module's)."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
        tb = tb.tb_next
    try:
        err.write("".join(traceback.format_exception(type(exc), exc, tb)))
    except BaseException:
        err.write(f"{type(exc).__name__} (its traceback could not be formatted)\n")


def _repr(value: Any, cap: int) -> str:
    try:
        text = repr(value)
        if not isinstance(text, str):
            return f"(repr of a {type(value).__name__} returned no str)"
        text = str.__str__(text)
    except BaseException as exc:
        return f"(repr of a {type(value).__name__} raised {_summary(exc)})"
    if len(text) > cap:
        text = text[:cap] + f"... [{len(text)} characters]"
    return _valid(text)


def _valid(text: str) -> str:
    """Text that encodes as UTF-8 (a lone surrogate is shown as an escape)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
