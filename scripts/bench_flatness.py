"""Flatness benchmarks: batched loss-landscape grids and average-case sharpness.

1. A 2D landscape of points x points (41 x 41) on n images (2,000), for mlp4 and vgg10 (width 1, random
   weights and inputs of the right shape: the cost does not depend on the values): the batched
   evaluation (``sharpcomp.measures.landscape.slices.evaluate_points``: torch.func ``vmap`` over chunks of weight
   points) against one plain forward pass per point (``landscape.loop_reference``). Both are timed on the
   same ``--sample`` grid points (default: one row of the grid, 41 points) and extrapolated to the whole
   grid; the ratio is loop time / batched time per point (goal >= 3).
2. Average-case sharpness with 100 forward passes on 1,000 images (``average_case.average_sharpness``: 50
   antithetic pairs) against 100 plain forward passes of the same model on the same images (goal: ratio
   <= 1.2); and, as the estimator it replaced, 100 independent draws (a Gaussian vector per forward pass):
   its time and standard error next to the antithetic one's (random weights, where the gradient term
   that the pairs cancel is large).

    python scripts/bench_flatness.py            # the sizes above
    python scripts/bench_flatness.py --quick    # smoke run (11 x 11 grid, 300 images, 20 draws)
    python scripts/bench_flatness.py --sample 10 --repeats 1   # time fewer grid points (slow CPUs)
    python scripts/bench_flatness.py --models mlp4              # one network

Recorded numbers and the commands behind them: docs/benchmarks/flatness.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from sharpcomp.measures.landscape import slices as landscape
from sharpcomp.measures.perturbation import average as average_case
from sharpcomp.models import build_model


def mse(out, y):
    return torch.nn.functional.mse_loss(out, torch.nn.functional.one_hot(y, out.shape[1]).to(out.dtype))


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_landscape(name: str, shape: tuple, points: int, n: int, sample: int, chunk: int, batch: int,
                    repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, width=1.0, seed=0, input_shape=shape, num_outputs=10).eval()
    x, y = torch.rand(n, *shape), torch.randint(0, 10, (n,))
    base = landscape.parameters(model)
    gen = torch.Generator().manual_seed(0)
    dirs = [landscape.filter_normalized_direction(base, gen) for _ in range(2)]
    a = torch.linspace(-1, 1, points, dtype=torch.float64)
    ga, gb = torch.meshgrid(a, a, indexing="ij")
    coef = torch.stack([ga.reshape(-1), gb.reshape(-1)], 1)[:sample]
    t_batched = timed(lambda: landscape.evaluate_points(model, mse, x, y, base, dirs, coef, chunk, batch), repeats)
    t_loop = timed(lambda: landscape.loop_reference(model, mse, x, y, base, dirs, coef), repeats)
    lb, _ = landscape.evaluate_points(model, mse, x, y, base, dirs, coef[:2], chunk, batch)
    ll, _ = landscape.loop_reference(model, mse, x, y, base, dirs, coef[:2])
    assert torch.allclose(lb, ll, rtol=1e-4), (lb, ll)  # the same numbers (float32)
    total = points * points
    print(f"landscape {name}: {points}x{points} grid on {n} images, timed on {len(coef)} points: "
          f"batched {t_batched / len(coef) * 1e3:.1f} ms/point (grid {t_batched / len(coef) * total:.0f} s), "
          f"loop {t_loop / len(coef) * 1e3:.1f} ms/point (grid {t_loop / len(coef) * total:.0f} s), "
          f"speed-up {t_loop / t_batched:.2f}x (goal >= 3x)")


def bench_average(name: str, shape: tuple, n: int, draws: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, width=1.0, seed=0, input_shape=shape, num_outputs=10).eval()
    x, y = torch.rand(n, *shape), torch.randint(0, 10, (n,))

    def plain():
        with torch.no_grad():
            for _ in range(draws):
                float(mse(model(x), y))

    def average():
        average_case.average_sharpness(model, mse, [(x, y)], 0.01, draws, False, torch.Generator().manual_seed(0))

    def independent():
        gen = torch.Generator().manual_seed(0)
        params = list(model.parameters())
        theta = [p.detach().clone() for p in params]
        with torch.no_grad():
            l0 = float(mse(model(x), y))
            inc = []
            for _ in range(draws):
                for p, t in zip(params, theta):
                    p.copy_(t).add_(torch.randn(p.shape, generator=gen), alpha=0.01)
                inc.append(float(mse(model(x), y)) - l0)
            for p, t in zip(params, theta):
                p.copy_(t)
        inc = torch.tensor(inc, dtype=torch.float64)
        return float(inc.mean()), float(inc.std() / draws ** 0.5)

    t_plain, t_avg = timed(plain, repeats), timed(average, repeats)
    r = average_case.average_sharpness(model, mse, [(x, y)], 0.01, draws, False, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    ind_value, ind_se = independent()
    t_ind = time.perf_counter() - t0
    print(f"average-case {name}: {draws} forward passes on {n} images {t_avg:.2f} s (antithetic pairs), {draws} plain "
          f"forward passes {t_plain:.2f} s, ratio {t_avg / t_plain:.2f} (goal <= 1.2); value {r['value']:.3g} "
          f"+- {r['se']:.2g}; {draws} independent draws {t_ind:.2f} s ({t_ind / t_plain:.2f}x), value "
          f"{ind_value:.3g} +- {ind_se:.2g}: standard error {ind_se / r['se']:.1f}x the antithetic one")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small grid, few images and draws")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sample", type=int, default=None, help="grid points timed (default: one row)")
    ap.add_argument("--repeats", type=int, default=None, help="timings per method (the best is kept)")
    ap.add_argument("--models", default="mlp4,vgg10", help="comma list of mlp4, vgg10")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    points, n, sample, draws, n_avg = (11, 300, 11, 20, 300) if args.quick else (41, 2000, 41, 100, 1000)
    sample = args.sample or sample
    repeats = args.repeats or (1 if args.quick else 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for name, shape, chunk, batch in (("mlp4", (1, 28, 28), 41, 500), ("vgg10", (3, 32, 32), 41, 100)):
        if name not in args.models.split(","):
            continue
        bench_landscape(name, shape, points, n, sample, chunk, batch, repeats)
        bench_average(name, shape, n_avg, draws, repeats)


if __name__ == "__main__":
    main()
