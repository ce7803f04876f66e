"""Text from a model, a tool or a document, made safe to show a person.

    print(f"tool {safe(name)} {safe(arguments)}")   # one line, whatever they hold
    print(safe_text(answer))                        # keeps its lines, nothing else

A terminal acts on what it is sent: ESC starts CSI and OSC sequences (clear the
screen, set the title, OSC 52 writes the clipboard), C1 controls such as U+009B do
the same in UTF-8, CR rewrites a line, and bidi overrides (U+202A-202E, U+2066-2069)
and other invisible format characters make text read other than it is. Every such
character is shown as an escape (`\\x1b`, `\\u202e`), never sent.

The rule is Python's `str.isprintable()`: escaped are the Unicode categories Cc
(controls, C0 and C1), Cf (format: bidi, zero-width, tags), Cs (lone surrogates),
Co, Cn, Zl, Zp, and every space but U+0020. A backslash is left as it is: an escape
shown here and the same characters typed by a model look alike, and neither acts.
"""

from __future__ import annotations

import json
from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(text: object) -> str:
    """One line: every character a terminal could act on, newlines included, escaped."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def safe_text(text: object) -> str:
    """Many lines (an answer): newlines and tabs kept, CRLF read as a newline, every
    other character a terminal could act on escaped."""
    lines = str(text).replace("\r\n", "\n").split("\n")
    return "\n".join(
        line if line.isprintable() else "".join(_keep_tab(ch) for ch in line) for line in lines
    )


def _keep_tab(ch: str) -> str:
    return ch if ch == "\t" or ch.isprintable() else _escape(ch)


def ascii_json(value: Any) -> str:
    """One line of JSON in ASCII: every other character as a `\\u` escape, so the same
    value reads back from a pipe, and a terminal shown it has nothing to act on."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))
