"""Text that reaches a terminal: control characters are shown escaped, never obeyed.

Names and values read from a results folder (run folder names, settings keys, a checkpoint's run id, a
file's name in an error) can hold anything, terminal escape sequences included (``\\x1b]0;...\\x07`` sets
the window title, ``\\x1b[2J`` clears the screen). :func:`shown` writes every control character (C0 and
C1, DEL), bidirectional-override mark and undecodable byte of a file name as a visible escape
(``\\x1b``, ``\\u202e``, ``\\xff``). Every command prints through :func:`escaped_output`, which applies
it to all it writes to stdout and stderr; a line break and a tab are kept, and so is a carriage
return that begins a write (a progress bar redrawing its line).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_KEPT = "\n\t"


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (Python's surrogate escape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def shown(text: object, keep: str = _KEPT) -> str:
    """``text`` with every control character but those in ``keep`` written as a visible escape."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), str(text))


class EscapedStream:
    """A text stream that writes :func:`shown` text to ``stream``; everything else is the stream's own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        lead = "\r" if text.startswith("\r") else ""
        self.stream.write(lead + shown(text[len(lead):]))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """Within the block, ``sys.stdout`` and ``sys.stderr`` escape control characters (:class:`EscapedStream`)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if isinstance(s, EscapedStream) else EscapedStream(s) for s in saved)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
