"""Warnings on the command line: one clean line each, without the source line Python adds; noise dropped.

Python shows a warning as two lines (``file:line: Category: text`` and the source line that raised it),
which reads as a crash to someone running a command. Inside :func:`one_line_warnings` (the ``sharpcomp``
command wraps every subcommand in it) a warning prints as ``sharpcomp: warning: <its first line>`` on
stderr, above any progress bar, as often as Python's filters would show it; warnings no user can act on
(:data:`NOISE`: libraries' notices of their own deprecations) are not shown. In a notebook or a program
of one's own, warnings stay Python's.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

# (category, message pattern) of warnings that are noise on the command line: PyTorch's notices that
# TorchScript is deprecated, raised from inside libraries (torchvision, timm) that sharpcomp calls.
NOISE = (
    (FutureWarning, r"`torch\.jit\.\w+` is (deprecated|not supported)"),
    (DeprecationWarning, r"`torch\.jit\.\w+` is (deprecated|not supported)"),
)


def line_of(message) -> str:
    """The one line a warning prints as."""
    text = str(message).strip()
    return f"sharpcomp: warning: {text.splitlines()[0] if text else type(message).__name__}"


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    text = line_of(message)
    try:
        # lazy: tqdm is loaded by the commands that draw bars; a warning is rare
        from tqdm import tqdm

        tqdm.write(text, file=file or sys.stderr)  # above a progress bar, not through it
    except (ImportError, OSError, ValueError):
        pass


def drop_noise() -> None:
    """Put :data:`NOISE` first among the current filters (after a ``simplefilter("always")`` too)."""
    for category, pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)


@contextlib.contextmanager
def one_line_warnings():
    """Within the block, every warning shown is one line on stderr, and :data:`NOISE` is dropped."""
    with warnings.catch_warnings():
        drop_noise()
        warnings.showwarning = _show
        yield
