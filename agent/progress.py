"""What a person watching sees while a run goes: a spinner while the model thinks,
each tool call with its outcome and duration, and the running cost."""

from __future__ import annotations

import itertools
import sys
import threading
from typing import Any, TextIO

from .terminal import safe


def describe_tool(outcome: Any) -> str:
    """One line, whatever the tool's name, arguments or output hold (`terminal.safe`)."""
    r = outcome.result
    if r.ok:
        text = " ".join((r.output or "").split())
        shown = text if len(text) <= 100 else text[:97] + "..."
        status = f"ok: {shown}"
    else:
        status = f"{r.error.kind}: {r.error.message}"
    approval = "" if outcome.approval == "not_required" else f" [{outcome.approval}]"
    return safe(
        f"{outcome.tool} {outcome.arguments} -> {status} ({r.duration_ms:.0f} ms){approval}"
    )


class LinePrinter:
    """Plain lines (for the demo's transcript and for logs)."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, kind: str, details: dict[str, Any]) -> None:
        if kind == "tool":
            print(f"tool      {describe_tool(details['outcome'])}", file=self.stream, flush=True)


class TerminalProgress:
    """On a TTY: a spinner on stderr while the model thinks."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.cost = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, kind: str, details: dict[str, Any]) -> None:
        if kind == "thinking":
            self._start(details["step"])
        elif kind == "model":
            self.cost = details["cost_usd"]
            self._halt()
        elif kind == "ended":  # a failed model call: its line must not follow the spinner's
            self._halt()
        elif kind == "tool":
            self._halt()
            print(f"  {describe_tool(details['outcome'])}", file=self.stream, flush=True)

    def _start(self, step: int) -> None:
        self._halt()
        self._stop.clear()

        def spin() -> None:
            shown = ""
            for frame in itertools.cycle("|/-\\"):
                shown = f"{frame} model thinking (step {step}, ${self.cost:.4f} so far)"
                self.stream.write(f"\r{shown}")
                self.stream.flush()
                if self._stop.wait(0.1):
                    break
            # Blanked with spaces, not an erase sequence: nothing written to the
            # terminal holds an ESC, so a test can check that none ever reaches it.
            self.stream.write("\r" + " " * len(shown) + "\r")
            self.stream.flush()

        self._thread = threading.Thread(target=spin, daemon=True)
        self._thread.start()

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self._halt()
