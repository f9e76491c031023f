"""What every ``sharpcomp`` subcommand shares on the command line: one syntax, one way to fail.

The syntax is Hydra's, as ``train`` takes it: folders first (or anywhere), then ``key=value`` options,
e.g. ``sharpcomp figures outputs out=figs only=fig1,runs``. The flag forms ``--key VALUE`` and
``--key=VALUE`` (``--last-fraction 0.2`` for ``last_fraction``) mean the same and are always options,
so they also settle an argument that names both a folder here and an option (``--seed=1``; ``./seed=1``
is the folder). A ``key=value`` argument is an option when ``key`` is one of the command's (a folder of
that name, where the command still takes folders, is the folder: sharpcomp's own run folders are named
``lr=0.05,seed=1``); any other argument is a folder. A :class:`Syntax` declares a command's folders and
options once; it parses and writes the command's ``--help``.

Bad input ends the same way whatever the subcommand: one line on stderr,
``sharpcomp <command>: error: <what is wrong>``, and exit status 2 (:data:`EXIT_USAGE`); never a
traceback. A misspelt option or choice gets "did you mean" (:func:`did_you_mean`).
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EXIT_USAGE = 2
HELP = ("-h", "--help", "help")
KEY = re.compile(r"[A-Za-z_][\w.\-]*")


class UsageError(Exception):
    """Bad input on the command line; the message is one line meant for the user (exit status 2)."""


def report(command: str | None, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``sharpcomp <command>: error: <message>`` on stderr; return ``code``."""
    prog = f"sharpcomp {command}" if command else "sharpcomp"
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choice closest to a misspelt ``word``, or ``""``.

    Close means a close spelling (``mlp5`` -> ``mlp4``, ``alhpa`` -> ``alpha``) or the word's first part
    (``lr_rate`` -> ``lr``).
    """
    choices = [str(c) for c in dict.fromkeys(choices) if str(c) != word]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.65)
    if not close:
        head = re.split(r"[_\-]", word)[0]
        close = [c for c in choices if head and c == head] or [
            c for c in choices if len(word) >= 3 and c.startswith(word)][:1]
    return f" (did you mean {close[0]}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# values


def integer(name: str, text: str, low: int | None = None) -> int:
    """``text`` as an integer (at least ``low``); UsageError naming the option."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UsageError(f"{name} must be an integer, got '{text}'") from None
    if low is not None and value < low:
        raise UsageError(f"{name} must be >= {low}, got {value}")
    return value


