"""How the demo's transcript reads: labelled lines, wrapped at the terminal's width,
and a spinner while tools run. Off a terminal: the same lines, unwrapped, and no
spinner. Text from the model, tools and documents is shown escaped, never
interpreted (`agent.terminal.safe`).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import unicodedata
from typing import TextIO

from .terminal import safe

LABEL = 10
"""Columns of the label ("tool", "model") before each line's text."""
_FRAMES = "|/-\\"


def columns(text: str) -> int:
    """How many terminal columns `text` (already `safe`) takes."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def fit(text: str, width: int) -> str:
    """The start of `text` that takes at most `width` columns (at least one char)."""
    out, used = "", 0
    for ch in text:
        size = columns(ch)
        if used + size > width and out:
            break
        out, used = out + ch, used + size
    return out


def wrap(text: str, width: int, head: str = "") -> list[str]:
    """Lines of at most `width` columns: the first starts with `head`, the others are
    indented as far (or not at all on a narrow terminal); a word longer than a line
    is cut where the line ends."""
    indent = columns(head) if columns(head) + 10 <= width else 0
    if not indent and head:
        head = head.rstrip() + " "
    room = max(width, 2)
    lines: list[str] = []
    line, used, empty = head, columns(head), True
    for word in (w for w in text.split(" ") if w):
        size = columns(word)
        if not empty and used + 1 + size <= room:
            line, used = f"{line} {word}", used + 1 + size
            continue
        if not empty or used >= room:
            lines.append(line.rstrip())
            line, used = " " * indent, indent
        while used + size > room:
            piece = fit(word, room - used)
            lines.append(line + piece)
            word, size = word[len(piece) :], size - columns(piece)
            line, used = " " * indent, indent
        line, used, empty = line + word, used + size, False
    lines.append(line.rstrip())
    return lines


class DemoView:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._stop = threading.Event()
        self._spinner: threading.Thread | None = None

    def width(self) -> int | None:
        if not self.tty:
            return None
        try:
            # 0: a terminal that never had its size set (a bare pty), not one column
            return os.get_terminal_size(self.out.fileno()).columns or 80
        except OSError:
            return 80

    def say(self, label: str, text: str) -> None:
        """One labelled line of the transcript; `text` is escaped here."""
        self.halt()
        head = f"{label:<{LABEL - 1}} " if label else ""
        width = self.width()
        lines = [head + safe(text)] if width is None else wrap(safe(text), width, head)
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def plain(self, text: str = "") -> None:
        """The demo's own words (not from a model, a tool or a document)."""
        self.halt()
        width = self.width()
        for paragraph in text.split("\n"):
            lines = [paragraph] if width is None else wrap(paragraph, width)
            self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def spin(self, what: str) -> None:
        """A spinner with the time elapsed, until the next line is written."""
        self.halt()
        if not self.tty:
            return
        self._stop.clear()
        started = time.monotonic()
        label = safe(what)

        def run() -> None:
            # Blanked with spaces, not an erase sequence: nothing the demo writes holds
            # an ESC (as in agent/progress.py).
            shown = 0
            for frame in itertools.cycle(_FRAMES):
                text = f"{frame} {label} ({time.monotonic() - started:.1f} s)"
                text = fit(text, (self.width() or 80) - 1)
                self.out.write(f"\r{text}{' ' * max(shown - columns(text), 0)}")
                self.out.flush()
                shown = max(shown, columns(text))
                if self._stop.wait(0.1):
                    break
            self.out.write(f"\r{' ' * shown}\r")
            self.out.flush()

        self._spinner = threading.Thread(target=run, daemon=True, name="demo-spinner")
        self._spinner.start()

    def halt(self) -> None:
        if self._spinner is not None:
            self._stop.set()
            self._spinner.join()
            self._spinner = None
