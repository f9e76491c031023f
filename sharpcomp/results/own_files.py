"""A results folder's own files: read only when they are regular files, never through a link, within a
size bound; written whole, never through a link, readable as the user's umask allows.

Every read from a results folder goes through :func:`open_regular` (or :func:`read_regular`): the file is
opened with ``O_NOFOLLOW`` (a symbolic link is refused, wherever it points) and ``O_NONBLOCK`` (a FIFO
opens at once instead of waiting for a writer), then checked with ``fstat`` on the open descriptor: a
FIFO, a device, a socket or a folder is refused with one line, and so is a file larger than the bound
given (a sparse file of 200 GB, or anything no sharpcomp writer makes). Nothing is read before the checks
pass, so no read waits forever or fills the memory.

Writes: :func:`atomic_write_bytes` (a temporary file beside the target, fsync, rename: the rename
replaces a link at the name and never writes through it), :func:`append_bytes` (``O_APPEND`` on a
regular file, never through a link), :func:`probe_writable` (a nameless temporary file). Files are
created with the permissions the umask allows (``0o666 & ~umask``), as ``open`` creates them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

GiB = 2**30
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RecordError(RuntimeError):
    """A results file that cannot be read or does not look like sharpcomp output."""


def size_text(n: int) -> str:
    """A byte count for people: ``1.5 GB``, ``64 MB``, ``12 kB``, ``3 bytes``."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words (``a FIFO``, ``a folder``, ...)."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))
    for test, name in kinds:
        if test(mode):
            return name
    return "not a regular file"


def refuse_link(path: Path) -> None:
    """Raise RecordError (one line) when ``path`` is a symbolic link.

    A run folder's files are its own, and the program never writes through a link (it could point anywhere).
    """
    path = Path(path)
    if path.is_symlink():
        raise RecordError(f"refusing {path}: it is a symbolic link (to {os.readlink(path)}); "
                          f"a run folder's files must be its own (move the link away)")


def _refusal(path: Path, exc: OSError) -> RecordError | None:
    """The one-line refusal for an ``open`` that failed on what stands at ``path`` (None: a plain error)."""
    if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and Path(path).is_symlink()):
        return RecordError(f"refusing {path}: it is a symbolic link (to {os.readlink(path)}); "
                           f"sharpcomp reads only a run folder's own files (move the link away)")
    if exc.errno == errno.EISDIR:
        return RecordError(f"refusing {path}: it is a folder, not a regular file; move it away")
    if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket, a FIFO without a reader, a device without a driver
        return RecordError(f"refusing {path}: it is not a regular file; move it away")
    return None


def _open_own(path: Path, flags: int) -> tuple[int, os.stat_result]:
    """A descriptor of ``path`` opened with ``flags`` never through a link and never waiting (a FIFO opens at
    once), and its status: RecordError (one line) unless it is a regular file."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o666)
    except OSError as exc:
        refused = _refusal(path, exc)
        if refused is None:
            raise
        raise refused from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RecordError(f"refusing {path}: it is {kind(info.st_mode)}, not a regular file; move it away")
    return fd, info


def open_regular(path: Path, limit: int | None = None):
    """``path`` opened for reading (a binary file object), when it is a regular file of at most ``limit``
    bytes; RecordError (one line) for a link, a FIFO, a device, a socket, a folder or a larger file.
    FileNotFoundError when nothing is there."""
    path = Path(path)
    fd, info = _open_own(path, os.O_RDONLY)
    try:
        if limit is not None and info.st_size > limit:
            raise RecordError(f"refusing {path}: it is {size_text(info.st_size)}, more than such a file can "
                              f"hold ({size_text(limit)} at most); move it away")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` (:func:`open_regular`'s checks; never more than ``limit``, even while it grows)."""
    with open_regular(path, limit) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise RecordError(f"refusing {path}: it grew past {size_text(limit)} while it was read; move it away")
    return data


def umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def creation_mode() -> int:
    """The permissions a new file gets from ``open`` under the current umask (``0o666 & ~umask``)."""
    return 0o666 & ~umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole: a temporary file in the same folder, fsync, rename.

    The rename replaces the name itself, so nothing outside the folder is ever written through a link. The
    file gets the permissions the umask allows, as any file ``open`` creates (``mkstemp`` alone makes 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), creation_mode())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def append_bytes(path: Path, data: bytes, header: bytes = b"") -> None:
    """Append ``data`` to ``path`` (created when absent), after ``header`` when the file is empty.

    Never through a link, and only to a regular file (RecordError, one line, otherwise).
    """
    fd, info = _open_own(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = header + data if info.st_size == 0 else data
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def probe_writable(folder: Path) -> None:
    """Prove that a file can be made in ``folder`` (OSError if not): a nameless temporary file, so no
    link planted at a predictable name is ever followed."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the system allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove(path: Path) -> None:
    """Delete a file, a link (not its target) or a folder with its content; nothing when absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
