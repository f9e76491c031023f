"""The one place that reads a ``train`` config: checks it and turns it into typed :class:`Settings`.

Defaults live in ``conf/train.yaml`` (and its groups) alone. A config composed by Hydra has every key;
a partial mapping (a notebook, an old checkpoint's config) is completed from the composed defaults
(:func:`defaults`), so no default is ever typed twice. Every check gives one line
(:class:`ConfigError`), before any data is loaded or any run folder is touched.

Run identity: ``run_id`` is a digest of the settings that define a run's trajectory (``steps``
excluded: a longer rerun extends a run). Keys added after results existed (``NEW_KEYS``) take part
only when they differ from the value that reproduces the older runs, so old run folders keep their
ids and resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from sharpcomp.checkpoints import MAX_STEPS, CheckpointSchedule
from sharpcomp.measure_index import MEASURES
from sharpcomp.measure_names import builtin_names, check_own, own_target, plugin_names
from sharpcomp.schedule import ScheduleError, check_schedule, learning_rate
from sharpcomp.schedule import identity_view as schedule_view

if TYPE_CHECKING:  # torch is imported where it is used: composing the config and --help do without it
    import torch

CONFIG_MODULE = "sharpcomp.conf"  # conf/, shipped as this package
LOSSES = ("mse", "ce")
SAMPLE_SETS = ("train", "test", "misclassified")
BUILTIN_MODELS = ("vgg10", "mlp4")
# keys that joined the config after runs were recorded, with the value under which old runs were made
# (model and data keys: ``models.identity_view``, ``data.identity_view``)
NEW_KEYS = {"allow_tf32": None, "schedule": None}
# metrics keys that add or split work but never change a run's trajectory or existing columns
IDENTITY_FREE_METRIC_KEYS = ("chunk_size", "network_wide")


class ConfigError(ValueError):
    """Invalid settings; the message is one line meant for the user."""


def plain(cfg) -> dict:
    """A plain dict from a DictConfig or mapping (interpolations resolved)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return json.loads(json.dumps(cfg, default=str))


