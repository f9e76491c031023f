"""Training-throughput benchmark: what the runner costs on top of plain PyTorch.

1. Iterations per second of ``sharpcomp.engine.train.train`` (checkpoint time excluded) against a minimal
   plain PyTorch loop doing the same SGD steps on the same data, in this process (target >= 0.95).
2. The share of wall time spent in checkpoints at the quick (500) and paper (200) cadences, and the
   mean checkpoint time against its floor: the metric engine's floor (N forward+backward passes over
   the n samples) plus one forward pass over the evaluated sets (target <= 1.2x).

Usage: python scripts/bench_train.py [--quick] [--models vgg10,mlp4] [--device cpu]

Recorded numbers and the commands behind them: docs/benchmarks/training.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sharpcomp.data.datasets import load_dataset
from sharpcomp.data.order import epoch_permutation, steps_per_epoch, train_sample_indices
from sharpcomp.engine.evaluation import evaluate
from sharpcomp.engine.train import train
from sharpcomp.losses import make_loss
from sharpcomp.models import build_model

SETUPS = {
    "vgg10": dict(data=("cifar10_2class", "cifar10", [0, 1]), conf=["data=cifar10_2class", "model=vgg10"]),
    "mlp4": dict(data=("fashion_mnist", "fashion_mnist", None), conf=["data=fashion_mnist", "model=mlp4"]),
}


def compose(overrides):
    from sharpcomp.settings import compose as compose_train

    return compose_train(overrides)


def plain_loop(data, model_name, seed, steps, batch, lr, device):
    """The baseline: the same SGD steps written as plainly as possible."""
    model = build_model(model_name, 10, input_shape=data.input_shape, seed=seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = make_loss("mse", 10)
    n = len(data.train_x)
    spe = steps_per_epoch(n, batch)
    t0 = time.perf_counter()
    perm, epoch = None, -1
    for it in range(steps):
        e, k = divmod(it, spe)
        if e != epoch:
            epoch, perm = e, epoch_permutation(seed, e, n).to(device)
        idx = perm[k * batch:(k + 1) * batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(data.train_x[idx]), data.train_y[idx])
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def runner(data, overrides, steps, device):
    cfg = compose(overrides + [f"steps={steps}", f"log_every={steps}", "progress=false", f"device={device}"])
    with tempfile.TemporaryDirectory() as tmp:
        res = train(cfg, Path(tmp) / "run", data=data)
    return res


def floor_seconds(data, model_name, n, device, repeats=3):
    """Metric-engine floor (N fwd+bwd over the n samples) plus one forward over train and test sets."""
    model = build_model(model_name, 10, input_shape=data.input_shape, seed=0).to(device).eval()
    x = data.train_x[train_sample_indices(0, len(data.train_x), n).to(device)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model(x)
        for k in range(out.shape[1]):
            model.zero_grad(set_to_none=True)
            model(x)[:, k].sum().backward()
        evaluate(model, data.train_x, data.train_y, "mse")
        evaluate(model, data.test_x, data.test_y, "mse")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    ap.add_argument("--models", default="vgg10,mlp4")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for name in args.models.split(","):
        setup = SETUPS[name]
        data = load_dataset(*setup["data"], device=device)
        steps = 100 if args.quick else 400
        plain_loop(data, name, 0, 20, 20, 0.1, device)  # warm-up
        p_rates, r_rates = [], []
        for _ in range(repeats):
            p_rates.append(plain_loop(data, name, 0, steps, 20, 0.1, device))
            res = runner(data, setup["conf"] + ["batch=20", "lr=0.1", "metrics.n=20"], steps, device)
            r_rates.append(steps / (res.seconds - res.checkpoint_seconds))
        p, r = statistics.median(p_rates), statistics.median(r_rates)
        print(f"\n## {name} on {setup['data'][0]}, batch 20, {steps} steps x {repeats}")
        print(f"plain PyTorch loop      {p:8.1f} it/s")
        print(f"sharpcomp train         {r:8.1f} it/s   ratio {r / p:.3f}  (target >= 0.95)")
        floor = floor_seconds(data, name, 100, device)
        print(f"checkpoint floor (n=100: 10 fwd+bwd + eval {len(data.train_x)}+{len(data.test_x)}) {floor:.2f} s")
        for scale, every in (("quick", 500), ("paper", 200)):
            n_ck = 1 if args.quick else 3
            cfg = compose(setup["conf"] + ["batch=20", "lr=0.1", "metrics.n=100", f"steps={every * n_ck}",
                                           f"log_every={every}", "progress=false", f"device={device}"])
            with tempfile.TemporaryDirectory() as tmp:
                res = train(cfg, Path(tmp) / "run", data=data)
            per = res.checkpoint_seconds / res.checkpoints
            print(f"{scale:>5} cadence (every {every}): {res.checkpoints} checkpoints, "
                  f"{100 * res.checkpoint_seconds / res.seconds:5.1f}% of wall time in checkpoints; "
                  f"{per:.2f} s each = {per / floor:.2f}x floor (target <= 1.2x)")


if __name__ == "__main__":
    main()
