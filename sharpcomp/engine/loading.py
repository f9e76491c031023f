"""A trained run read back from its folder: the network, its settings, data, sample set and loss.

A run folder is untrusted input: nothing stored in it chooses code, and the data and cache folders are
this machine's, never the stored ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sharpcomp.data.datasets import Dataset
from sharpcomp.data.order import train_sample_indices
from sharpcomp.engine.setup import build, load_data, prepare_runtime_data
from sharpcomp.losses import make_loss
from sharpcomp.measure_names import TARGET, command_line_text, own_measures, shown_key
from sharpcomp.models import ModelError, code_keys, stored_model_config
from sharpcomp.results.kept_weights import KeptError, kept_iterations, read_weights
from sharpcomp.results.run_state import CHECKPOINT_FILE, check_members, read_checkpoint
from sharpcomp.settings import ConfigError, Settings, settings


class MeasureNotNamed(ConfigError):
    """A run folder names a measure of the user's own that the command line does not name."""


# what the stored config of a run recorded by a tracker in a loop of one's own says (sharpcomp.tracking)
RECORDED_BY_TRACKER = "sharpcomp.Tracker"


def stored_settings(cfg, target: str | None = None, measures: Mapping | None = None) -> Settings:
    """The settings of a config read from a run folder (a checkpoint's), made safe.

    Nothing in it chooses code (:func:`sharpcomp.models.stored_model_config`; ``target``: the user's own model
    ``_target_``, named on the command line; ``measures``: the ``metrics.flatness`` entries of measures of
    the user's own, named on the command line, :func:`own_measures_named`), and the data and cache folders
    are this machine's (the environment's), never the stored ones. ConfigError (one line) otherwise.
    """
    if not isinstance(cfg, dict):
        raise ConfigError("the stored config is not a mapping")
    if cfg.get("recorded_by") == RECORDED_BY_TRACKER:
        raise ConfigError("the run was recorded by sharpcomp.Tracker in a training loop of your own: its network "
                          "and data are your script's; measure its network with `sharpcomp measure "
                          "model=<your callable> weights=<run>/checkpoint.pt data=<data>`")
    cfg = own_measures_named(cfg, measures)
    flat = cfg.get("metrics", {}).get("flatness") or {}
    own = own_measures(flat)
    stored = {k: v for k, v in cfg.items() if k != "model"}
    if own:  # their _target_ is the command line's; their settings are data
        stored["metrics"] = {**stored["metrics"], "flatness": {
            k: ({kk: vv for kk, vv in v.items() if kk != TARGET} if k in own and isinstance(v, dict) else v)
            for k, v in flat.items()}}
    bad = code_keys({k: v for k, v in stored.items() if k != "optim"}, "config") or _optim_code(cfg)
    if bad:
        raise ConfigError(f"refusing the stored config: {bad} would choose code; a stored config never does")
    try:
        model = stored_model_config(cfg.get("model"), target)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    here = {k: os.environ.get(f"SHARPCOMP_{k.split('_')[0].upper()}") for k in ("data_dir", "cache_dir")}
    return settings({**cfg, "model": model, **here})  # as conf/train.yaml reads them: the environment


def own_measures_named(cfg: dict, measures: Mapping | None) -> dict:
    """``cfg`` (a stored config) with each measure of the user's own it switches on taken from the command line.

    ``measures``: ``metrics.flatness`` entries named on the command line, by a command that computes measures.
    A stored entry keeps its settings and takes its ``_target_`` from the command line's entry; one the command
    line does not name is refused (:class:`MeasureNotNamed`, one line): a stored config never chooses code.
    ``measures=None`` (a command that computes none of the run's measures, e.g. ``landscape``): the entries of
    measures of one's own are left out.
    """
    metrics = cfg.get("metrics")
    flat = metrics.get("flatness") if isinstance(metrics, dict) else None
    if not isinstance(flat, dict):
        return cfg
    own = own_measures({k: v for k, v in flat.items() if isinstance(k, str)})
    out = dict(flat)
    if measures is None:
        return {**cfg, "metrics": {**metrics, "flatness": {k: v for k, v in flat.items() if k not in own}}}
    for name, code in own.items():
        if name not in measures:
            how = command_line_text(name, flat[name])
            raise MeasureNotNamed(f"the run measured '{shown_key(name)}' with code of its own ({code}); a stored "
                                  f"config never chooses code: name it on the command line ({how}), or read its "
                                  f"columns as data (sharpcomp figures, runs)")
        entry = flat[name] if isinstance(flat[name], dict) else {}
        named = measures[name] if isinstance(measures[name], Mapping) else {}
        out[name] = {**{k: v for k, v in entry.items() if k != TARGET},
                     **({TARGET: named[TARGET]} if TARGET in named else {})}
    return {**cfg, "metrics": {**metrics, "flatness": out}}


