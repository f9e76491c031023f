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
from sharpcomp.results.kept_weights import KeptError, kept_iterations, read_weights
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
    bad = code_keys({k: v for k, v in cfg.items() if k not in ("model", "optim")}, "config") or _optim_code(cfg)
    if bad:
        raise ConfigError(f"refusing the stored config: {bad} would choose code; a stored config never does")
    try:
        model = stored_model_config(cfg.get("model"), target)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    here = {k: os.environ.get(f"SHARPCOMP_{k.split('_')[0].upper()}") for k in ("data_dir", "cache_dir")}
    return settings({**cfg, "model": model, **here})  # as conf/train.yaml reads them: the environment


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
             iteration: int | None = None) -> LoadedRun:
    """Load the network a run folder holds, with its settings, dataset, train sample set and loss.

    The network is the run's last saved state (its ``checkpoint.pt``), or with ``iteration`` the weights
    kept at that iteration (``save_every``; :mod:`sharpcomp.results.kept_weights`; the last saved state
    serves for its own iteration). ConfigError (one line) when no weights were kept there.

    ``data`` skips loading the dataset (it must be the one the run was trained on). FileNotFoundError
    when the folder has no checkpoint; ConfigError for a file that is not a sharpcomp checkpoint, or a
    stored config that would choose code (:func:`stored_settings`; ``target``: the user's own model
    ``_target_``, named on the command line, for a network that is not built in).
    """
    check_members(Path(run_dir))
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_checkpoint(path)
    s = stored_settings(state.get("config", {}), target)
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
