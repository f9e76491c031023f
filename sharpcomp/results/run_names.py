"""Run folder names: the settings that differ from the defaults, in a canonical form.

A run's folder (``outputs/runs/<data>-<model>/<name>``, or a sweep's ``<sweep dir>/<name>``) is named by
every setting of its complete config that differs from the defaults composed for its data, model,
scale and optim choices (``conf/train.yaml`` and those groups), written ``key=value`` with dotted keys,
sorted, joined by commas; a non-default ``scale``/``optim`` choice is written ``scale=demo`` (its own keys
are then compared with that choice's values). Numbers take their canonical form (``0.1``, ``1e-05``;
a float setting written ``1`` is ``1.0``), lists ``[a,b]``, so writing a default explicitly (``lr=0.1``)
or another spelling of the same number (``lr=1e-1``) names the same folder: equal settings, one folder.
Keys that only say where or how to run (``progress``, ``device``, ``threads``, ``data_dir``, ``cache_dir``,
the ``logger``) are left out; no overrides at all give ``default``. Names over ``NAME_MAX`` bytes are cut
and end in a digest of the whole.

Folders named before this (from the literal command line, Hydra's ``override_dirname``) still resume:
when the canonical folder has no results yet, the folder of the literal name, else a sibling whose
recorded settings (``.hydra/config.yaml``, ``.hydra/hydra.yaml``) give the same canonical name, is used.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from sharpcomp.results.stored_text import plain_references, stored_yaml
from sharpcomp.settings import CONFIG_MODULE, ConfigError, defaults, flatness_by_name

NAME_MAX = 200  # bytes of a run folder's name (file systems allow 255); longer names get a digest
# settings that say where or how a run is executed or watched, not what it computes
EXCLUDED = ("progress", "device", "threads", "data_dir", "cache_dir", "logger", "hydra")
DEFAULT_CHOICES = {"scale": "quick", "optim": "sgd"}  # conf/train.yaml's defaults list
NAMED_GROUPS = ("scale", "optim")  # group choices that appear in the name (data and model name the parent folder)
RESULTS = ("metrics.parquet", "checkpoint.pt")


def shorten(name: str) -> str:
    """``name`` with ``/`` replaced; over ``NAME_MAX`` bytes, cut and ended by a digest of the whole."""
    name = name.replace("/", "_") if name else "default"
    raw = name.encode()
    if len(raw) <= NAME_MAX:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:12]
    return raw[:NAME_MAX - 14].decode(errors="ignore") + "--" + digest


def literal_name(overrides: str) -> str:
    """The name folders had before canonical names: Hydra's ``override_dirname`` as written."""
    return shorten(overrides)


