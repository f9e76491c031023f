"""Run folder names: what a person would call the run, in a canonical form.

A run's folder (``outputs/runs/<data>-<model>/<name>``, or a sweep's ``<sweep dir>/<name>``) is named by
what sets it apart from the defaults composed for its config groups, joined by commas:

1. the experiment (``+experiment=eos`` -> ``eos``) when it changes settings; its settings are then the
   defaults the rest is compared with. The figure sweeps, which choose only data, model and the values
   they sweep, add no word: runs two experiments share have one folder and train once;
2. one's own network's callable (``model._target_=mynets.SmallResNet`` -> ``mynets.SmallResNet``) when it
   is not the model group's own;
3. a ``scale``, ``optim`` or ``schedule`` choice other than the default (``scale=demo``; that choice's
   values are the defaults of its keys);
4. every other setting that differs, ``key=value``, sorted: the model's keys without ``model.``
   (``width=4``, ``depth=2``), the others dotted (``data.classes=[3,5]``, ``metrics.n=20``).

Values keep their type in their shortest form: an integer as an integer (``width=4``), a float as a
float (``lr=0.05``, ``1e-05``, ``lr=1.0``), so another spelling of the same number (``lr=1e-1``) or a
default written out (``lr=0.1``) names the same folder; lists ``[a,b]``, mappings ``{k:v}``. Left out:
the model's ``name`` (it names the parent folder), ``steps`` (a larger ``steps`` extends the run in its
folder; named only under a schedule that spans the steps, ``cosine`` or ``linear``, where a larger
``steps`` is another run), the weights kept along the way (``save_every``, ``save_max_gb``: adding them
to a run's command keeps it in its folder), and the settings that say where or how a run executes
(``progress``, ``device``, ``threads``, ``data_dir``, ``cache_dir``, the ``logger``, ``resume_every``,
``compile``, ``cuda_graph``, ``metrics.chunk_size``). No setting at all gives
``default``; names over ``NAME_MAX`` bytes are cut and end in a digest of the whole. The full settings
are in the run's ``.hydra/`` and in every row.

Folders named otherwise (the literal command line, or earlier naming rules, e.g. with ``steps=``) still
resume: when the canonical folder holds no results, the folder of the literal name (Hydra's
``override_dirname``), else a sibling whose recorded settings (``.hydra``, read bounded) give the same
name, is used, but only when it is a real folder inside the parent (a symbolic link is never followed)
holding this run's own results: a checkpoint or parts with this run's id. A folder sharpcomp did not
write is never taken over for a new run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from sharpcomp.results.hydra_files import read_recorded
from sharpcomp.results.stored_text import plain_references
from sharpcomp.schedule import SPAN_STEPS
from sharpcomp.settings import CONFIG_MODULE, ConfigError, defaults, flatness_by_name, run_identity

NAME_MAX = 200  # bytes of a run folder's name (file systems allow 255); longer names get a digest
# settings that say where or how a run is executed or watched, not what it computes
EXCLUDED = ("progress", "device", "threads", "data_dir", "cache_dir", "logger", "hydra")
# settings that are not named: how long (a larger steps extends the run) and how fast it is computed
NOT_NAMED = ("steps", "resume_every", "compile", "cuda_graph", "metrics.chunk_size", "model.name", "save_every",
             "save_max_gb")
DEFAULT_CHOICES = {"scale": "quick", "optim": "sgd", "schedule": "constant"}  # conf/train.yaml's defaults list
# group choices that appear in the name (data and model name the parent folder)
NAMED_GROUPS = ("scale", "optim", "schedule")
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


def canonical_value(value) -> str:
    """One value as it appears in a name: integers as integers, floats in their shortest round-trip form
    (``0.05``, ``1e-05``, ``4.0``), ``true``/``false``/``null``, lists ``[a,b]``, mappings ``{k:v}``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{canonical_value(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


def _equal(a, b) -> bool:
    """Equal as settings: the same type and value (an integer 4 and a float 4.0 are different runs' settings)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
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
            out[dotted] = canonical_value(value)
    return out


@lru_cache(maxsize=32)
def _defaults_json(choices: tuple[tuple[str, str], ...], extra: tuple[str, ...]) -> str:
    return json.dumps(defaults(extra=extra, **dict(choices)))


def _packaged(group: str, option: str) -> bool:
    return (resources.files(CONFIG_MODULE) / group / f"{option}.yaml").is_file()


def _base(picked: dict, searchpath: tuple[str, ...], experiment: bool) -> dict:
    """The defaults of the chosen groups (with the experiment, or without): composed with the user's own
    config folders (``hydra.searchpath``) where they are named; else a group of the user's own is compared
    with the packaged default (one's own model with ``conf/model/custom.yaml``)."""
    groups = tuple(sorted((g, v) for g, v in picked.items() if g != "experiment"))
    extra = (f"+experiment={picked['experiment']}",) if experiment and "experiment" in picked else ()
    path = (f"hydra.searchpath=[{','.join(searchpath)}]",) if searchpath else ()
    try:
        return json.loads(_defaults_json(groups, path + extra))
    except Exception:  # a group or experiment found only where this cannot look
        own = {g: (v if _packaged(g, v) else "custom") for g, v in groups if _packaged(g, v) or g == "model"}
        exp = extra if extra and _packaged("experiment", picked["experiment"]) else ()
        try:
            return json.loads(_defaults_json(tuple(sorted(own.items())), exp))
        except Exception:
            return json.loads(_defaults_json((), ()))


def _named(parts: dict[str, str], spans_steps: bool = False) -> dict[str, str]:
    """The parts a name shows: ``NOT_NAMED`` left out, but ``steps`` kept under a schedule spanning them."""
    return {k: v for k, v in parts.items() if k not in NOT_NAMED or (k == "steps" and spans_steps)}


def canonical_name(cfg: dict, choices: dict, searchpath: tuple[str, ...] = ()) -> str:
    """The folder name of the complete plain config ``cfg`` whose group choices are ``choices``
    (Hydra's ``hydra.runtime.choices``: data, model, scale, optim, schedule, experiment); see the module
    docstring."""
    flat = (cfg.get("metrics") or {}).get("flatness")
    if isinstance(flat, dict):  # measures under their names, whichever key named them
        try:
            cfg = {**cfg, "metrics": {**cfg["metrics"], "flatness": flatness_by_name(flat)}}
        except ConfigError:
            pass  # an unknown measure: refused by the settings' checks, named as written here
    picked = {g: str(choices[g]) for g in ("data", "model", *NAMED_GROUPS, "experiment") if choices.get(g)}
    searchpath = tuple(str(p) for p in searchpath or ())
    base = _base(picked, searchpath, experiment=False)
    words = []
    if "experiment" in picked:
        with_experiment = _base(picked, searchpath, experiment=True)
        if _named(differing(with_experiment, base)):
            words.append(picked["experiment"])
            base = with_experiment
    parts = _named(differing(cfg, base), (cfg.get("schedule") or {}).get("name") in SPAN_STEPS)
    target = parts.pop("model._target_", None)
    if target is not None:
        words.append(target)
    reserved = set(cfg) | set(EXCLUDED) | set(NAMED_GROUPS) | {"experiment"}
    keys = [f"{g}={picked[g]}" for g in NAMED_GROUPS if g in picked and picked[g] != DEFAULT_CHOICES[g]]
    for key, value in parts.items():
        short = key.removeprefix("model.")
        keys.append(f"{short if key.startswith('model.') and short not in reserved else key}={value}")
    return shorten(",".join([*words, *sorted(keys)]))


# ---------------------------------------------------------------------------------------------
# finding the folder


def _has_results(folder: Path) -> bool:
    return any(os.path.lexists(folder / f) for f in RESULTS)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _parts_run_id(records: Path) -> str | None:
    """The run id in a run's first results part (a regular file; the records a run writes)."""
    # lazy: pyarrow only where an older folder is looked at
    import pyarrow.parquet as pq

    if _regular(records):
        files = [records]
    elif records.is_dir() and not records.is_symlink():
        files = sorted(p for p in records.iterdir() if p.name.startswith("part-") and _regular(p))[:1]
    else:
        return None
    try:
        ids = pq.read_table(files[0], columns=["run_id"]).column("run_id").to_pylist() if files else []
    except Exception:  # not a parquet file, or no run_id column: not a run's records
        return None
    return ids[0] if ids and len(set(ids)) == 1 else None


@lru_cache(maxsize=64)
def _checkpoint_run_id(path: Path, version: tuple[int, int, int]) -> str | None:
    """The run id of a checkpoint file (``version``: its inode, size and time, so a changed file is read again)."""
    # lazy: torch only where an older folder is looked at
    from sharpcomp.results.run_state import read_checkpoint

    try:
        return read_checkpoint(path)["run_id"]
    except Exception:  # refused or unreadable: not a run's resume point
        return None


def holds_run(folder: Path, run_id: str) -> bool:
    """Whether ``folder`` is a real folder (not a link) whose checkpoint or results parts are run ``run_id``'s."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    checkpoint = folder / RESULTS[1]
    if _regular(checkpoint):
        info = os.lstat(checkpoint)
        if _checkpoint_run_id(checkpoint, (info.st_ino, info.st_size, info.st_mtime_ns)) == run_id:
            return True
    return _parts_run_id(folder / RESULTS[0]) == run_id


def _recorded_name(folder: Path) -> str | None:
    """The canonical name of the settings recorded in a run folder by Hydra (None when unreadable, or when
    they hold an interpolation other than a reference to another key)."""
    recorded = read_recorded(folder)
    if recorded is None:
        return None
    cfg, choices, searchpath = recorded
    try:  # resolved only when it cannot grow: ${a}${a} or a list of references doubles at every level
        if not plain_references({k: v for k, v in cfg.items() if k not in EXCLUDED}):
            return None
        return canonical_name(plain_config(OmegaConf.create(cfg)), choices, tuple(searchpath))
    except Exception:
        return None


def folder_name(name: str, literal: str, parent: str | Path | None, run_id: Callable[[], str | None]) -> str:
    """The folder to use under ``parent``: ``name`` (canonical) unless it has no results and an older
    folder holds this run's (``run_id()``): the literal name's, or a sibling whose recorded settings match."""
    if parent is None:
        return name
    parent = Path(str(parent))
    if _has_results(parent / name) or not parent.is_dir():
        return name
    own = None
    if literal != name and _has_results(parent / literal):
        own = run_id()
        if own is not None and holds_run(parent / literal, own):
            return literal
    for sibling in sorted(parent.iterdir()):
        if sibling.name in (name, literal) or sibling.is_symlink() or not sibling.is_dir():
            continue  # a link is never followed: a planted one must not capture the run
        if _has_results(sibling) and _recorded_name(sibling) == name:
            own = own or run_id()
            if own is not None and holds_run(sibling, own):
                return sibling.name
    return name


def register_resolvers() -> None:
    """Register the resolver ``conf/train.yaml`` uses for run folders (``sc_run_name``: :func:`resolve`).

    Whatever composes the config with Hydra's own node and reads its folders calls it first.
    """
    if not OmegaConf.has_resolver("sc_run_name"):
        OmegaConf.register_new_resolver("sc_run_name", resolve)


def _run_id(cfg: dict) -> str | None:
    try:
        return run_identity(cfg)["run_id"]
    except Exception:  # settings the checks refuse: no run of them to find
        return None


def resolve(overrides: str, parent=None, *, _root_) -> str:
    """The ``sc_run_name`` resolver: the folder name of the config being composed (``_root_``)."""
    hydra = _root_.hydra if "hydra" in _root_ else None
    choices = OmegaConf.to_container(hydra.runtime.choices) if hydra is not None else {}
    searchpath = tuple(hydra.searchpath) if hydra is not None and hydra.get("searchpath") else ()
    cfg = plain_config(_root_)
    name = canonical_name(cfg, choices, searchpath)
    return folder_name(name, literal_name(overrides), parent, lambda: _run_id(cfg))


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
