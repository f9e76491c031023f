"""Weights kept along the way: the network at chosen iterations, in ``<run>/weights/<iteration>.pt``.

``save_every=N`` keeps iterations 0, N, 2N, ... below ``steps``, and ``steps``; ``save_every=[i, j, ...]``
keeps exactly those (each in [0, steps]). The iterations need not be checkpoints: the loop writes a file
as soon as the weights reach one. A file is ``{"run_id", "iteration", "model_state"}`` with every floating
tensor of the state dict in float32 (integer buffers as they are), written whole (a temporary file
renamed in) and read back with ``torch.load(weights_only=True)``: tensors and plain containers only, so
a crafted file runs nothing; one that is a link, not a plain file, not a state dict or another run's is
refused with one line.

A file holds the parameters and buffers, not the optimiser's state: it is a point to measure or draw
(``sharpcomp measure run=RUN iterations=...``, ``sharpcomp.load_run(run, iteration=...)``, ``sharpcomp
landscape RUN directions=pca``), not a resume point (that is ``checkpoint.pt``). Kept weights do not
change a run's trajectory, so they take no part in its identity.

Counting kept iterations and finding the next one is arithmetic (:mod:`sharpcomp.kept_schedule`, read by
the settings without torch): a schedule of millions of iterations is never materialised. ``save_max_gb``
bounds the disk a run may fill with them: the estimate (files x 4 bytes x floating elements) is checked
before any data is loaded.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import torch

from sharpcomp.kept_schedule import KeptError, kept_count
from sharpcomp.results.records import atomic_write_bytes, refuse_link

WEIGHTS_DIR = "weights"
_NAME = re.compile(r"^(\d{1,13})\.pt$")


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of one kept file's tensors: 4 per floating element (float32), the integer buffers' own."""
    total = 0
    for t in model.state_dict().values():
        total += t.numel() * (4 if t.is_floating_point() else t.element_size())
    return total


def check_disk(save_every, steps: int, model: torch.nn.Module, save_max_gb: float) -> None:
    """KeptError unless the kept weights of a run fit in ``save_max_gb`` (decimal gigabytes)."""
    count = kept_count(save_every, steps)
    each = state_bytes(model)
    total = count * each
    if total > save_max_gb * 1e9:
        raise KeptError(f"save_every={_text(save_every)} would keep {count:,} copies of the weights "
                        f"({each / 1e6:.3g} MB each, {total / 1e9:.3g} GB) in the run folder, over "
                        f"save_max_gb={save_max_gb:g}; set save_max_gb={math.ceil(total / 1e9 * 10) / 10:g} "
                        f"to confirm, or keep fewer")


def _text(save_every) -> str:
    return "[" + ",".join(map(str, save_every)) + "]" if isinstance(save_every, tuple) else str(save_every)


# ---------------------------------------------------------------------------------------------
# files


def weights_path(run_dir: Path, it: int) -> Path:
    """The file of the weights kept at iteration ``it``."""
    return Path(run_dir) / WEIGHTS_DIR / f"{int(it)}.pt"


def compact(model_state: dict) -> dict:
    """A state dict's tensors as contiguous CPU copies, floating ones in float32."""
    return {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous()
            .clone() for k, v in model_state.items()}


def keep_weights(run_dir: Path, run_id: str, it: int, model_state: dict) -> Path:
    """Write the weights of iteration ``it`` (replacing a file of the same iteration, never a link)."""
    folder = Path(run_dir) / WEIGHTS_DIR
    refuse_link(folder)
    folder.mkdir(exist_ok=True)
    path = weights_path(run_dir, it)
    refuse_link(path)
    buf = io.BytesIO()
    torch.save({"run_id": run_id, "iteration": int(it), "model_state": compact(model_state)}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def kept_iterations(run_dir: Path) -> list[int]:
    """The iterations of the plain files named ``<iteration>.pt`` in the run's ``weights/`` folder."""
    folder = Path(run_dir) / WEIGHTS_DIR
    if folder.is_symlink() or not folder.is_dir():
        return []
    out = []
    for name in os.listdir(folder):
        m = _NAME.match(name)
        if m and stat.S_ISREG(os.lstat(folder / name).st_mode):
            out.append(int(m.group(1)))
    return sorted(out)


def read_weights(run_dir: Path, it: int, run_id: str | None = None) -> dict:
    """The state dict kept at iteration ``it``; KeptError (one line) for a missing, linked, crafted or
    foreign file (``run_id``: the run it must belong to)."""
    folder = Path(run_dir) / WEIGHTS_DIR
    path = weights_path(run_dir, it)
    for p in (folder, path):
        if p.is_symlink():
            raise KeptError(f"refusing {p}: it is a symbolic link; a run folder's files must be its own")
    if not path.exists():
        kept = kept_iterations(run_dir)
        have = ", ".join(map(str, kept[:20])) + (", ..." if len(kept) > 20 else "") if kept else "none"
        raise KeptError(f"no weights kept at iteration {it} in {run_dir} (kept: {have}; train with save_every=...)")
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise KeptError(f"refusing {path}: not a plain file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise KeptError(f"refusing {path}: not a plain weights file ({why}); nothing in it was run") from None
    return _checked(state, path, it, run_id)


def _checked(state, path: Path, it: int, run_id: str | None) -> dict:
    if not isinstance(state, dict) or not {"run_id", "iteration", "model_state"} <= set(state):
        raise KeptError(f"refusing {path}: not a sharpcomp weights file")
    weights = state["model_state"]
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise KeptError(f"refusing {path}: model_state must map parameter names to tensors")
    if state["iteration"] != it:
        raise KeptError(f"refusing {path}: it holds iteration {str(state['iteration'])[:40]}, not {it}")
    if run_id is not None and state["run_id"] != run_id:
        raise KeptError(f"refusing {path}: it holds weights of another run ({str(state['run_id'])[:80]})")
    return weights


def parse_iterations(text: str, kept: Sequence[int]) -> list[int]:
    """``iterations=`` of the commands: ``all`` (every kept one) or a comma list of integers."""
    if text == "all":
        return list(kept)
    try:
        its = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise KeptError(f"iterations must be 'all' or a comma list of integers, got '{text}'") from None
    if not its or any(i < 0 for i in its):
        raise KeptError(f"iterations must be 'all' or a comma list of integers >= 0, got '{text}'")
    return its