def canonical_value(value, default=None) -> str:
    """One value as it appears in a name: shortest round-trip numbers (floats stay floats when the
    default is a float), ``true``/``false``/``null``, lists ``[a,b]``, mappings ``{k:v}``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        if isinstance(default, float) and not isinstance(default, bool) or isinstance(value, float):
            v = float(value)
            return repr(int(v)) + ".0" if v.is_integer() and abs(v) < 1e16 else repr(v)
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{canonical_value(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


def _equal(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def differing(cfg: dict, base: dict, prefix: str = "") -> dict[str, str]:
    """``{dotted key: canonical value}`` of the leaves of ``cfg`` that differ from ``base`` (or are not in
    it); a mapping replacing a null default (e.g. ``metrics.flatness.worst_case={}``) is one value."""
    out = {}
    for key, value in cfg.items():
        dotted = prefix + str(key)
        if not prefix and key in EXCLUDED:
            continue
        default = base.get(key) if isinstance(base, dict) else None
        if isinstance(value, dict) and isinstance(default, dict):
            out.update(differing(value, default, dotted + "."))
        elif not (isinstance(base, dict) and key in base and _equal(value, default)):
            out[dotted] = canonical_value(value, default)
    return out


@lru_cache(maxsize=32)
def _defaults_json(choices: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(defaults(**dict(choices)))


def _packaged(group: str, option: str) -> bool:
    return (resources.files(CONFIG_MODULE) / group / f"{option}.yaml").is_file()


def canonical_name(cfg: dict, choices: dict) -> str:
    """The folder name of the complete plain config ``cfg`` whose group choices are ``choices``
    (Hydra's ``hydra.runtime.choices``: data, model, scale, optim)."""
    flat = (cfg.get("metrics") or {}).get("flatness")
    if isinstance(flat, dict):  # measures under their names, whichever key named them
        try:
            cfg = {**cfg, "metrics": {**cfg["metrics"], "flatness": flatness_by_name(flat)}}
        except ConfigError:
            pass  # an unknown measure: refused by the settings' checks, named as written here
    picked = {g: str(choices[g]) for g in ("data", "model", *NAMED_GROUPS) if choices.get(g)}
    # a group option of the user's own config folder (hydra.searchpath) is not composed here: its keys are
    # compared with the packaged default's, so they are named (longer, still one name for equal settings)
    base = json.loads(_defaults_json(tuple(sorted((g, v) for g, v in picked.items() if _packaged(g, v)))))
    parts = [f"{g}={picked[g]}" for g in NAMED_GROUPS if g in picked and picked[g] != DEFAULT_CHOICES[g]]
    parts += [f"{k}={v}" for k, v in differing(cfg, base).items()]
    return shorten(",".join(sorted(parts)))


def _has_results(folder: Path) -> bool:
    return any((folder / f).exists() for f in RESULTS)


def _recorded_name(folder: Path) -> str | None:
    """The canonical name of the settings recorded in a run folder by Hydra (None when unreadable)."""
    try:  # bounded reads, no YAML aliases, interpolations that cannot grow (a sibling may be hostile)
        stored, hydra_cfg = (stored_yaml(folder / ".hydra" / name) for name in ("config.yaml", "hydra.yaml"))
        if stored is None or hydra_cfg is None or not plain_references(stored, EXCLUDED):
            return None
        choices = OmegaConf.to_container(hydra_cfg.hydra.runtime.choices)
        return canonical_name(plain_config(stored), choices)
    except Exception:
        return None


def folder_name(name: str, literal: str, parent: str | Path | None) -> str:
    """The folder to use under ``parent``: ``name`` (canonical) unless it has no results and an older
    folder of the same settings does (the literal name, or a sibling whose recorded settings match)."""
    if parent is None:
        return name
    parent = Path(str(parent))
    if _has_results(parent / name) or not parent.is_dir():
        return name
    if literal != name and _has_results(parent / literal):
        return literal
    for sibling in sorted(p for p in parent.iterdir() if p.is_dir() and p.name != name):
        if _has_results(sibling) and (sibling / ".hydra").is_dir() and _recorded_name(sibling) == name:
            return sibling.name
    return name


def register_resolvers() -> None:
    """Register the resolver ``conf/train.yaml`` uses for run folders (``sc_run_name``: :func:`resolve`).

    Whatever composes the config with Hydra's own node and reads its folders calls it first.
    """
    if not OmegaConf.has_resolver("sc_run_name"):
        OmegaConf.register_new_resolver("sc_run_name", resolve)


def resolve(overrides: str, parent=None, *, _root_) -> str:
    """The ``sc_run_name`` resolver: the folder name of the config being composed (``_root_``)."""
    choices = OmegaConf.to_container(_root_.hydra.runtime.choices) if "hydra" in _root_ else {}
    name = canonical_name(plain_config(_root_), choices)
    return folder_name(name, literal_name(overrides), parent)


def plain_config(root) -> dict:
    """The plain, resolved settings of a config (a DictConfig, possibly with its ``hydra`` node), less
    the ``EXCLUDED`` keys (never resolved: the run folder itself is being named)."""
    cfg = {}
    for key in root:
        if key in EXCLUDED:
            continue
        node = root[key]
        cfg[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return json.loads(json.dumps(cfg, default=str))