def compose(overrides: Sequence[str] = ()):
    """The ``train`` config (a DictConfig) composed from ``conf/`` with command-line style ``overrides``.

    For use outside any running Hydra app. Hydra's own node (output folders, launcher) is left out: its
    run folder names come from :mod:`sharpcomp.results.run_names`.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return hydra_compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@lru_cache(maxsize=8)
def _default_json(overrides: tuple[str, ...], environment: tuple) -> str:
    """The composed defaults as JSON; ``environment`` (the variables conf/ reads) is part of the cache key."""
    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app: compose with its own instance
        return json.dumps(plain(hydra_compose("train", overrides=list(overrides))))
    return json.dumps(plain(compose(overrides)))


def defaults(extra: Sequence[str] = (), **groups: str) -> dict:
    """The composed ``conf/train.yaml`` (scale=quick), with config groups chosen by name.

    For example ``defaults(model="mlp4", data="fashion_mnist")``; ``extra``: further overrides, e.g.
    ``("+experiment=eos",)``.
    """
    environment = tuple(os.environ.get(k) for k in ("SHARPCOMP_DATA", "SHARPCOMP_CACHE"))
    overrides = tuple(f"{g}={v}" for g, v in sorted(groups.items())) + tuple(extra)
    return json.loads(_default_json(overrides, environment))


def complete(cfg: Mapping) -> dict:
    """``cfg`` with the keys it lacks taken from :func:`defaults`.

    Mappings are merged key by key; the defaults are those of the model, data and optim groups of the same
    name as ``cfg``'s, where conf/ has them.
    """
    def merge(base, over):
        if not isinstance(base, dict) or not isinstance(over, dict):
            return over
        return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}

    cfg = plain(cfg)
    if _has_all(cfg):
        return cfg
    groups = {}
    for group in ("model", "data", "optim", "schedule"):
        name = (cfg.get(group) or {}).get("name")
        if name and (resources.files(CONFIG_MODULE) / group / f"{name}.yaml").is_file():
            groups[group] = name
    return merge(defaults(**groups), cfg)


@lru_cache(maxsize=1)
def _yaml_keys() -> tuple[frozenset, frozenset]:
    """The top-level keys of a composed ``train`` config, and its ``metrics`` keys.

    Those of ``conf/train.yaml``, read, not composed (milliseconds), and the groups that become keys.
    """
    yaml = OmegaConf.load(resources.files(CONFIG_MODULE) / "train.yaml")
    groups = {"data", "model", "optim", "schedule"}
    return (frozenset(yaml) - {"defaults", "hydra"}) | groups, frozenset(yaml["metrics"])


def _has_all(cfg: dict) -> bool:
    top, metrics = _yaml_keys()
    return top <= set(cfg) and isinstance(cfg["metrics"], dict) and metrics <= set(cfg["metrics"])


def _number(key: str, value, kind=float, low=None, allow_none=False, strict=True):
    if value is None and allow_none:
        return None
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConfigError(f"{key} must be {what}{' or null' if allow_none else ''}, got {value!r}")
    if low is not None and not (math.isfinite(value) and (value > low if strict else value >= low)):
        raise ConfigError(f"{key} must be {'>' if strict else '>='} {low}, got {key}={value}")
    return kind(value)


def _choice(key: str, value, options) -> str:
    if value not in options:
        raise ConfigError(f"unknown {key} {value!r} (choose from {', '.join(map(str, options))})")
    return value


def _flag(key: str, value, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false{' or null' if allow_none else ''}, got {value!r}")
    return value


@dataclass(frozen=True)
class MetricSettings:
    """The checked ``metrics`` settings of a run."""
    n: int
    sample_sets: tuple[str, ...]
    layer: str | None
    log_volume_rank: int | None
    chunk_size: int | None
    dtype: torch.dtype
    flatness_every: int
    flatness: dict = field(hash=False)  # measure name -> its config entry (checked by the measures' registry)
    network_wide: bool = True

    def options(self) -> dict:
        """``metrics.compute_metrics`` keyword arguments."""
        return {"layer": self.layer, "log_volume_rank": self.log_volume_rank, "chunk_size": self.chunk_size,
                "dtype": self.dtype}


def flatness_by_name(flatness) -> dict:
    """``metrics.flatness`` with every measure under its name (an earlier key is read as the name it has now).

    ConfigError for a key that names no measure or a measure named twice. Besides the built-in measures, an
    entry may name a measure of the user's own (``{_target_: ...}``) or an installed package's (entry points):
    :mod:`sharpcomp.measure_names`. Only the structure is checked here; the entries' settings are checked by
    the measures themselves (:func:`sharpcomp.measures.registry.plan`).
    """
    flatness = flatness or {}
    if not isinstance(flatness, Mapping):
        raise ConfigError(f"metrics.flatness must be a mapping of measures, got {flatness!r}")
    names = builtin_names()
    plugins = plugin_names()
    out: dict = {}
    for key, value in flatness.items():
        if own_target(value) is not None:
            try:
                check_own(key, value)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            out[key] = value
            continue
        if key not in names and key not in plugins:
            known = ", ".join([*dict.fromkeys(names.values()), *plugins])
            raise ConfigError(f"unknown metrics.flatness key '{key}' (known: {known}; a measure of your own: "
                              f"metrics.flatness.{key}={{_target_: mypkg.measures.MEASURE}})")
        name = names.get(key, key)
        if out.get(name) is not None and value is not None:
            raise ConfigError(f"metrics.flatness.{name} is set twice (as {key} too)")
        if value is not None or name not in out:
            out[name] = value
    return out


def metric_settings(m: Mapping) -> MetricSettings:
    """The ``metrics`` block of a config, checked."""
    # lazy: --help imports this module and stays free of torch and numpy
    import torch

    sets = m["sample_sets"]
    if not sets:
        raise ConfigError("metrics.sample_sets must name at least one of train, test, misclassified")
    for s in sets:
        _choice("sample set", s, SAMPLE_SETS)
    layer = m["layer"]
    if layer is not None and not isinstance(layer, str):
        raise ConfigError(f"metrics.layer must be a layer name or null, got {layer!r}")
    flatness = flatness_by_name(m["flatness"])
    return MetricSettings(
        n=_number("metrics.n", m["n"], int, 0), sample_sets=tuple(sets), layer=layer,
        log_volume_rank=_number("metrics.log_volume_rank", m["log_volume_rank"], int, 0, allow_none=True),
        chunk_size=_number("metrics.chunk_size", m["chunk_size"], int, 0, allow_none=True),
        dtype={"float32": torch.float32, "float64": torch.float64}[_choice("metrics.dtype", m["dtype"],
                                                                         ("float32", "float64"))],
        flatness_every=_number("metrics.flatness_every", m["flatness_every"], int, 0, strict=False),
        flatness=dict(flatness),
        network_wide=_flag("metrics.network_wide", m.get("network_wide", True)))


STOP_CRITERIA = ("train_loss", "running_loss", "train_error")  # ``stop.*``: what a run is trained to


@dataclass(frozen=True)
class StopRule:
    """``stop``: train to a criterion.

    A threshold per quantity (None: not used); a run stops at the first checkpoint after iteration 0 where
    one of the quantities it sees is at or below its threshold.
    """

    train_loss: float | None = None
    running_loss: float | None = None
    train_error: float | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, k) is not None for k in STOP_CRITERIA)

    def reached(self, running_loss: float, train_loss: float | None, train_acc: float | None) -> str | None:
        """The first criterion met by these values (the whole-set ones are None off their cadence), or None."""
        values = {"train_loss": train_loss, "running_loss": running_loss,
                  "train_error": None if train_acc is None else 1.0 - train_acc}
        for key in STOP_CRITERIA:
            limit, value = getattr(self, key), values[key]
            if limit is not None and value is not None and value <= limit:  # NaN never reaches a threshold
                return key
        return None


def _stop(c) -> StopRule:
    c = c or {}
    if not isinstance(c, Mapping):
        raise ConfigError(f"stop must be a mapping of criteria ({', '.join(STOP_CRITERIA)}), got {c!r}")
    unknown = [k for k in c if k not in STOP_CRITERIA]
    if unknown:
        raise ConfigError(f"unknown stop criterion '{unknown[0]}' (choose from {', '.join(STOP_CRITERIA)})")
    return StopRule(**{k: _number(f"stop.{k}", c.get(k), float, 0, allow_none=True, strict=False)
                       for k in STOP_CRITERIA})


@dataclass(frozen=True)
class Settings:
    """A run's settings, checked. ``raw``: the complete plain config (stored in checkpoints)."""

    raw: dict = field(hash=False, repr=False)
    lr: float
    batch: int
    seed: int
    steps: int
    log_every: int
    eval_every: int
    loss: str
    optim: dict = field(hash=False)
    device: str
    threads: int | None
    deterministic: bool
    progress: bool
    allow_tf32: bool | None
    cuda_graph: str
    compile: bool
    resume_every: float
    metrics: MetricSettings
    model: dict = field(hash=False)
    data: dict = field(hash=False)
    schedule: dict = field(default_factory=lambda: {"name": "constant", "warmup": 0}, hash=False)
    save_every: int | tuple[int, ...] | None = None  # the iterations whose weights are kept (None: none)
    save_max_gb: float = 1.0
    stop: StopRule = StopRule()

    @property
    def optim_name(self) -> str:
        """The optimizer's name (``sgd``, ``adam``, ``adamw``, ``sam`` or ``custom``)."""
        return self.optim["name"]

    def lr_at(self, it: int) -> float:
        """The learning rate of step ``it`` (the step from iteration ``it`` to ``it + 1``) under the schedule."""
        return learning_rate(self.schedule, self.lr, self.steps, it)

    @property
    def checkpoints(self) -> CheckpointSchedule:
        """Iterations with a checkpoint: 0, every ``log_every``, and ``steps`` (by arithmetic, never a list)."""
        return CheckpointSchedule(self.steps, self.log_every)

    def num_outputs(self, num_classes: int) -> int:
        """The network's number of outputs for a dataset of ``num_classes`` classes."""
        out = self.model.get("outputs", 10)
        return num_classes if out == "classes" else int(out)

    def whole_set_due(self, it: int) -> bool:
        """Whether checkpoint ``it`` evaluates the whole train and test sets."""
        return self.checkpoints.index(it) % self.eval_every == 0 or it == self.steps

    def flatness_due(self, it: int) -> bool:
        """Whether checkpoint ``it`` computes the flatness measures (``flatness_every`` 0: at the last only)."""
        every = self.metrics.flatness_every
        return it == self.steps or (every > 0 and self.checkpoints.index(it) % every == 0)


