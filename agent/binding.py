"""A tool call's arguments, parsed once, in the one form that is shown, hashed and run.

    bound = bind(spec, '{"order_id": "12345", "amount": 89.99}')
    bound.args      # {'amount': 89.99, 'order_id': '12345'}: the dict the pool gets
    bound.sha256    # of bound.canonical, named by the approval and the trace

What a person approves must be what runs. So the model's text is read once, strictly
(a repeated key is `bad_arguments`, not its last value), validated once, and from then
on only the validated dict moves: into the approval prompt, the pool, the trace and
the checkpoint. The hash is of its canonical JSON (keys sorted, no spaces, ASCII with
`\\u` escapes), so anyone can recompute it from the trace's `arguments`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tools import ArgumentError, ToolSpec

from .terminal import safe


@dataclass(frozen=True)
class BoundCall:
    tool: str
    args: dict[str, Any]
    """The validated arguments: the object that runs."""
    canonical: str
    """`args` as canonical JSON: what the trace records."""
    sha256: str
    """Of `canonical`'s bytes."""
    repairs: tuple[str, ...] = ()
    """Slips in the model's arguments that were fixed or coerced (`agent.repair`)."""
    model_arguments: str | None = None
    """The model's own text, when `repairs` changed anything."""


def canonical_json(args: Mapping[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def bind(spec: ToolSpec, arguments: Mapping[str, Any] | str | None) -> BoundCall:
    """Parse and validate once; `ArgumentError` says what is wrong.

    The pool validates what it is given again (it also serves callers that skip the
    agent); validated values must come back unchanged from that, or what runs could
    differ from what was shown."""
    args = spec.validate(arguments)
    canonical = canonical_json(args)
    again = canonical_json(spec.validate(args))
    if again != canonical:
        raise ArgumentError(
            f"invalid arguments for {spec.name}: they validate to {canonical} and then to "
            f"{again}, so what runs could differ from what is approved"
        )
    return BoundCall(spec.name, args, canonical, hashlib.sha256(canonical.encode()).hexdigest())


def argument_lines(args: Mapping[str, Any]) -> list[str]:
    """One key per line, each value whole as JSON (nested objects one key per line
    too), every character a terminal could act on escaped. A value with characters
    beyond ASCII is shown a second time in ASCII, so look-alike letters and combining
    marks (a `1` with U+0336 drawn through it) cannot pass for what they are not."""
    if not args:
        return ["(no arguments)"]
    width = max(len(safe(key)) for key in args)
    lines = []
    for key in sorted(args):
        value = args[key]
        shown = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
        first, *rest = shown.split("\n")
        size = ""
        if isinstance(value, str) and len(value) > 80:
            size = f"  ({len(value):,} characters, all shown)"
        lines.append(f"{safe(key):<{width}} = {safe(first)}{size if not rest else ''}")
        lines += [f"{'':<{width}}   {safe(line)}" for line in rest]
        if not shown.isascii():
            plain = json.dumps(value, sort_keys=True, separators=(",", ":"))
            lines.append(f"{'':<{width}}   (in ASCII: {plain})")
    return lines