def number(name: str, text: str, low: float | None = None, high: float | None = None, *,
           above: bool = False) -> float:
    """``text`` as a finite number in [low, high] (above ``low`` with ``above``); UsageError naming the option."""
    what = "a positive number" if above and low == 0 else "a finite number"
    try:
        value = float(str(text).strip())
    except ValueError:
        raise UsageError(f"{name} must be {what}, got '{text}'") from None
    if not math.isfinite(value) or (above and low == 0 and value <= 0):
        raise UsageError(f"{name} must be {what}, got {text}")
    if low is not None and (value <= low if above else value < low):
        raise UsageError(f"{name} must be {'>' if above else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise UsageError(f"{name} must be <= {high:g}, got {value:g}")
    return value


def choice(name: str, text: str, choices: Sequence[str]) -> str:
    """``text`` if it is one of ``choices``; UsageError listing them (with "did you mean")."""
    if text not in choices:
        raise UsageError(f"unknown {name} '{text}'{did_you_mean(text, choices)} (choose from {', '.join(choices)})")
    return text


def choices_list(name: str, text: str, choices: Sequence[str]) -> list[str]:
    """A comma-separated list of ``choices`` (at least one, each known)."""
    picked = [c.strip() for c in str(text).split(",") if c.strip()]
    if not picked:
        raise UsageError(f"{name} needs at least one of {', '.join(choices)}")
    return [choice(name.rstrip("s") if name.endswith("s") else name, c, choices) for c in picked]


def split_paths(text: str) -> list[str]:
    """Comma-separated paths, where a path may hold commas itself.

    sharpcomp's run folders do (``lr=0.05,seed=1``): the whole text when it names something that exists,
    else split at the commas that separate existing paths. A part that names nothing is returned as it
    is, for the caller to refuse.
    """
    if not text or os.path.lexists(text):
        return [text]
    pieces = text.split(",")
    reached: dict[int, list[str]] = {0: []}
    for i in range(len(pieces)):
        if i in reached:
            for j in range(len(pieces), i, -1):  # the longest existing path first
                candidate = ",".join(pieces[i:j])
                if j not in reached and os.path.lexists(candidate):
                    reached[j] = [*reached[i], candidate]
    end = max(reached)
    return reached[end] + ([",".join(pieces[end:])] if end < len(pieces) else [])


def check_output_place(path: str | Path, option: str) -> None:
    """UsageError when an output folder or file lies inside a run's records.

    A run's ``metrics.parquet``, ``.hydra`` and ``set-aside`` folders are written by its run alone: every
    command that writes (``train``, ``measure``, ``landscape``, ``figures``, ``runs``) shares this check.
    """
    # lazy: --help and --version stay free of pandas (records reads parquet)
    from sharpcomp.results.records import METRICS_FILE, SET_ASIDE

    parts = Path(os.path.abspath(path)).parts
    inside = next((p for p in parts if p in (METRICS_FILE, ".hydra", SET_ASIDE)), None)
    if inside:
        raise UsageError(f"{option} {path} is inside a run's {inside} folder, which only sharpcomp writes "
                         f"(choose another {option})")


# ---------------------------------------------------------------------------------------------
# the syntax of a command


@dataclass(frozen=True)
class Option:
    """One ``key=value`` option: its name, what it does (with its default) and the value's placeholder."""

    name: str
    help: str
    metavar: str = "VALUE"
    repeat: bool = False  # may be given more than once: every value is kept, in order


@dataclass
class Parsed:
    """A parsed command line: the folders (or other positional arguments) and the options given."""

    folders: list[str] = field(default_factory=list)
    values: dict[str, str | list[str]] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # keys of an option family (``arg.depth=3``)
    spelled: dict[str, str] = field(default_factory=dict)  # how each option was written (``--last-fraction``)

    def get(self, name: str, default=None):
        """The value of option ``name`` (a list for a repeated option), or ``default``."""
        return self.values.get(name, default)

    def said(self, name: str) -> str:
        """Option ``name`` as the command line wrote it (``--last-fraction`` or ``last_fraction``), for messages."""
        return self.spelled.get(name, name)


@dataclass(frozen=True)
class Syntax:
    """A subcommand's command line: its positional folders, its ``key=value`` options, its ``--help``."""

    command: str
    summary: str
    options: tuple[Option, ...]
    folders: str = ""  # the positional arguments as the usage line shows them, e.g. "RUN [RUN_B]"
    folders_help: str = ""
    most: int | None = 0  # how many positional arguments at most (None: any number)
    families: tuple[tuple[str, str], ...] = ()  # (prefix, help): e.g. ("arg.", "a model keyword argument")
    examples: tuple[str, ...] = ()
    notes: str = ""

    @property
    def names(self) -> dict[str, Option]:
        """The options by name."""
        return {o.name: o for o in self.options}

    def asks_help(self, argv: Sequence[str]) -> bool:
        """Whether the command line asks for ``--help`` (``help`` only where it names no folder)."""
        return any(a in HELP[:2] or (a == "help" and not os.path.lexists(a)) for a in argv)

    def entry_point(self, run: Callable[[list[str]], int]) -> Callable[[Sequence[str] | None], int]:
        """``run`` (arguments -> exit status) as the command's ``main``, ``--help`` answered before it.

        The arguments are ``sys.argv``'s when none are given; ``--help`` prints the help and returns 0.
        """

        @functools.wraps(run)
        def main(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            if self.asks_help(args):
                print(self.help())
                return 0
            return run(args)

        return main

    def help(self) -> str:
        """The text of ``sharpcomp <command> --help``: usage, folders, every option, examples."""
        usage = f"usage: sharpcomp {self.command}" + (f" {self.folders}" if self.folders else "") + " [key=value ...]"
        lines = [usage, "", self.summary]
        if self.folders_help:
            lines += ["", "arguments:", *_wrap(self.folders, self.folders_help)]
        lines += ["", "options (key=value; --key VALUE and --key=VALUE mean the same):"]
        for o in self.options:
            lines += _wrap(f"{o.name}={o.metavar}", o.help)
        for prefix, text in self.families:
            lines += _wrap(f"{prefix}KEY=VALUE", text)
        if self.notes:
            lines += ["", self.notes]
        if self.examples:
            lines += ["", "examples:", *(f"  {e}" for e in self.examples)]
        return "\n".join(lines)

    def _key(self, key: str) -> str | None:
        """The option a key names (``last-fraction`` is ``last_fraction``), or None."""
        key = key.replace("-", "_") if key.replace("-", "_") in self.names else key
        if key in self.names or any(key.startswith(p) and len(key) > len(p) for p, _ in self.families):
            return key
        return None

    def _unknown(self, key: str, arg: str, flag: bool) -> UsageError:
        known = [*self.names, *(p + "KEY" for p, _ in self.families)]
        hint = did_you_mean(key.replace("-", "_"), self.names)
        listed = f"options: {', '.join(known)}" if known else "it takes no options"
        folder = "" if flag or self.most == 0 else f"; no folder '{arg}' either"
        what = f"flag '--{key}'" if flag else f"option '{key}'"
        return UsageError(f"unknown {what}{hint} ({listed}{folder}; see `sharpcomp {self.command} --help`)")

    def _store(self, parsed: Parsed, key: str, value: str, spelled: str | None = None) -> None:
        parsed.spelled[key] = spelled or key
        family = next((p for p, _ in self.families if key.startswith(p)), None)
        if key not in self.names and family is not None:
            parsed.extra[key[len(family):]] = value
            return
        if self.names[key].repeat:
            parsed.values.setdefault(key, []).append(value)
        elif key in parsed.values:
            raise UsageError(f"{key} is given twice ({key}={parsed.values[key]} and {key}={value}); give it once")
        else:
            parsed.values[key] = value

    def parse(self, argv: Sequence[str]) -> Parsed:
        """The folders and options of ``argv``; UsageError (one line) for anything else."""
        parsed, args, after_dashes = Parsed(), list(argv), False
        while args:
            arg = args.pop(0)
            check_text(arg)
            key = arg.split("=", 1)[0]
            if after_dashes:
                self._folder(parsed, arg)
            elif arg == "--":  # what follows is folders, whatever it looks like
                after_dashes = True
            elif arg.startswith("--"):
                self._flag(parsed, arg, args)
            elif "=" in arg and self._is_option(arg, parsed):
                self._store(parsed, self._key(key), arg.split("=", 1)[1])
            elif "=" in arg and KEY.fullmatch(key) and not os.path.lexists(arg):
                raise self._unknown(key, arg, flag=False)
            elif arg.startswith("-") and len(arg) > 1 and not os.path.lexists(arg):
                raise UsageError(f"unknown flag '{arg}' (options are key=value: "
                                 f"see `sharpcomp {self.command} --help`)")
            else:
                self._folder(parsed, arg)
        return parsed

    def _is_option(self, arg: str, parsed: Parsed) -> bool:
        """Whether ``key=value`` is an option: a key of this command's.

        Unless the argument names a folder here and the command still takes folders (``./seed=1`` and
        ``--seed=1`` say which).
        """
        if self._key(arg.split("=", 1)[0]) is None:
            return False
        takes_more = self.most is None or len(parsed.folders) < self.most
        return not (takes_more and os.path.isdir(arg))

    def _flag(self, parsed: Parsed, arg: str, args: list[str]) -> None:
        name, eq, value = arg[2:].partition("=")
        key = self._key(name)
        if key is None:
            raise self._unknown(name, arg, flag=True)
        if not eq:
            if not args:
                metavar = self.names[key].metavar if key in self.names else "VALUE"
                raise UsageError(f"--{name} needs a value: write {key}={metavar}")
            value = args.pop(0)
        self._store(parsed, key, value, f"--{name}")

    def _folder(self, parsed: Parsed, arg: str) -> None:
        if self.most is not None and len(parsed.folders) >= self.most:
            if self.most == 0:
                raise UsageError(f"unexpected argument '{arg}' (this command takes key=value options only; "
                                 f"see `sharpcomp {self.command} --help`)")
            raise UsageError(f"unexpected argument '{arg}': {self.folders} then key=value options "
                             f"(see `sharpcomp {self.command} --help`)")
        parsed.folders.append(arg)


def check_text(arg: str) -> None:
    """UsageError for an argument that is not valid UTF-8 (the bytes the shell passed cannot be a name here)."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise UsageError(f"argument '{shown}' is not valid UTF-8 (rename the folder, or write the name in UTF-8)") \
            from None


def _wrap(head: str, text: str, width: int = 100) -> list[str]:
    """``  head    text``, the text wrapped under itself."""
    pad = 24
    first = f"  {head}".ljust(pad)
    if len(first) > pad:
        return [first.rstrip(), *textwrap.wrap(text, width, initial_indent=" " * pad, subsequent_indent=" " * pad)]
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=" " * pad) or [first.rstrip()]
