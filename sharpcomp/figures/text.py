"""Text that fits its place: titles and run names wrapped to a width in inches.

A run's folder name has no spaces (``batch=8,log_every=100,lr=0.05,seed=3``), so lines break at spaces
and after the commas, slashes and semicolons of such names, never inside mathtext (``$...$``) or an
equation reference (``(Eq. 28)``), and a piece longer than a line is cut.
"""

from __future__ import annotations

import re

# Characters of DejaVu Sans (matplotlib's default) per inch at 1 pt: its mean advance is about 0.58 em;
# 0.62 leaves a margin for wide glyphs.
_EM_FRACTION = 0.62


def chars_per_inch(fontsize: float) -> float:
    """About how many characters of ``fontsize`` points fit in an inch (an upper bound on their width)."""
    return 72 / (_EM_FRACTION * fontsize)


def chars_per_line(inches: float, fontsize: float) -> int:
    """About how many characters of ``fontsize`` points fit on a line ``inches`` wide."""
    return max(8, int(inches * chars_per_inch(fontsize)))


def wrap(text: str, inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``inches`` at ``fontsize`` (its own line breaks kept)."""
    width = chars_per_line(inches, fontsize)
    return "\n".join(line for part in text.split("\n") for line in _wrap_line(part, width))


def _wrap_line(text: str, width: int) -> list[str]:
    pieces = [p for p in re.findall(r"(?:\$[^$]*\$|\(Eq\. \d+\)|[^ ,/;$])*[ ,/;]?", text) if p]
    lines: list[str] = []
    line = ""
    for piece in pieces:
        while len(piece) > width and "$" not in piece:  # a piece no break can shorten: cut it
            if line.strip():
                lines.append(line.rstrip())
            lines.append(piece[:width])
            piece, line = piece[width:], ""
        if len((line + piece).rstrip()) > width and line.strip():
            lines.append(line.rstrip())
            line = piece.lstrip()
        else:
            line += piece
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines
