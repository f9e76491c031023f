"""What every ``sharpcomp`` subcommand shares on the command line: one error type for bad input.

Bad input ends the same way whatever the subcommand: one line on stderr,
``sharpcomp <command>: error: <what is wrong>``, and exit status 2 (:data:`EXIT_USAGE`); never a
traceback. ``train`` reads ``key=value`` overrides (Hydra), ``figures`` flags (argparse, through
:class:`Parser`), ``reparam`` a run folder then ``key=value`` options; each raises :class:`UsageError`
and :func:`sharpcomp.cli.main` reports it with :func:`report`.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input on the command line; the message is one line meant for the user (exit status 2)."""


def report(command: str | None, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``sharpcomp <command>: error: <message>`` on stderr; return ``code``."""
    prog = f"sharpcomp {command}" if command else "sharpcomp"
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


class Parser(argparse.ArgumentParser):
    """argparse's parser that raises :class:`UsageError` (one line) instead of printing its usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise :class:`UsageError` with argparse's message and a pointer to ``--help``."""
        raise UsageError(f"{message} (see `{self.prog} --help`)")
