"""A run's pieces before training: its dataset, its network, and every check made before a step is taken.

Each check raises :class:`~sharpcomp.settings.ConfigError` with one line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from sharpcomp.data.datasets import Dataset, known_shape, load_from_config
from sharpcomp.measures.registry import Plan, plan
from sharpcomp.measures.symmetry.graph import TraceError, analyse
from sharpcomp.models import ModelError, build_from_config, build_model, check_buildable
from sharpcomp.optim import OptimError, check_optimizer
from sharpcomp.results.kept_weights import KeptError, check_disk
from sharpcomp.results.own_files import probe_writable
from sharpcomp.settings import BUILTIN_MODELS, ConfigError, Settings, select_device, settings


def load_data(s: Settings, device: torch.device) -> Dataset:
    """The run's dataset, loaded (or read from the cache) onto ``device``."""
    return load_from_config(s.data, s.raw["data_dir"], s.raw["cache_dir"], device=device)


def build(s: Settings, data: Dataset, device: torch.device) -> nn.Module:
    """The run's network (seeded initial weights) on ``device``.

    ConfigError (one line) when the model config cannot give one that fits the data and the loss.
    """
    try:
        return build_from_config(s.model, s.num_outputs(data.num_classes), data.input_shape, seed=s.seed,
                                 device=device, num_classes=data.num_classes)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def initial_network(s: Settings, data: Dataset, device: torch.device) -> nn.Module:
    """The run's network at iteration 0 (:func:`build` from its seed), leaving torch's global random state as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return build(s, data, device)


def check_layer(s: Settings, model: nn.Module) -> None:
    """ConfigError unless ``metrics.layer`` names a submodule of ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    if s.metrics.layer is not None and s.metrics.layer not in names:
        raise ConfigError(f"metrics.layer '{s.metrics.layer}' is not a layer of {s.model['name']} "
                          f"(choose from {', '.join(names)})")


def check_config(cfg) -> Settings:
    """Every check that needs no data (one line each).

    The settings, and the network built on the meta device (without data, for a dataset of known
    shape): its arguments, output shape and representation layer.
    """
    s = settings(cfg)
    measure_plan(s)
    shape, classes = known_shape(s.data)
    try:
        model = check_buildable(s.model, s.num_outputs(classes or 10), shape, classes)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    if s.metrics.layer is not None and model is None and s.model["name"] in BUILTIN_MODELS:
        with torch.device("meta"):
            model = build_model(s.model["name"], 10, s.model.get("width", 1.0))
    if s.metrics.layer is not None and model is not None:
        check_layer(s, model)
    if model is not None:
        check_symmetry(s, model)
        check_kept_size(s, model)
    check_training(s)
    return s


def check_training(s: Settings) -> None:
    """The optimiser, imported and built once on a dummy parameter (ConfigError, one line)."""
    try:
        check_optimizer(s.optim, s.lr)
    except OptimError as exc:
        raise ConfigError(str(exc)) from None


def check_kept_size(s: Settings, model: nn.Module) -> None:
    """ConfigError when ``save_every`` would keep more than ``save_max_gb`` of weights (``model``: the
    run's network, on any device, the meta device too)."""
    try:
        check_disk(s.save_every, s.steps, model, s.save_max_gb)
    except KeptError as exc:
        raise ConfigError(str(exc)) from None


def measure_plan(s: Settings) -> Plan:
    """The run's switched-on ``metrics.flatness`` measures with their checked settings (ConfigError, one line)."""
    try:
        return plan(s.metrics.flatness)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_symmetry(s: Settings, model: nn.Module) -> None:
    """Check the network for the measures on the quotient by the rescaling symmetry.

    ConfigError when the network cannot be traced; one line naming the modules the analysis cannot see
    through (their units count as without symmetry).
    """
    on = [m.key for m, _ in measure_plan(s).entries if m.symmetry]
    if not on:
        return
    try:
        _, unknown = analyse(model)
    except TraceError as exc:
        raise ConfigError(f"{on[0]}: {exc}") from None
    if unknown:
        print(f"sharpcomp: {on[0]}: the rescaling symmetry analysis cannot see through "
              f"{', '.join(unknown)}; their units count as without symmetry", file=sys.stderr, flush=True)


def prepare_runtime(s: Settings, data: Dataset | None) -> tuple[torch.device, Dataset]:
    """Device, threads, determinism and training precision as the settings say.

    Returns the device and the dataset loaded onto (or moved to) it.
    """
    device = select_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    if s.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda" and s.allow_tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = s.allow_tf32
        torch.backends.cudnn.allow_tf32 = s.allow_tf32
    return device, load_data(s, device) if data is None else prepare_runtime_data(data, device)


def prepare_runtime_data(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its tensors on ``device``."""
    moved = (t.to(device) for t in (data.train_x, data.train_y, data.test_x, data.test_y))
    return Dataset(data.name, *moved, data.num_classes, data.source)


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and prove it writable, or raise ConfigError with one line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe_writable(run_dir)  # a nameless file: no link at a guessable name is followed
    except OSError as exc:
        raise ConfigError(f"cannot write to output folder {run_dir}: {exc.strerror or exc}") from None
