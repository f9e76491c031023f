"""Results as real runs leave them: run folders under their default names, which are long
(``cifar10_2class-vgg10/batch=8,log_every=100,lr=0.05,metrics.flatness.hessian_max={n:256},seed=3``),
with every column a figure draws, so that every figure kind can be drawn from them and read."""

from __future__ import annotations

import json
import shutil

import numpy as np

from sharpcomp.measures.curvature.hessian_density import histogram
from sharpcomp.results.records import RunRecorder, read_metrics
from tests.figures.test_figures import CIFAR, FMNIST, GRID, make_run, settings_of

# two seeds at the study's central setting (a band), one elsewhere
SEEDS = {(0.1, 20): (0, 3)}
# the flatness measures drawn with their standard errors, and some without
FLAT = ("hessian_trace", "hessian_trace_se", "quotient_trace", "quotient_trace_se", "average", "average_se",
        "batch_sharpness", "batch_sharpness_se", "worst_case", "grad_disagreement", "fisher_trace")


def folder_name(data: str, model: str, lr: float, batch: int, seed: int, extra: str = "") -> str:
    """A run's folder as ``sharpcomp -m train`` names it: the overrides that differ, sorted."""
    keys = {"batch": batch, "log_every": 100, "lr": lr, "seed": seed}
    parts = [f"{k}={v}" for k, v in sorted(keys.items())]
    if extra:
        parts.insert(3, extra)
    return f"{data}-{model}/{','.join(parts)}"


def _settings(data, model, lr, batch, seed, flat_n=256):
    s = settings_of(data, model, lr, batch, seed)
    s["metrics"]["flatness"] = {"hessian_max": {"n": flat_n}}
    return s


def study_runs(root) -> None:
    """The study's grid on both networks (``SEEDS``), flatness measures on vgg10 (seed 0), fig3's sample
    sets, a SAM run, and log volumes of -inf at two checkpoints of one run."""
    extra = "metrics.flatness.hessian_max={n:256}"
    for (data, model), flat in ((CIFAR, FLAT), (FMNIST, ())):
        for lr, batch in GRID:
            for seed in SEEDS.get((lr, batch), (0,)):
                fig3 = (lr, batch) == (0.1, 20) and model == "vgg10"
                make_run(root, data, model, lr, batch, seed, n_ckpt=6, flat=flat if seed == 0 else (), flat_every=2,
                         sets=("train", "test", "misclassified") if fig3 else ("train",),
                         settings=_settings(data, model, lr, batch, seed),
                         name=f"{data}-{model}-lr{lr}-b{batch}-s{seed}",
                         folder=folder_name(data, model, lr, batch, seed, extra))
    make_run(root, *CIFAR, 0.1, 20, 0, n_ckpt=6, optim="sam", flat=FLAT, flat_every=2,
             settings=_settings(*CIFAR, 0.1, 20, 0), name="cifar10_2class-vgg10-lr0.1-b20-s0-sam",
             folder=folder_name(*CIFAR, 0.1, 20, 0, "optim=sam,optim.rho=0.05," + extra))
    make_run(root, *FMNIST, 0.2, 20, 7, n_ckpt=6, settings=_settings(*FMNIST, 0.2, 20, 7),
             name="fashion_mnist-mlp4-lr0.2-b20-s7", folder=folder_name(*FMNIST, 0.2, 20, 7, extra))
    neg_inf_log_volume(root / folder_name(*FMNIST, 0.2, 20, 7, extra))


def neg_inf_log_volume(folder) -> None:
    """Rewrite a run's rows with log_volume = -inf at iterations 300 and 400 (a zero eigenvalue among the kept)."""
    frame = read_metrics(folder)
    frame.loc[frame["iteration"].isin([300, 400]), "log_volume"] = -np.inf
    ident = {c: frame[c].iloc[0] for c in ("run_id", "data", "model", "lr", "batch", "seed", "loss", "width",
                                            "outputs", "optim", "scale", "data_source", "device", "versions",
                                            "settings")}
    shutil.rmtree(folder)
    rows = frame.drop(columns=[*ident, "status"]).to_dict("records")
    RunRecorder(folder, ident).append(rows, status="finished")


def curvature_runs(root, lrs=(0.5, 1.0, 2.0), batches=(1000, 50), n_ckpt=21, every=20) -> None:
    """The edge-of-stability sweep: lambda_max, batch sharpness, non-uniformity and the spectral density
    every ``every`` iterations, in folders named as ``+experiment=eos`` names them."""
    for lr in lrs:
        for batch in batches:
            run_id = f"fashion_mnist-mlp4-lr{lr}-b{batch}-s0-1a2b3c4d"
            keys = dict(batch=batch, lr=lr, seed=0)
            name = ("eos-fashion_mnist-mlp4/" + ",".join(f"{k}={v}" for k, v in sorted(keys.items()))
                    + ",metrics.flatness.hessian_density={n:1000,probes:1,steps:40}")
            settings = settings_of(*FMNIST, lr, batch, 0)
            identity = dict(run_id=run_id, data="fashion_mnist", model="mlp4", lr=lr, batch=batch, seed=0, loss="mse",
                            width=0.25, outputs=10, optim="sgd", scale="custom", data_source="synthetic", device="cpu",
                            versions="{}", settings=json.dumps(settings, sort_keys=True))
            rows = []
            rng = np.random.default_rng(int(lr * 10) + batch)
            for k in range(n_ckpt):
                lam = min(2 / lr * (1.1 if batch > 100 else 0.8), 0.5 + 0.4 * k) * (1 + 0.05 * rng.random())
                nodes = np.array([-0.02, 1e-5, 1e-3, 0.05, 0.4, lam])
                weights = np.array([0.05, 0.5, 0.2, 0.15, 0.08, 0.02])
                rows.append(dict(iteration=k * every, epoch=k * every * batch / 1000, wall_time=float(k),
                                 sample_set="train", n_samples=20, sample_loss=0.1, sharpness=1.0, G=1.0,
                                 log_volume=0.0, local_dim=1.0, mls=1.0, hessian_max=lam,
                                 hessian_top=[lam, lam / 2, lam / 3],
                                 batch_sharpness=(0.9 if batch > 100 else 0.6) * lam, batch_sharpness_se=0.02 * lam,
                                 nonuniformity=0.3 * (k + 1) * (2 if batch < 100 else 1),
                                 hessian_density=list(histogram(nodes, weights))))
            RunRecorder(root / name, identity).append(rows, status="finished")
