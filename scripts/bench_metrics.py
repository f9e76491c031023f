"""Benchmark of the metric engine (``make bench``): vgg10 and mlp4, 10 outputs, n = 20 and 100, CPU.

Rows, all in one process on the same weights and inputs:
  (a) engine   sharpcomp.measures.study.metrics.compute_metrics, all metrics (S, J_i and their spectra, bounds);
  (b) loop     the obvious implementation: per sample one forward, per output one autograd.grad
               w.r.t. parameters and input, then the same spectra;
  (c) backpack BackPACK's BatchL2Grad, S only: one backward per output (skipped if not installed);
  (d) floor    N plain forward+backward passes over the n samples (any exact method pays this).
Times are wall-clock medians over repeats after a warm-up, rows interleaved; one torch thread by
default (``--threads``). ``--quick``: a short smoke run.

Recorded numbers and the commands behind them: docs/benchmarks/metrics.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from functools import partial

import numpy as np
import torch

from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.models import build_model

warnings.filterwarnings("ignore", message="Full backward hook is firing")  # BackPACK with inputs not needing grad

try:
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad
except ImportError:  # optional benchmark dependency
    backpack = None


def engine(model, x):
    return compute_metrics(model, x)["sharpness"]


def loop(model, x):
    params = [p for p in model.parameters() if p.requires_grad]
    s, stats = 0.0, []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_()
        out = model(xi)[0]
        rows = []
        for k in range(out.shape[0]):
            grads = torch.autograd.grad(out[k], [xi, *params], retain_graph=k < out.shape[0] - 1)
            rows.append(grads[0].reshape(-1))
            s += sum(float(g.square().sum()) for g in grads[1:])
        jac = torch.stack(rows).double()
        lam = torch.linalg.eigvalsh(jac @ jac.T)
        stats.append((lam.sum(), lam[-1].sqrt(), 0.5 * lam.log().sum()))
    return s / x.shape[0]


def backpack_sharpness(model, x):
    s = 0.0
    for k in range(model(x[:1]).shape[1]):  # BackPACK frees its saved inputs: one forward per backward
        with backpack(BatchL2Grad()):
            model(x)[:, k].sum().backward()
        s += sum(float(p.batch_l2.sum()) for p in model.parameters())
    model.zero_grad(set_to_none=True)
    return s / x.shape[0]


def floor(model, x):
    for k in range(model(x[:1]).shape[1]):
        model.zero_grad(set_to_none=True)
        model(x)[:, k].sum().backward()
    model.zero_grad(set_to_none=True)


def timed(rows, repeats):
    """Median wall time of each row (name -> (function, repeats)); the rows run interleaved, round by
    round, so that a change in the load of a shared machine hits them alike."""
    times = {name: [] for name in rows}
    for fn, _ in rows.values():
        fn()  # warm-up
    for r in range(repeats):
        for name, (fn, reps) in rows.items():
            if r < reps:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) if ts else np.nan for name, ts in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (n = 20, one repeat)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared CPU, more threads mostly add noise)")
    ap.add_argument("--models", default="vgg10,mlp4")
    ap.add_argument("--sizes", default="20,100")
    ap.add_argument("--skip-loop", action="store_true", help="skip the slow (b) row")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = [20] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s); wall-clock median of {repeats} "
          f"after a warm-up ((b): of {max(1, repeats // 2)}); backpack {'yes' if backpack else 'not installed'}")
    print(f"{'model':6} {'n':>4} {'(a) engine':>11} {'(b) loop':>9} {'(c) bpack':>10} {'(d) floor':>10}"
          f" {'a/d':>6} {'b/a':>6} {'c/a':>6}")
    for name in args.models.split(","):
        shape = (3, 32, 32) if name == "vgg10" else (1, 28, 28)
        model = build_model(name, num_outputs=10, seed=0).eval()
        bp_model = extend(copy.deepcopy(model)) if backpack else None
        for n in sizes:
            x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
            rows = {"a": (partial(engine, model, x), repeats), "d": (partial(floor, model, x), repeats)}
            if not args.skip_loop:
                rows["b"] = (partial(loop, model, x), max(1, repeats // 2))
            if backpack:
                rows["c"] = (partial(backpack_sharpness, bp_model, x), repeats)
            t = {"b": np.nan, "c": np.nan, **timed(rows, repeats)}
            s_a = engine(model, x)  # same weights, same S
            for other in ([partial(backpack_sharpness, bp_model, x)] if backpack else []) + (
                    [] if args.skip_loop or args.quick else [partial(loop, model, x)]):
                assert abs(other() - s_a) <= 1e-3 * s_a, "benchmark rows disagree on S"
            print(f"{name:6} {n:4d} {t['a']:10.3f}s {t['b']:8.3f}s {t['c']:9.3f}s {t['d']:9.3f}s"
                  f" {t['a'] / t['d']:6.2f} {t['b'] / t['a']:6.2f} {t['c'] / t['a']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