def _optim_code(cfg: dict) -> str | None:
    """Where the stored optimiser config would choose code. Its ``_target_`` (a user's optimiser) is kept
    as a plain name for the run's identity: loading a run never builds its optimiser, so it imports nothing."""
    optim = cfg.get("optim")
    if not isinstance(optim, dict):
        return None
    target = optim.get("_target_")
    if target is not None and (not isinstance(target, str) or "${" in target):
        return "config.optim._target_"
    return code_keys({k: v for k, v in optim.items() if k != "_target_"}, "config.optim")


@dataclass
class LoadedRun:
    """A run folder's trained network and what it was trained with (:func:`load_run`)."""

    model: nn.Module  # the network at ``iteration``, in eval mode, on the CPU
    settings: Settings  # the run's checked settings (``settings.raw``: its complete config)
    iteration: int  # the iteration of the saved state
    data: Dataset  # the run's dataset (train and test tensors, number of classes, source)
    sample_x: torch.Tensor  # the train sample set the metrics are computed on (``metrics.n`` points)
    sample_y: torch.Tensor
    loss_fn: Callable  # the training loss, as a function of (outputs, labels)
    run_id: str = ""  # the run's identity (its checkpoint's)

    @property
    def config(self) -> dict:
        """The run's complete config (a plain dict)."""
        return self.settings.raw


def load_run(run_dir: str | Path, *, data: Dataset | None = None, target: str | None = None,
             measures: Mapping | None = None, iteration: int | None = None) -> LoadedRun:
    """Load the network a run folder holds, with its settings, dataset, train sample set and loss.

    The network is the run's last saved state (its ``checkpoint.pt``), or with ``iteration`` the weights
    kept at that iteration (``save_every``; :mod:`sharpcomp.results.kept_weights`; the last saved state
    serves for its own iteration). ConfigError (one line) when no weights were kept there.

    ``data`` skips loading the dataset (it must be the one the run was trained on). FileNotFoundError
    when the folder has no checkpoint; ConfigError for a file that is not a sharpcomp checkpoint, or a
    stored config that would choose code (:func:`stored_settings`; ``target``: the user's own model
    ``_target_``, named on the command line, for a network that is not built in).
    """
    state, s = _stored(run_dir, target, measures)
    cpu = torch.device("cpu")
    data = load_data(s, cpu) if data is None else prepare_runtime_data(data, cpu)
    weights, it = _weights(Path(run_dir), state, iteration)
    model = build(s, data, cpu)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ConfigError(f"the weights of iteration {it} in {run_dir} do not fit the run's network "
                          f"({str(exc).strip().splitlines()[0][:160]})") from None
    model.eval()
    idx = train_sample_indices(s.seed, len(data.train_x), s.metrics.n)
    return LoadedRun(model, s, it, data, data.train_x[idx], data.train_y[idx],
                     make_loss(s.loss, s.num_outputs(data.num_classes)), state["run_id"])


def _weights(run_dir: Path, state: dict, iteration: int | None) -> tuple[dict, int]:
    """The state dict to load and its iteration: the checkpoint's, or the one kept at ``iteration``."""
    last = int(state["iteration"])
    if iteration is None or (iteration == last and iteration not in kept_iterations(run_dir)):
        return state["model_state"], last
    try:
        return read_weights(run_dir, int(iteration), state["run_id"]), int(iteration)
    except KeptError as exc:
        raise ConfigError(str(exc)) from None


def _stored(run_dir: str | Path, target: str | None, measures: Mapping | None = None) -> tuple[dict, Settings]:
    check_members(Path(run_dir))
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_checkpoint(path)
    return state, stored_settings(state.get("config", {}), target, measures)


def run_settings(run_dir: str | Path, *, target: str | None = None) -> Settings:
    """The settings a run folder's checkpoint records (checked as :func:`load_run` checks them), without
    loading its data or building its network."""
    return _stored(run_dir, target)[1]


def nonfinite_weights(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters and buffers that hold NaN or infinite values (a diverged run's)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