def _device(name) -> str:
    # lazy: --help imports this module and stays free of torch and numpy
    import torch

    name = str(name)
    if name != "auto":
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", name):  # mps, meta, xla ...: not devices sharpcomp trains on
            raise ConfigError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' requested but CUDA is not available here")
    return name


def _training(c: dict, steps: int) -> dict:
    """The optimiser, the schedule and the weights kept (``save_every``), checked (ConfigError, one line)."""
    # lazy: --help imports this module and stays free of torch and numpy
    from sharpcomp.kept_schedule import KeptError, check_save_every
    from sharpcomp.optim import OptimError, check_optim_config

    try:
        return {"optim": check_optim_config(c["optim"]), "schedule": check_schedule(c["schedule"], steps),
                "save_every": check_save_every(c["save_every"], steps)}
    except (OptimError, ScheduleError, KeptError) as exc:
        raise ConfigError(str(exc)) from None


def _model(m: Mapping) -> dict:
    # lazy: --help imports this module and stays free of torch and numpy
    from sharpcomp.models import ModelError, check_model_config

    try:
        check_model_config(m)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    return dict(m)


def _data(d: Mapping, data_dir) -> dict:
    # lazy: --help imports this module and stays free of torch and numpy
    from sharpcomp.data.datasets import check_data_config
    from sharpcomp.data.sources import DataError

    try:
        check_data_config(d, data_dir)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    return dict(d)


