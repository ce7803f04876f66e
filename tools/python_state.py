"""The variables of one `run_python` call, carried to the next one's fresh worker.

A code agent (smolagents' `CodeAgent`) expects what one step defined to be there in the
next. Each call runs in a new worker, so the state travels: at the end of a call the
worker pickles (with dill, which pickles functions and classes the code defined by
value) every variable it can, as opaque base64 text; the caller hands that text back
in the next call's settings, and only the next worker unpickles it. The orchestrator
never unpickles anything: to it the state is a string.

Modules are kept by name and imported again. A value that cannot be pickled (a
generator, an open file) is dropped, and the call's notes say which.
"""

from __future__ import annotations

import base64
import importlib
import json
import types
from typing import Any

STATE = "python_state"
"""The settings key a caller puts the previous call's state under."""
KEEP = "python_keep_state"
"""The settings key that asks a call to send its state back (and offer final_answer)."""
VARIABLES = "python_variables"
"""The settings key for JSON variables the caller adds before the code runs."""
MAX_STATE_CHARS = 4_000_000
_SKIP = {"__builtins__", "__name__", "final_answer"}


def save(namespace: dict[str, Any]) -> tuple[str, list[str]]:
    """The namespace as base64 text, and a note for each variable left out."""
    import dill

    modules: dict[str, str] = {}
    values: dict[str, Any] = {}
    dropped = []
    size = 0
    for name, value in namespace.items():
        if name in _SKIP:
            continue
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        try:
            data = dill.dumps(value, recurse=True)
        except BaseException:
            dropped.append(f"{name} (a {type(value).__name__}) was not kept: it cannot be pickled")
            continue
        if size + len(data) > MAX_STATE_CHARS * 3 // 4:
            dropped.append(
                f"{name} was not kept: the state would pass {MAX_STATE_CHARS} characters"
            )
            continue
        size += len(data)
        values[name] = value
    # Pickled together, so that what two variables share (an instance and its class)
    # is one object again after the restore.
    try:
        blob = dill.dumps((modules, values), recurse=True)
    except BaseException as exc:
        dropped.append(f"no variable was kept: {type(exc).__name__}: {exc}")
        blob = dill.dumps((modules, {}))
    return base64.b64encode(blob).decode("ascii"), dropped


def restore(namespace: dict[str, Any], state: Any) -> list[str]:
    """Put a saved state's variables into `namespace`; a note for each that failed."""
    if not isinstance(state, str) or not state:
        return []
    import dill

    notes = []
    try:
        modules, values = dill.loads(base64.b64decode(state))
    except BaseException as exc:
        return [f"the earlier variables could not be restored ({type(exc).__name__}: {exc})"]
    for name, module in modules.items():
        try:
            namespace[name] = importlib.import_module(module)
        except BaseException as exc:
            notes.append(f"{name} could not be imported again ({type(exc).__name__}: {exc})")
    for name, value in values.items():
        try:
            namespace[name] = _rehome(value, namespace)
        except BaseException:  # a class that refuses new methods keeps its old globals
            namespace[name] = value
    return notes


def _rehome(value: Any, namespace: dict[str, Any]) -> Any:
    """A function or class the code defined reads its globals from `namespace` again
    (unpickled, it would hold a copy of the old ones, blind to later assignments)."""
    if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
        moved = types.FunctionType(
            value.__code__, namespace, value.__name__, value.__defaults__, value.__closure__
        )
        moved.__kwdefaults__ = value.__kwdefaults__
        moved.__dict__.update(value.__dict__)
        moved.__qualname__ = value.__qualname__
        return moved
    if isinstance(value, type) and value.__module__ == "__main__":
        for attr, member in list(vars(value).items()):
            if isinstance(member, types.FunctionType):
                setattr(value, attr, _rehome(member, namespace))
    return value


def plain(value: Any) -> Any:
    """`value` as JSON data when it is that already, else its repr: what the caller
    receives as a final answer (never a pickle)."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError, RecursionError):
        try:
            return str.__str__(repr(value))
        except BaseException:
            return f"(a {type(value).__name__} that cannot be shown)"
