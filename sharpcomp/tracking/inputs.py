"""What a tracker is given, checked before training starts, and the run it describes.

Every check gives one line (:class:`~sharpcomp.settings.ConfigError`): a model in a broken state (no
parameters, none trainable, parameters on the meta device or not finite, a forward pass that fails or gives
no (batch, classes) outputs), samples that do not fit (inputs and labels of different lengths, labels that
are not class indices of the outputs, test inputs of another shape than the training ones), unknown or
badly set measures (the registry's own checks and lines, as for ``metrics.flatness`` in a config).

The run's settings are a ``train`` config's: the ``metrics`` block defaults to ``conf/train.yaml``'s, the
measures are its ``metrics.flatness`` entries, and the rest says what the user's loop is (names of the data
and the network, learning rate, batch size, seed, loss and optimiser by name, the checkpoint cadence).
They give the run folder its identity columns and ``run_id`` as they do for ``sharpcomp train``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.loading import RECORDED_BY_TRACKER
from sharpcomp.engine.setup import check_layer, check_symmetry
from sharpcomp.losses import make_loss
from sharpcomp.measures.registry import Plan, plan
from sharpcomp.settings import SEED_MAX, ConfigError, Settings, defaults, metric_settings
from sharpcomp.tracking.untouched import untouched

Batch = tuple[torch.Tensor, torch.Tensor]
# what the run folder's stored config says recorded it (``sharpcomp.engine.loading`` reads it)


@dataclass(frozen=True)
class Loop:
    """What the user's training loop is, as the records name it."""

    data: str = "custom"
    model: str | None = None  # default: the network's class name, lower case
    lr: float | None = None  # default: the optimizer's first learning rate
    batch: int = 1
    seed: int = 0
    steps: int = 1
    every: int = 1
    eval_every: int = 1


