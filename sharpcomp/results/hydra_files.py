"""A run folder's ``.hydra`` files: Hydra's record of the composed config, its own node and the overrides.

Written only once the run holds its folder. Hydra writes them before the job's code runs; sharpcomp
installs :func:`defer_save` as Hydra's writer, which keeps them in memory, and the training engine
writes them (:func:`write_held`) once the run folder is open: locked, and holding this run or none. A
refused run (a folder in use by another process, or holding another run) therefore writes nothing
there, and later runs are never routed by settings it did not train. They are written whole (a temporary
file, then a rename), never through a symbolic link.

Read back, bounded (:func:`read_recorded`), to find an older folder of the same settings: regular files
only (no link, FIFO or device), at most ``MAX_BYTES`` each, YAML without aliases (an alias bomb expands
to gigabytes in a 528-byte file).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml
from omegaconf import OmegaConf

HYDRA_DIR = ".hydra"
MAX_BYTES = 1 << 20  # a config recorded by Hydra is a few kilobytes
# the .hydra files held back until the run owns its folder: the .hydra folder -> {file name: bytes}
HELD: dict[Path, dict[str, bytes]] = {}


def defer_save(cfg, filename: str, output_dir) -> None:
    """Hydra's ``_save_config``, held back: the file is written by :func:`write_held` once the run owns its folder."""
    HELD.setdefault(Path(os.path.abspath(output_dir)), {})[filename] = OmegaConf.to_yaml(cfg).encode("utf-8")


def _held_for(run_dir: Path) -> list[Path]:
    run_dir = Path(os.path.abspath(run_dir))
    return [d for d in HELD if d == run_dir or run_dir in d.parents]


def write_held(run_dir: str | Path) -> None:
    """Write the ``.hydra`` files held back for ``run_dir`` (its run has just opened it); a link is left alone."""
    # lazy: records loads pandas and pyarrow, which Hydra's config writer must not need at startup
    from sharpcomp.results.records import atomic_write_bytes

    for folder in _held_for(Path(run_dir)):
        files = HELD.pop(folder)
        if folder.is_symlink():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if not (folder / name).is_symlink():
                atomic_write_bytes(folder / name, data)


def discard_held(run_dir: str | Path) -> None:
    """Forget the ``.hydra`` files held back for ``run_dir`` (its run was refused, or stopped before opening it)."""
    for folder in _held_for(Path(run_dir)):
        HELD.pop(folder, None)


class _NoAliases(yaml.SafeLoader):
    """YAML without anchors and aliases (Hydra never writes them; an alias bomb needs them)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            raise yaml.YAMLError("aliases are not read")
        return super().compose_node(parent, index)


def read_bounded_yaml(path: Path):
    """The YAML in ``path`` when it is a regular file of at most ``MAX_BYTES`` without aliases, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            text = f.read(MAX_BYTES + 1)
        return yaml.load(text.decode("utf-8"), Loader=_NoAliases) if len(text) <= MAX_BYTES else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    finally:
        os.close(fd)


def read_recorded(folder: Path) -> tuple[dict, dict, list] | None:
    """What Hydra recorded in a run folder, as plain data: the settings, the group choices
    (``hydra.runtime.choices``) and the config search path (``hydra.searchpath``). None when the ``.hydra``
    folder or a file is missing, a link, oversized or not plain YAML."""
    hydra_dir = Path(folder) / HYDRA_DIR
    if hydra_dir.is_symlink() or not hydra_dir.is_dir():
        return None
    cfg = read_bounded_yaml(hydra_dir / "config.yaml")
    own = read_bounded_yaml(hydra_dir / "hydra.yaml")
    try:
        choices, searchpath = own["hydra"]["runtime"]["choices"], own["hydra"].get("searchpath") or []
    except (TypeError, KeyError, AttributeError):
        return None
    if not isinstance(cfg, dict) or not isinstance(choices, dict) or not isinstance(searchpath, list):
        return None
    return cfg, choices, searchpath