SEED_MAX = 2**62  # seeds reach torch generators (64-bit) with offsets added


def _steps(value) -> int:
    steps = _number("steps", value, int, 0)
    if steps > MAX_STEPS:
        raise ConfigError(f"steps must be at most 10**12 (no checkpoint lies beyond it), got steps={steps}")
    return steps


def _train_size(data_cfg) -> int | None:
    """The size of a known dataset's whole training set (a class subset is smaller), before loading."""
    # lazy: --help imports this module and stays free of torch and numpy
    from sharpcomp.data.sources import KNOWN

    known = KNOWN.get(data_cfg.get("dataset", data_cfg.get("name"))) if isinstance(data_cfg, Mapping) else None
    return None if known is None else known.sizes[0]


def settings(cfg, n_train: int | None = None) -> Settings:
    """Check ``cfg`` (a ``train`` config, DictConfig or mapping) and return its :class:`Settings`.

    ``n_train`` (the training set's size, once known) also bounds the batch size.
    """
    c = complete(cfg)
    c["metrics"]["flatness"] = flatness_by_name(c["metrics"]["flatness"])
    lr = _number("lr", c["lr"])
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be > 0, got lr={lr}")
    batch = _number("batch", c["batch"], int)
    if batch <= 0:
        raise ConfigError(f"batch size must be > 0, got batch={batch}")
    if n_train is None:
        n_train = _train_size(c["data"])
    if n_train is not None and batch > n_train:
        raise ConfigError(f"batch size {batch} is larger than the training set ({n_train} samples)")
    seed = _number("seed", c["seed"], int)
    if abs(seed) > SEED_MAX:
        raise ConfigError(f"seed must be an integer between -2**62 and 2**62, got seed={seed}")
    threads = c["threads"]
    if threads is not None:
        threads = _number("threads", threads, int, 0)
    tf32 = _flag("allow_tf32", c["allow_tf32"], allow_none=True)
    steps = _steps(c["steps"])
    return Settings(
        raw=c, lr=float(lr), batch=batch, seed=seed,
        steps=steps, log_every=_number("log_every", c["log_every"], int, 0),
        eval_every=_number("eval_every", c["eval_every"], int, 0), loss=_choice("loss", c["loss"], LOSSES),
        device=_device(c["device"]), threads=threads,
        deterministic=_flag("deterministic", c["deterministic"]), progress=_flag("progress", c["progress"]),
        allow_tf32=tf32, cuda_graph=_choice("cuda_graph", c["cuda_graph"], ("auto", "off")),
        compile=_flag("compile", c["compile"]), metrics=metric_settings(c["metrics"]),
        resume_every=_number("resume_every", c["resume_every"], float, 0, strict=False),
        model=_model(c["model"]), data=_data(c["data"], c.get("data_dir")), stop=_stop(c.get("stop")),
        **_training(c, steps), save_max_gb=_number("save_max_gb", c["save_max_gb"], float, 0, strict=False))


