"""The folder a command writes its files to (``figures``, ``rank``).

Never inside a run's records (:func:`sharpcomp.usage.check_output_place`), never through a symbolic link
where the folder is the default one beside the results (a results folder's member must not send writes
elsewhere), and writable before any work starts. Each check raises ``UsageError`` with one line.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sharpcomp.usage import UsageError, check_output_place


def check_place(out: Path, default: bool, what: str) -> None:
    """``out`` may hold ``what`` (e.g. ``figures``): not inside a run's records; the default not a link."""
    check_output_place(out, "out")
    if default and out.is_symlink():
        raise UsageError(f"{out} is a symbolic link (to {os.readlink(out)}); {what} are not written through "
                         f"a results folder's link (move it away, or choose a folder with out=DIR)")


def make_writable(out: Path, what: str) -> None:
    """Make ``out`` and check that a file can be written there."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"out {out} is a file, not a folder (choose a folder with out=DIR)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot write {what} to {out}: {reason} (choose a folder with out=DIR)") from None
