"""The ``train`` command line, checked before Hydra starts: one line (with "did you mean") for bad input.

Every override is composed for every value of every sweep (:func:`check_overrides`) and checked as a run
would check it (:func:`sharpcomp.engine.setup.check_config`), with what only the command line knows: the
output folder can be written and lies outside any run's records, no file the run would write there is
a symbolic link, a discovered run folder is not a link either, the data folder named exists, the
launcher's settings are usable. Nothing is written: the checks make and remove what they try.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sharpcomp.measure_index import MEASURES
from sharpcomp.measure_names import builtin_names
from sharpcomp.options import group_options
from sharpcomp.results.own_files import probe_writable
from sharpcomp.results.run_names import register_resolvers
from sharpcomp.settings import CONFIG_MODULE, ConfigError, _yaml_keys
from sharpcomp.usage import UsageError, check_output_place, did_you_mean

GROUPS = ("data", "model", "scale", "optim", "schedule", "logger", "experiment")
HYDRA_FILES = (".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")
# keys of Hydra's own node that choose the run's folder: when one is given, the folder is the user's choice
FOLDER_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")
ENSEMBLE_IMPLS = ("auto", "grouped", "vmap")


def expand(overrides: list[str]) -> list[list[str]]:
    """Override lists to compose for checking: every value of every sweep at least once."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise UsageError(str(exc).strip().splitlines()[0]) from None
    choices = []
    for ov in parsed:
        if ov.is_sweep_override():
            key = ov.get_key_element()
            try:
                values = list(ov.sweep_string_iterator())
            except Exception:
                raise UsageError(f"cannot expand sweep '{ov.input_line}'") from None
            choices.append([f"{key}={v}" for v in values])
        else:
            choices.append([ov.input_line])
    combos = list(itertools.islice(itertools.product(*choices), 64))
    # sweeps longer than the first 64 combinations: still check each of their values once
    width = max((len(c) for c in choices), default=1)
    for i in range(width):
        combos.append(tuple(c[min(i, len(c) - 1)] for c in choices))
    return [list(c) for c in dict.fromkeys(combos)]


def known_keys() -> list[str]:
    """Every key of the default config, dotted, with every mapping above a leaf (for "did you mean")."""
    # lazy: only a misspelt key needs the composed config
    from sharpcomp.options import options

    keys = [k.removesuffix(".*") for k, _, _ in options()]
    return list(dict.fromkeys([*GROUPS, *(".".join(k.split(".")[:i]) for k in keys
                                          for i in range(1, k.count(".") + 2))]))


def explain(exc: Exception) -> str:
    """One line for a composition error of Hydra's: the unknown group option or key, with "did you mean"."""
    msg = str(exc).strip()
    first = msg.splitlines()[0] if msg else type(exc).__name__
    m = re.search(r"Could not find '(hydra/[^/']+)/([^']+)'", msg) or re.search(
        r"Could not find '([^/']+)/([^']+)'", msg)
    if m:
        group, name = m.groups()
        options = hydra_options(group) if group.startswith("hydra/") else group_options(group)
        if options:
            return f"unknown {group} '{name}'{did_you_mean(name, options)} (choose from {', '.join(options)})"
        return f"unknown option '{group}={name}'"
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        key = m.group(1)
        hint = "" if key.startswith("hydra.") else did_you_mean(key, known_keys())
        return f"unknown option '{key}'{hint} (see `sharpcomp --help`; a new key needs a leading +)"
    m = re.match(r"Error merging override (\S+)", msg)
    if m and exc.__cause__ is not None and str(exc.__cause__).strip():
        return f"cannot set {m.group(1)}: {str(exc.__cause__).strip().splitlines()[0]}"
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", msg)
    if m:
        return f"option '{m.group(1)}' already exists: set it without the leading +"
    return first


def hydra_options(group: str) -> list[str]:
    """Options of a Hydra config group (e.g. hydra/launcher): sharpcomp's and installed plugins'."""
    try:
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    except Exception:
        return []


def check_writable(folder: str) -> None:
    """Prove the output folder can be made and written (then remove what the check made)."""
    path = Path(folder).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create output folder {path}: {existing} is not a folder")
    made = []
    try:
        for p in reversed([path, *path.parents]):
            if not p.exists():
                p.mkdir()
                made.append(p)
        probe_writable(path)  # a nameless file: no link at a guessable name is followed
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    finally:
        for p in reversed(made):
            try:
                p.rmdir()
            except OSError:
                pass