def validate_config(cfg, n_train: int | None = None) -> None:
    """Raise ConfigError with one clear line for settings no run can use."""
    settings(cfg, n_train)


def select_device(name: str) -> torch.device:
    """The device a ``device`` setting names (``auto``: CUDA when present, else the CPU)."""
    # lazy: --help imports this module and stays free of torch and numpy
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _drop_new_keys(keys: dict) -> dict:
    # lazy: --help imports this module and stays free of torch and numpy
    from sharpcomp.data.datasets import identity_view as data_view
    from sharpcomp.models import identity_view as model_view
    from sharpcomp.optim import identity_view as optim_view

    keys = json.loads(json.dumps(keys, default=str))
    keys["model"], keys["data"] = model_view(keys["model"]), data_view(keys["data"])
    keys["optim"] = optim_view(keys["optim"])
    for key, old in NEW_KEYS.items():
        if keys.get(key, object()) == old:
            del keys[key]
    flat = (keys.get("metrics") or {}).get("flatness")
    if isinstance(flat, dict):  # under the keys run ids have always used; off measures only where they always were
        keys["metrics"]["flatness"] = {_id_key(k): v for k, v in flatness_by_name(flat).items()
                                       if v is not None or _in_every_id(k)}
    return keys


def _id_key(name: str) -> str:
    """The key under which measure ``name``'s entry enters run ids (a measure of one's own: its name)."""
    return MEASURES[name]["id_key"] if name in MEASURES else name


def _in_every_id(name: str) -> bool:
    return name in MEASURES and MEASURES[name]["in_every_id"]


def run_identity(cfg) -> dict:
    """``{"run_id", "settings"}``: the settings that define a run's trajectory and their digest."""
    c = cfg.raw if isinstance(cfg, Settings) else complete(cfg)
    keys = {
        "data": c["data"], "model": c["model"], "lr": c["lr"], "batch": c["batch"], "seed": c["seed"],
        "loss": c["loss"], "optim": c["optim"], "log_every": c["log_every"], "eval_every": c["eval_every"],
        "metrics": {k: v for k, v in c["metrics"].items() if k not in IDENTITY_FREE_METRIC_KEYS},
        "allow_tf32": c.get("allow_tf32"),  # a tracked loop's schedule is its own: none recorded
        "schedule": schedule_view(c["schedule"], c["steps"]) if c.get("schedule") else None,
    }
    stop = {k: v for k, v in (c.get("stop") or {}).items() if v is not None}
    if stop:  # a stopping rule ends a run elsewhere; runs without one keep the ids they always had
        keys["stop"] = stop
    keys = _drop_new_keys(keys)
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:8]
    run_id = f"{c['data']['name']}-{c['model']['name']}-lr{c['lr']}-b{c['batch']}-s{c['seed']}-{digest}"
    return {"run_id": run_id, "settings": keys}