def _positive(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_model(model) -> None:
    """ConfigError (one line) for a network in a state no measure can use."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.named_parameters())
    if not params:
        raise ConfigError("the model has no parameters")
    if not any(p.requires_grad for _, p in params):
        raise ConfigError("no parameter of the model requires a gradient: the measures need trainable parameters")
    for name, p in params:
        if p.device.type == "meta":
            raise ConfigError(f"parameter {name} is on the meta device (no values yet)")
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            raise ConfigError(f"parameter {name} holds NaN or infinite values")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pair(name: str, pair, device: torch.device) -> Batch:
    """A (inputs, labels) pair on ``device``, checked: tensors of one length, labels integer class indices."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(torch.is_tensor(t) for t in pair):
        raise ConfigError(f"{name} must be a pair of tensors (inputs, labels)")
    x, y = pair
    if x.dim() < 1 or y.dim() != 1 or len(x) != len(y):
        raise ConfigError(f"{name}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                          f"(labels: one class index per input)")
    if len(x) == 0:
        raise ConfigError(f"{name} holds no samples")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ConfigError(f"{name}: labels must be integer class indices, got {y.dtype}")
    return x.detach().to(device), y.detach().to(device=device, dtype=torch.long)


def check_samples(model: nn.Module, train: Batch, test: Batch | None) -> tuple[Batch, Batch | None, int]:
    """The train and test samples on the model's device, and the number of classes the outputs give.

    One forward pass on two training inputs (eval mode, nothing changed): it must give (2, classes)
    finite outputs, and every label must be a class index below ``classes``.
    """
    device = _device(model)
    train = _pair("train_samples", train, device)
    test = None if test is None else _pair("test_samples", test, device)
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise ConfigError(f"test_samples: inputs of shape {tuple(test[0].shape[1:])}, the training inputs' "
                          f"are {tuple(train[0].shape[1:])}")
    try:
        with untouched(model), torch.no_grad():
            out = model.eval()(train[0][:2])
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"the model fails on two training inputs of shape {tuple(train[0][:2].shape)}: "
                          f"{type(exc).__name__}: {why}") from None
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != len(train[0][:2]):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(f"the model gives outputs of shape {shape} for 2 inputs; the measures need "
                          f"(batch, classes)")
    if not bool(torch.isfinite(out).all()):
        raise ConfigError("the model gives NaN or infinite outputs on the training inputs")
    classes = int(out.shape[1])
    for name, pair in (("train_samples", train), ("test_samples", test)):
        if pair is not None and (int(pair[1].min()) < 0 or int(pair[1].max()) >= classes):
            raise ConfigError(f"{name}: labels must be class indices in [0, {classes}) (the model has {classes} "
                              f"outputs), got {int(pair[1].min())}..{int(pair[1].max())}")
    return train, test, classes


def loss_name(loss_fn) -> str:
    """The loss as the records name it: ``mse`` or ``ce`` (sharpcomp's), else the function's name."""
    if isinstance(loss_fn, str):
        if loss_fn not in ("mse", "ce"):
            raise ConfigError(f"unknown loss '{loss_fn}' (mse, ce, or a function (outputs, labels) -> mean loss)")
        return loss_fn
    if not callable(loss_fn):
        raise ConfigError(f"loss_fn must be mse, ce or a function (outputs, labels) -> mean loss, got {loss_fn!r}")
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def run_settings(loop: Loop, model: nn.Module, loss: str, optimizer, metrics: Mapping | None,
                 measures: Mapping | None) -> tuple[Settings, Plan]:
    """The run's settings (a ``train`` config's, see the module docstring) and its measures, checked."""
    steps, every = _positive("steps", loop.steps), _positive("every", loop.every)
    if isinstance(loop.seed, bool) or not isinstance(loop.seed, int) or abs(loop.seed) > SEED_MAX:
        raise ConfigError(f"seed must be an integer between -2**62 and 2**62, got {loop.seed!r}")
    lr = loop.lr if loop.lr is not None else _first_lr(optimizer)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError(f"lr must be a number, got {lr!r}")
    unknown = set(metrics or {}) - set(defaults()["metrics"]) - {"flatness"}
    if unknown:
        raise ConfigError(f"unknown metrics key '{sorted(unknown)[0]}' (known: {', '.join(defaults()['metrics'])})")
    block = {**defaults()["metrics"], **(metrics or {})}
    block["flatness"] = {**block["flatness"], **(measures or {})}
    raw = {"data": {"name": loop.data}, "model": {"name": loop.model or type(model).__name__.lower()},
           "lr": float(lr), "batch": _positive("batch_size", loop.batch), "seed": loop.seed, "steps": steps,
           "log_every": every, "eval_every": _positive("eval_every", loop.eval_every), "loss": loss,
           "optim": {"name": "none" if optimizer is None else type(optimizer).__name__.lower()},
           "device": str(_device(model)), "threads": None, "deterministic": False, "progress": False,
           "allow_tf32": None, "cuda_graph": "off", "compile": False, "resume_every": 0, "metrics": block,
           "scale_name": "tracked", "recorded_by": RECORDED_BY_TRACKER}
    ms = metric_settings(block)
    s = Settings(raw=raw, lr=float(lr), batch=raw["batch"], seed=loop.seed, steps=steps, log_every=every,
                 eval_every=raw["eval_every"], loss=loss, optim=raw["optim"], device=raw["device"], threads=None,
                 deterministic=False, progress=False, allow_tf32=None, cuda_graph="off", compile=False,
                 resume_every=0.0, metrics=ms, model=raw["model"], data=raw["data"])
    try:
        chosen = plan(ms.flatness)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_layer(s, model)
    check_symmetry(s, model)
    return s, chosen


def _first_lr(optimizer) -> float:
    if optimizer is None:
        return math.nan
    group = optimizer.param_groups[0]
    return float(group.get("initial_lr", group["lr"]))  # a schedule keeps the starting rate as initial_lr


def dataset(name: str, train: Batch, test: Batch | None, classes: int) -> Dataset:
    """The samples as the checkpoint code reads a run's data (no test samples: an empty test set)."""
    if test is None:
        test = (train[0][:0], train[1][:0])
    return Dataset(name, train[0], train[1], test[0], test[1], classes, "tracked")


def loss_function(loss, classes: int) -> Callable:
    """``loss`` as a function of (outputs, labels): sharpcomp's loss of that name, or the function itself."""
    return make_loss(loss, classes) if isinstance(loss, str) else loss