def implied_custom(overrides: list[str]) -> list[str]:
    """``model._target_=X`` without a ``model=`` choice means one's own network.

    ``model=custom`` is implied (its ``outputs: classes``, label ``custom``), so vgg10's keys do not
    reach X. A ``_target_`` naming a built-in's own callable keeps that built-in. Likewise
    ``optim._target_=X`` without an ``optim=`` choice implies ``optim=custom`` (:func:`implied_custom_optim`).
    """
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.models import BUILTIN

    overrides = implied_custom_optim(overrides)
    keys = [o.split("=", 1) for o in overrides if "=" in o]
    targets = [v for k, v in keys if k.lstrip("+~") == "model._target_"]
    chosen = any(k.lstrip("+~") == "model" for k, _ in keys) or any(
        k.lstrip("+~") == "experiment" for k, _ in keys)
    if not targets or chosen or all(t in (b[0] for b in BUILTIN.values()) for t in targets):
        return overrides
    return ["model=custom", *overrides]


def implied_custom_optim(overrides: list[str]) -> list[str]:
    """``optim._target_=X`` without an ``optim=`` choice means one's own optimiser: ``optim=custom`` is
    implied (with ``optim=sam``, X is SAM's base: ``optim.base=custom``)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    if "optim._target_" not in keys or "optim" in keys:
        return overrides
    return ["optim=custom", *overrides]


def check_links(job_dir: str, discovered: bool, names: tuple[str, ...] | None = None) -> None:
    """UsageError when a file the command would write in the job's folder is a symbolic link (Hydra's
    ``.hydra`` files included; ``names``: other files, or none), or when a folder sharpcomp found by itself
    (not named by the user) is one."""
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.results.run_state import MEMBERS

    if discovered and Path(job_dir).is_symlink():
        raise UsageError(f"refusing run folder {job_dir}: it is a symbolic link (to {os.readlink(job_dir)}); "
                         f"a run folder sharpcomp names must be a folder of its own (move the link away, or "
                         f"name a folder with hydra.run.dir=...)")
    for name in dict.fromkeys((*HYDRA_FILES, *MEMBERS)) if names is None else names:
        p = Path(job_dir) / name
        if p.is_symlink():
            raise UsageError(f"refusing run folder {job_dir}: {name} is a symbolic link (to {os.readlink(p)}); "
                             f"a run folder's files must be its own (move the link away)")


def job_dir(cfg, multirun: bool) -> str | None:
    """The job's output folder, or None where Hydra knows it only once the job runs."""
    try:
        if not multirun:
            return str(cfg.hydra.run.dir)
        return str(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))
    except Exception:  # a folder name Hydra only knows once the job runs
        return None


def check_appended(overrides: list[str]) -> None:
    """UsageError for an appended key (``+key=value``) that no part of the program reads.

    Allowed: a config group (``+experiment=fig1``), a model's or optimiser's own keyword argument
    (``+model.depth=3``, ``+optim.alpha=0.9``: read by the callable; the settings refuse a key a built-in
    optimiser does not take), a measure that is not built in (``+metrics.flatness.mine=...``, its entry
    checked with the settings) and Hydra's own settings.
    """
    top, metrics = _yaml_keys()
    for ov in OverridesParser.create().parse_overrides(overrides):
        if not ov.is_add():
            continue
        key = ov.get_key_element().lstrip("+")
        head, _, rest = key.partition(".")
        if key.startswith("hydra") or head in ("model", "optim") or (not rest and key in GROUPS):
            continue
        if head == "metrics" and rest.startswith("flatness.") and rest.count(".") == 1:
            continue
        known = (head in top and not rest) or (head == "metrics" and rest.split(".")[0] in metrics and
                                                 rest.count(".") == 0)
        hint = " (set it without the leading +)" if known else did_you_mean(key, known_keys())
        raise UsageError(f"unknown option '+{key}': no part of sharpcomp reads it{hint}; see `sharpcomp --help`")


