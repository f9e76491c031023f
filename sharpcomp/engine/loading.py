"""A trained run read back from its folder: the network, its settings, data, sample set and loss.

A run folder is untrusted input: nothing stored in it chooses code, and the data and cache folders are
this machine's, never the stored ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sharpcomp.data.datasets import Dataset
from sharpcomp.data.order import train_sample_indices
from sharpcomp.engine.setup import build, load_data, prepare_runtime_data
from sharpcomp.losses import make_loss
from sharpcomp.models import ModelError, code_keys, stored_model_config
from sharpcomp.results.run_state import CHECKPOINT_FILE, check_members, read_checkpoint
from sharpcomp.settings import ConfigError, Settings, settings


def stored_settings(cfg, target: str | None = None) -> Settings:
    """The settings of a config read from a run folder (a checkpoint's), made safe.

    Nothing in it chooses code (:func:`sharpcomp.models.stored_model_config`; ``target``: the user's own model
    ``_target_``, named on the command line), and the data and cache folders are this machine's
    (the environment's), never the stored ones. ConfigError (one line) otherwise.
    """
    if not isinstance(cfg, dict):
        raise ConfigError("the stored config is not a mapping")
    bad = code_keys({k: v for k, v in cfg.items() if k != "model"}, "config")
    if bad:
        raise ConfigError(f"refusing the stored config: {bad} would choose code; a stored config never does")
    try:
        model = stored_model_config(cfg.get("model"), target)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    here = {k: os.environ.get(f"SHARPCOMP_{k.split('_')[0].upper()}") for k in ("data_dir", "cache_dir")}
    return settings({**cfg, "model": model, **here})  # as conf/train.yaml reads them: the environment


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

    @property
    def config(self) -> dict:
        """The run's complete config (a plain dict)."""
        return self.settings.raw


def load_run(run_dir: str | Path, *, data: Dataset | None = None, target: str | None = None) -> LoadedRun:
    """Load the network a run folder holds, with its settings, dataset, train sample set and loss.

    The network is the run's last saved state (its ``checkpoint.pt``).

    ``data`` skips loading the dataset (it must be the one the run was trained on). FileNotFoundError
    when the folder has no checkpoint; ConfigError for a file that is not a sharpcomp checkpoint, or a
    stored config that would choose code (:func:`stored_settings`; ``target``: the user's own model
    ``_target_``, named on the command line, for a network that is not built in).
    """
    state, s = _stored(run_dir, target)
    cpu = torch.device("cpu")
    data = load_data(s, cpu) if data is None else prepare_runtime_data(data, cpu)
    model = build(s, data, cpu)
    model.load_state_dict(state["model_state"])
    model.eval()
    idx = train_sample_indices(s.seed, len(data.train_x), s.metrics.n)
    return LoadedRun(model, s, int(state["iteration"]), data, data.train_x[idx], data.train_y[idx],
                     make_loss(s.loss, s.num_outputs(data.num_classes)))


def _stored(run_dir: str | Path, target: str | None) -> tuple[dict, Settings]:
    check_members(Path(run_dir))
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_checkpoint(path)
    return state, stored_settings(state.get("config", {}), target)


def run_settings(run_dir: str | Path, *, target: str | None = None) -> Settings:
    """The settings a run folder's checkpoint records (checked as :func:`load_run` checks them), without
    loading its data or building its network."""
    return _stored(run_dir, target)[1]


def nonfinite_weights(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters and buffers that hold NaN or infinite values (a diverged run's)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
