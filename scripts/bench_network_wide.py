"""Network-wide measures benchmark: what NMLS, NVR and their bounds add to a checkpoint.

For vgg10 and mlp4 (seeded initial weights, N = 10, random inputs of the data's shape), in this process
and on the same inputs:

1. today's checkpoint metrics alone (``compute_metrics``, n = ``--n``) against the same plus every
   network-wide column (NMLS, NVR, bounds, invariant sharpness, exact convolution operator norms), both
   in passes of their own (``network_wide``) and gathered in the metric engine's passes
   (``compute_metrics(network_wide=True)``, what a training checkpoint runs); prints the times and the
   ratios (goal <= 1.5x). Every timed call starts with no stored operator norm
   (``conv_norm.clear_caches()``); then the weights take a small step (relative 1e-3, as between two
   checkpoints of SGD) and the shared pass is timed again, as at a later checkpoint;
2. the authors' NMLS loop, re-implemented minimally as they compute it (batch 1; per sample one
   forward pass with hooks; per layer and per output one ``autograd.grad`` w.r.t. that layer's input;
   an SVD per layer) on ``--n-authors`` samples, against ``network_wide`` on the same samples; prints
   the time per sample of each, their ratio, and the largest relative difference of the per-sample NMLS.

3. the matrix-free estimators (``sharpcomp.measures.study.estimators``) on mlp4 with N = 100 outputs
   (n = ``--n-authors``): the exact engine's time, then for 4, 16, 64 probes the estimators' time and,
   per metric, |estimate - exact| / exact next to the reported standard error / exact.

Usage: python scripts/bench_network_wide.py [--n 100] [--n-authors 20] [--threads 1] [--models vgg10,mlp4]

Recorded numbers and the commands behind them: docs/benchmarks/network-wide.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from sharpcomp.measures.linalg import operator_norms as conv_norm
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.network_wide import network_wide
from sharpcomp.models import build_model

SHAPES = {"vgg10": (3, 32, 32), "mlp4": (1, 28, 28)}


def authors_nmls(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per-sample NMLS the way the reference code computes it (batch 1, one backward per output and layer)."""
    out = []
    for i in range(len(x)):
        acts: list[torch.Tensor] = []

        def keep(mod, args, output, acts=acts):
            acts.append(args[0])

        handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        xi = x[i:i + 1].clone().requires_grad_()
        logits = model(xi).reshape(1, -1)
        for h in handles:
            h.remove()
        total = 0.0
        for a in acts:
            rows = torch.zeros(logits.shape[1], a.numel())
            for j in range(logits.shape[1]):
                rows[j] = torch.autograd.grad(logits[0, j], a, retain_graph=True)[0].flatten()
            total += float(torch.linalg.svdvals(rows).max())
        out.append(total)
    return np.array(out)


def cold(fn):
    """``fn`` with the stored operator norms forgotten first."""
    def run(*args, **kwargs):
        conv_norm.clear_caches()
        return fn(*args, **kwargs)
    return run


def step(model: nn.Module) -> None:
    """Move every weight by relative 1e-3 (seeded noise), as a few SGD steps between checkpoints do."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-3 * float(p.abs().mean()))


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-authors", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="vgg10,mlp4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        model = build_model(name, 10, input_shape=SHAPES[name], seed=0).eval()
        x = torch.randn(args.n, *SHAPES[name], generator=torch.Generator().manual_seed(0))
        compute_metrics(model, x[:2])  # warm-up
        m, t_metrics = timed(cold(compute_metrics), model, x)
        _, t_nw = timed(cold(network_wide), model, x, sharpness=m["sharpness"])
        _, t_shared = timed(cold(compute_metrics), model, x, network_wide=True)
        print(f"{name} n={args.n}: checkpoint metrics {t_metrics:.2f} s; network-wide columns in passes of their "
              f"own {t_nw:.2f} s ({(t_metrics + t_nw) / t_metrics:.2f}x together); in the metric engine's passes "
              f"(as training runs them) {t_shared:.2f} s: {t_shared / t_metrics:.2f}x the metrics alone (goal <= 1.5x)")
        step(model)
        _, t_later = timed(compute_metrics, model, x)
        _, t_later_shared = timed(compute_metrics, model, x, network_wide=True)
        print(f"{name} n={args.n}, next checkpoint (weights moved by 1e-3): metrics "
              f"{t_later:.2f} s, with the network-wide columns {t_later_shared:.2f} s: "
              f"{t_later_shared / t_later:.2f}x (goal <= 1.5x)")
        xa = x[:args.n_authors]
        ref, t_auth = timed(authors_nmls, model, xa)
        ours, t_ours = timed(cold(network_wide), model, xa, sharpness=1.0, per_sample=True)
        diff = float(np.max(np.abs(ours["per_sample"]["nmls"] - ref) / np.abs(ref)))
        print(f"{name} n={len(xa)}: authors' NMLS loop {1e3 * t_auth / len(xa):.1f} ms/sample; network_wide "
              f"{1e3 * t_ours / len(xa):.1f} ms/sample (also every bound); speed-up {t_auth / t_ours:.1f}x; "
              f"max relative difference of per-sample NMLS {diff:.1e}")
    estimators_bench(args.n_authors)


def estimators_bench(n: int) -> None:
    from sharpcomp.measures.study.estimators import estimate_metrics

    model = build_model("mlp4", 100, input_shape=SHAPES["mlp4"], seed=0).eval()
    x = torch.randn(n, *SHAPES["mlp4"], generator=torch.Generator().manual_seed(1))
    exact, t_exact = timed(compute_metrics, model, x)
    print(f"estimators, mlp4 N=100 n={n}: exact engine {t_exact:.2f} s")
    for probes in (4, 16, 64):
        est, t = timed(estimate_metrics, model, x, probes=probes, power_iters=20,
                       generator=torch.Generator().manual_seed(probes))
        parts = []
        for k in ("sharpness", "G", "local_dim"):
            scale = abs(exact[k])
            parts.append(f"{k} err {abs(est[k] - exact[k]) / scale:.3f} (se {est[k + '_se'] / scale:.3f})")
        parts.append(f"mls err {abs(est['mls'] - exact['mls']) / exact['mls']:.1e}")
        print(f"  probes {probes:3d}: {t:.2f} s ({t / t_exact:.2f}x exact); " + "; ".join(parts))


if __name__ == "__main__":
    main()
