"""What the tests of hostile results trees share: real processes with time and memory bounds, and the
hostile things themselves (FIFOs, links to devices, sparse giants, crafted YAML), made for real."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

VICTIM_TEXT = "the user's own file\n"
MEMORY = 3 * 2**30  # a process that expands a bomb or reads a device dies here instead of taking the machine
CLI_MEMORY = 8 * 2**30  # a sharpcomp process (torch, pyarrow's allocator and the data reserve more)


def limit_memory(limit: int = MEMORY):
    """A ``preexec_fn`` that bounds the child's heap (``RLIMIT_DATA``)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return apply


def cli(args, cwd, timeout=120, env=None, **kw) -> subprocess.CompletedProcess:
    """``sharpcomp ARGS`` as a real process in ``cwd``, bounded in time and memory (a hang fails the test)."""
    return subprocess.run([sys.executable, "-m", "sharpcomp.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env, preexec_fn=limit_memory(CLI_MEMORY), **kw)


def python(code: str, cwd, timeout=60, memory: int = MEMORY) -> subprocess.CompletedProcess:
    """Python ``code`` run in a real process, bounded in time and memory."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_memory(memory))


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def victim(root: Path, name: str = "victim.txt") -> Path:
    """A file of the user's own, outside any results folder."""
    p = Path(root) / "home" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(VICTIM_TEXT)
    return p


def replace(path: Path, what: str, root: Path) -> None:
    """Put a hostile ``what`` where ``path`` was: ``fifo``, ``zero`` (a link to /dev/zero), ``socket``,
    ``sparse`` (a 200 GB file of holes), ``outside`` (a link to a file of the user's) or ``folder``."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "zero":
        path.symlink_to("/dev/zero")
    elif what == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif what == "sparse":
        path.write_bytes(b"")
        os.truncate(path, 200 * 10**9)
    elif what == "outside":
        path.symlink_to(victim(root))
    elif what == "folder":
        path.mkdir()
    else:
        raise ValueError(what)


# a YAML "billion laughs": 9 levels of 9 aliases, 9**9 strings once expanded (a few hundred bytes written)
ALIAS_BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
# the same through OmegaConf's interpolations: each level a text of the one below, twice (2**40 characters)
TEXT_BOMB = "x0: lol\n" + "".join(f"x{i + 1}: ${{x{i}}}${{x{i}}}\n" for i in range(40))
# and through lists of references (2**40 entries once resolved)
LIST_BOMB = "x0: lol\n" + "".join(f"x{i + 1}: ['${{x{i}}}', '${{x{i}}}']\n" for i in range(40))
