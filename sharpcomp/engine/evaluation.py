"""What a checkpoint computes for one network: whole-set evaluation, the sample sets, and its rows.

Rows (one per sample set, ``records``): the whole-set columns (``base``), the loss and the metrics
(:func:`sharpcomp.measures.study.metrics.compute_metrics`, passed in precomputed, since an ensemble computes them for
all members at once) on the sample set, and the optional flatness measures on the train row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
from torch import nn

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.setup import initial_network
from sharpcomp.losses import per_sample_loss
from sharpcomp.measures.registry import Plan
from sharpcomp.measures.sample import Sample
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.network_wide import add_network_wide
from sharpcomp.models import eval_mode, samples_per_chunk
from sharpcomp.settings import Settings


def eval_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout on a CPU (oneDNN's faster convolution and pooling there; same values)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and x.device.type == "cpu" else x


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, per-sample correctness) over a whole set, in chunks, in eval mode (the
    running statistics of BatchNorm are used, not changed; no dropout); each module's mode is restored."""
    losses, correct = [], []
    with eval_mode(model):
        chunk = samples_per_chunk(model, x[:1])
        for i in range(0, len(x), chunk):
            out = model(eval_layout(x[i:i + chunk]))
            losses.append(per_sample_loss(loss, out, y[i:i + chunk]))
            correct.append(out.argmax(dim=1) == y[i:i + chunk])
    losses, correct = torch.cat(losses), torch.cat(correct)
    return float(losses.mean()), float(correct.float().mean()), correct


def sample_set(name: str, data: Dataset, sample_idx: torch.Tensor, n: int,
               test_correct: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of one sample set: ``train`` (the run's fixed training samples), ``test``
    (the first n test samples) or ``misclassified`` (the first n misclassified test samples)."""
    if name == "train":
        return data.train_x[sample_idx], data.train_y[sample_idx]
    if name == "test":
        return data.test_x[:n], data.test_y[:n]
    wrong = torch.nonzero(~test_correct).flatten()[:n]
    return data.test_x[wrong], data.test_y[wrong]


def sample_sets(s: Settings, data: Dataset, sample_idx: torch.Tensor,
                test_correct: torch.Tensor | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The inputs and labels of each of the run's sample sets, by name."""
    return {name: sample_set(name, data, sample_idx, s.metrics.n, test_correct) for name in s.metrics.sample_sets}


@torch.no_grad()
def sample_losses(models: list[nn.Module], sets: list[dict[str, tuple[torch.Tensor, torch.Tensor]]],
                  loss: str) -> list[dict[str, float]]:
    """Each network's mean loss on each of its non-empty sample sets, read from the device in one
    transfer for all of them."""
    keys = [(j, name) for j, by_name in enumerate(sets) for name, (x, _) in by_name.items() if len(x)]
    if not keys:
        return [{} for _ in sets]
    with contextlib.ExitStack() as modes:
        for j in {j for j, _ in keys}:
            modes.enter_context(eval_mode(models[j]))
        means = torch.stack([per_sample_loss(loss, models[j](sets[j][name][0]), sets[j][name][1]).mean()
                             for j, name in keys]).tolist()
    out: list[dict[str, float]] = [{} for _ in sets]
    for (j, name), v in zip(keys, means):
        out[j][name] = v
    return out


def compute_sample_metrics(model: nn.Module, inputs: Mapping[str, tuple], s: Settings) -> dict[str, dict]:
    """``compute_metrics`` of one network on each non-empty sample set, by name."""
    progress = None if s.progress else False  # a bar on long metric work, like training's
    # the network-wide columns come from the metric engine's own passes (metrics.network_wide)
    return {name: compute_metrics(model, x, progress=progress, network_wide=s.metrics.network_wide,
                                  **s.metrics.options())
            for name, (x, _) in inputs.items() if len(x)}


def with_network_wide(models, inputs, results: list[dict[str, dict]], s: Settings) -> list[dict[str, dict]]:
    """Each network's results with the network-wide columns added (``metrics.network_wide``), one
    network at a time, after the stacked ensemble engine."""
    if not s.metrics.network_wide:
        return results
    opts = s.metrics.options()
    for model, sets, res in zip(models, inputs, results):
        for name, r in res.items():
            add_network_wide(r, model, sets[name][0], layer=opts["layer"], dtype=opts["dtype"],
                             chunk_size=opts["chunk_size"])
    return results


def checkpoint_rows(model: nn.Module, s: Settings, plan: Plan, data: Dataset, sets: Mapping[str, tuple],
                    loss_fn: Callable, base: dict, iteration: int, metrics: Mapping[str, dict],
                    losses: Mapping[str, float], final: bool = False) -> list[dict]:
    """The rows of one checkpoint: ``base`` (whole-set columns) joined with each sample set's loss and
    metrics (and the switched-on measures of ``plan`` on the train row, when due, and always at a ``final``
    checkpoint: a run's stop). The model is in eval mode; the measures' reference point is the run's network
    at initialisation (:func:`sharpcomp.engine.setup.initial_network`, built only when a measure asks)."""
    rows = []
    for name in s.metrics.sample_sets:
        x, _ = sets[name]
        row = {**base, "sample_set": name, "n_samples": len(x)}
        if len(x):
            row["sample_loss"] = losses[name]
            row.update({k: v for k, v in metrics[name].items() if k != "per_sample"})
        if name == "train" and plan and (final or s.flatness_due(iteration)):
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + iteration)
            row.update(plan.compute(Sample(model, loss_fn, data.train_x, data.train_y, g, s.batch,
                                           initial=lambda: initial_network(s, data, data.train_x.device))))
        rows.append(row)
    return rows
