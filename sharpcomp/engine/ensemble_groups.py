"""Which runs of a sweep can train together as one vectorised ensemble (:mod:`sharpcomp.engine.ensemble`).

Runs join one ensemble when they share every setting in ``SHARED_KEYS`` (only ``lr``, ``seed`` and the
per-run or cosmetic keys may differ) and their optimizer is batched (:func:`unbatchable`: plain SGD,
SGD with momentum or weight decay, Adam, AdamW). The others train one by one, with a line saying why.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence

from sharpcomp.settings import ConfigError, Settings, settings

ENSEMBLE_OPTIMS = ("sgd", "adam", "adamw")
# Settings every member of an ensemble must share (lr and seed may differ; scale_name, progress, save_every
# are per member or cosmetic). ``metrics.chunk_size`` only bounds memory and is ignored.
SHARED_KEYS = ("data", "model", "batch", "loss", "optim", "schedule", "steps", "log_every", "eval_every", "metrics",
               "device", "threads", "deterministic", "data_dir", "cache_dir", "allow_tf32", "cuda_graph")


def _shared(s: Settings) -> dict:
    vals = {k: s.raw.get(k) for k in SHARED_KEYS}
    vals["metrics"] = {k: v for k, v in s.raw["metrics"].items() if k != "chunk_size"}
    return vals


def unbatchable(s: Settings) -> str | None:
    """Why a run's optimizer cannot train in a stacked ensemble (None: it can)."""
    if s.optim_name == "sam":
        return "optim=sam takes a second gradient at each member's own perturbed point"
    if s.optim_name not in ENSEMBLE_OPTIMS:
        return f"optim={s.optim_name} ({s.optim.get('_target_')}) is a user's optimizer, not batched"
    return None


def ensemble_key(cfg) -> str | None:
    """A string equal for runs that can train in one ensemble.

    None for a run that cannot be in any ensemble (:func:`unbatchable`).
    """
    s = settings(cfg)
    if unbatchable(s) is not None:
        return None
    return json.dumps(_shared(s), sort_keys=True, default=str)


def check_compatible(cfgs: Sequence[Mapping]) -> None:
    """ConfigError naming the first setting that keeps these runs from one ensemble.

    An optimizer that is not batched is not one: its runs train one by one.
    """
    if not cfgs:
        raise ConfigError("an ensemble needs at least one run")
    all_settings = [settings(c) for c in cfgs]
    ref = _shared(all_settings[0])
    for s in all_settings[1:]:
        other = _shared(s)
        for key in SHARED_KEYS:
            if other[key] != ref[key]:
                raise ConfigError(f"runs in one ensemble must share '{key}' (got {ref[key]!r} and {other[key]!r}); "
                                  f"only lr and seed may differ")


def group_compatible(cfgs: Sequence, max_members: int = 32) -> tuple[list[list[int]], list[int]]:
    """Indices of ``cfgs`` grouped into ensembles, and the leftover indices to run one by one.

    Each ensemble has 2..max_members runs sharing :func:`ensemble_key`, in input order.
    """
    by_key: dict[str, list[int]] = {}
    single: list[int] = []
    why: dict[str, int] = {}
    for i, cfg in enumerate(cfgs):
        key = ensemble_key(cfg)
        if key is None:
            single.append(i)
            reason = unbatchable(settings(cfg))
            why[reason] = why.get(reason, 0) + 1
        else:
            by_key.setdefault(key, []).append(i)
    for reason, count in why.items():
        print(f"sharpcomp: ensemble: {count} run(s) train one by one: {reason}", file=sys.stderr, flush=True)
    groups = []
    for idx in by_key.values():
        # split into near-equal parts of at most max_members
        parts = max(1, math.ceil(len(idx) / max(1, int(max_members))))
        base, extra = divmod(len(idx), parts)
        pos = 0
        for p in range(parts):
            part = idx[pos:pos + base + (p < extra)]
            pos += len(part)
            (groups.append(part) if len(part) > 1 else single.extend(part))
    return groups, sorted(single)