def check_launcher(launcher) -> None:
    """UsageError for launcher settings no sweep can run with (joblib's ``n_jobs``, the ensemble's)."""
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if target.endswith("JoblibLauncher"):
        n = launcher.get("n_jobs")
        if isinstance(n, bool) or not isinstance(n, int) or n == 0:
            raise UsageError(f"hydra.launcher.n_jobs must be a non-zero integer (the number of processes; -1: one "
                             f"per CPU), got {n!r}")
    if target.endswith("EnsembleLauncher"):
        m = launcher.get("max_members")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise UsageError(f"hydra.launcher.max_members must be an integer >= 1, got {m!r}")
        impl = launcher.get("impl")
        if impl not in ENSEMBLE_IMPLS:
            raise UsageError(f"unknown hydra.launcher.impl {impl!r}{did_you_mean(str(impl), ENSEMBLE_IMPLS)} "
                             f"(choose from {', '.join(ENSEMBLE_IMPLS)})")
        if not isinstance(launcher.get("compile"), bool):
            raise UsageError(f"hydra.launcher.compile must be true or false, got {launcher.get('compile')!r}")


def check_data_dir(plain: dict, overrides: list[str]) -> None:
    """UsageError when ``data_dir`` names a folder that does not exist (the run would not read it)."""
    folder = plain.get("data_dir")
    if folder is None or Path(str(folder)).is_dir():
        return
    given = any(o.split("=", 1)[0].lstrip("+") == "data_dir" for o in overrides)
    where = "" if given else " (from SHARPCOMP_DATA)"
    raise UsageError(f"data_dir {folder}{where} is not a folder; name the folder that holds the datasets, or "
                     f"leave data_dir out to read the cache or download")


def _check_combo(combo: list[str], multirun: bool, first: bool) -> None:
    """Compose one combination of the overrides and check it (inside an initialised Hydra)."""
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.engine.setup import check_config

    if first:
        check_appended(combo)
    try:
        cfg = compose("train", overrides=combo, return_hydra_config=True)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    except Exception as exc:
        raise UsageError(explain(exc)) from None
    try:
        check_config(plain)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    check_launcher(cfg.hydra.get("launcher"))
    HydraConfig.instance().set_config(cfg)
    out = str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
    check_output_place(out, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    check_writable(out)
    if multirun:  # Hydra writes the sweep's config there with a plain open()
        check_links(out, discovered=False, names=("multirun.yaml",))
    folder = job_dir(cfg, multirun)
    if folder is not None:
        check_output_place(folder, "the run folder")
        named = any(o.split("=", 1)[0].lstrip("+") in FOLDER_KEYS for o in combo)
        # in a sweep, a link among a job's own files fails that job alone (its run refuses the folder)
        check_links(folder, discovered=not named, names=() if multirun else None)
    check_data_dir(plain, combo)


def check_overrides(overrides: list[str], multirun: bool = False) -> None:
    """Compose the train config for every sweep value and validate it; UsageError on the first problem."""
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for n, combo in enumerate(expand(overrides)):
                _check_combo(combo, multirun, n == 0)
    finally:
        GlobalHydra.instance().clear()


def check_composes(overrides: list[str]) -> None:
    """Only that the overrides compose (unknown keys and group options, with "did you mean"): what a view
    of the config (``--cfg``) needs before Hydra shows it."""
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for combo in expand(overrides):
                try:
                    compose("train", overrides=combo)
                except Exception as exc:
                    raise UsageError(explain(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def overrides_by_name(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides with the ``metrics.flatness`` keys as Hydra composes them.

    A measure's earlier key is written as its name, and the key of a measure that is not built in is
    appended (``+``: conf/ lists the built-in ones only).

    For example ``metrics.flatness.adaptive={}`` -> ``metrics.flatness.worst_case_adaptive={}``, and
    ``metrics.flatness.mine={_target_: mypkg.measures.MEASURE}`` -> ``+metrics.flatness.mine=...``.
    """
    aliases = {alias: name for name, m in MEASURES.items() for alias in m["aliases"]}
    builtin = builtin_names()
    out = []
    for arg in overrides:
        match = re.match(r"(\+{0,2}|~)metrics\.flatness\.(\w+)(.*)", arg, re.S)
        if match and match[2] in aliases:
            arg = f"{match[1]}metrics.flatness.{aliases[match[2]]}{match[3]}"
        elif match and not match[1] and match[2] not in builtin and match[3].startswith("="):
            arg = f"+{arg}"
        out.append(arg)
    return out
