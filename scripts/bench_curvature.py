"""The curvature spectrum's cost: lambda_max(H) by sharpcomp's Lanczos against its floor and against
PyHessian, hessian-eigenthings and curvlinops used directly; Hutch++ against Hutchinson at equal
products; the per-checkpoint cost of every curvature measure at its defaults.

For each model (vgg10 on two-class CIFAR-10, mlp4 on Fashion-MNIST; the real images when the data
folder is found, else random images of the same shape), one network (seed 0, ``--train`` SGD steps at
lr 0.1 on the subset so that it is not at initialisation) and one subset of ``--n`` training images,
all in one process on the same weights and data:

- reference: lambda_max by sharpcomp's Lanczos at relative residual 1e-10 on a float64 copy;
- ``sharpcomp``: ``hessian_top(k=1, tol=1e-4)``; its floor = (Lanczos steps) x (one Hessian-vector
  product through the kept graph, timed alone, median of 5); goal: time <= 1.3 x floor;
- ``pyhessian``: ``hessian(model, criterion, data).eigenvalues(tol=1e-4)`` (power iteration stopped on a
  1e-4 relative change) and ``.trace()``;
- ``eigenthings``: ``hessian_eigenthings.lanczos(HessianOperator, k=1, which='LA')`` with the fewest steps
  (doubling from 8) that reach 1e-4 relative error against the reference;
- ``curvlinops``: ``scipy.sparse.linalg.eigsh(HessianLinearOperator.to_scipy(), k=1, which='LA',
  tol=1e-4)``;
- each solver's error against the reference is printed next to its time (equal accuracy: <= 1e-4).

Then Hutchinson vs Hutch++ on Tr H with the same number of Hessian-vector products (each estimate's
standard error; Hutch++'s variance reduction = (SE_hutchinson / SE_hutch++)^2), and the cost of one
checkpoint's curvature measures at the defaults of ``metrics.flatness`` (vgg10 only), against the rest
of a checkpoint (study metrics on 100 samples and whole-set evaluation).

    python scripts/bench_curvature.py            # 1,000 images
    python scripts/bench_curvature.py --quick    # 200 images, smaller budgets: a smoke run
    python scripts/bench_curvature.py --quick --cost-only --models vgg10   # the per-checkpoint cost alone

Recorded numbers and the commands behind them: docs/benchmarks/curvature.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharpcomp.data.datasets import default_data_dir, load_dataset  # noqa: E402
from sharpcomp.losses import make_loss  # noqa: E402
from sharpcomp.measures.curvature.hessian_max import hessian_top  # noqa: E402
from sharpcomp.measures.linalg.hutchpp import hutchpp  # noqa: E402
from sharpcomp.measures.linalg.matvec import dimension, hessian_matvec  # noqa: E402
from sharpcomp.measures.linalg.param_space import trainable  # noqa: E402
from sharpcomp.measures.registry import compute_measures, measures  # noqa: E402
from sharpcomp.models import build_model  # noqa: E402

CASES = {"vgg10": ("cifar10", [0, 1], (3, 32, 32)), "mlp4": ("fashion_mnist", None, (1, 28, 28))}


def data_for(model_name: str, n: int):
    dataset, classes, shape = CASES[model_name]
    root = default_data_dir()
    try:
        d = load_dataset(dataset, dataset, classes, root, None, n_train=n)
        return d.train_x, d.train_y, d.test_x, f"{dataset} (first {n} images)"
    except Exception as exc:  # noqa: BLE001 - no data folder: random images of the same shape
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, *shape, generator=g)
        return x, torch.randint(0, 2, (n,), generator=g), torch.rand(2000, *shape, generator=g), \
            f"random images ({type(exc).__name__}: no {dataset} files)"


def network(model_name: str, x, y, loss, steps: int):
    model = build_model(model_name, 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (20,), generator=g)
        opt.zero_grad()
        loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def floor_hvp(model, loss, x, y) -> float:
    mv = hessian_matvec(model, loss, x, y)
    v = torch.randn(dimension(model))
    mv(v)
    times = [timed(lambda: mv(v))[1] for _ in range(5)]
    return statistics.median(times)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def run_pyhessian(model, loss, x, y, ref, steps=None):
    try:
        from pyhessian import hessian
    except Exception as exc:  # noqa: BLE001
        return f"pyhessian: not importable ({type(exc).__name__}: {exc})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h, t_init = timed(lambda: hessian(model, loss, data=(x, y), cuda=False))
            tries = []
            for tol in (1e-4, 1e-5, 1e-6):  # power iteration stops on a relative change, not an error
                torch.manual_seed(0)
                (vals, _), t_eig = timed(lambda tol=tol: h.eigenvalues(maxIter=1000, tol=tol, top_n=1))
                tries.append(f"tol {tol:g}: error {rel(vals[0], ref):.1e} in {t_eig:.2f} s")
                if rel(vals[0], ref) <= 1e-4:
                    break
            tr, t_tr = timed(lambda: h.trace(maxIter=30, tol=1e-3))
        for p in model.parameters():
            p.grad = None
        ok = rel(vals[0], ref) <= 1e-4
        return (f"pyhessian power iteration ({'; '.join(tries)}), + {t_init:.2f} s setup; "
                f"trace {statistics.mean(tr):.6g} over {len(tr)} probes in {t_tr:.2f} s"), \
            (t_init + t_eig if ok else None)
    except Exception as exc:  # noqa: BLE001
        return f"pyhessian: does not run here ({type(exc).__name__}: {exc})", None


def run_eigenthings(model, loss, x, y, ref, steps):
    try:
        import hessian_eigenthings as he
    except Exception as exc:  # noqa: BLE001
        return f"hessian-eigenthings: not importable ({exc})", None
    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(loss))
    total, start = 0.0, steps
    while True:  # from sharpcomp's step count up by a quarter until 1e-4 is reached (the same algorithm)
        r, t = timed(lambda steps=steps: he.lanczos(op, k=1, max_iter=steps, tol=1e-4, which="LA", seed=0))
        total += t
        val = float(r.eigenvalues[0])
        if rel(val, ref) <= 1e-4 or steps >= 4 * start:
            break
        steps = int(steps * 1.25) + 1
    return (f"hessian-eigenthings lanczos: {steps} steps reach error {rel(val, ref):.1e} in {t:.2f} s "
            f"(search over step counts {total:.2f} s)"), (t if rel(val, ref) <= 1e-4 else None)


def run_curvlinops(model, loss, x, y, ref, steps=None):
    try:
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import eigsh
    except Exception as exc:  # noqa: BLE001
        return f"curvlinops: not importable ({exc})", None

    class MeanLoss(torch.nn.Module):  # curvlinops reads the loss's reduction
        reduction = "mean"

        def forward(self, out, target):
            return loss(out, target)

    def solve():
        op = HessianLinearOperator(model, MeanLoss(), trainable(model), [(x, y)], check_deterministic=False)
        return eigsh(op.to_scipy(), k=1, which="LA", tol=1e-4)[0][0]

    val, t = timed(solve)
    ok = rel(float(val), ref) <= 1e-4
    return f"curvlinops + scipy eigsh (ARPACK): lambda_max error {rel(float(val), ref):.1e} in {t:.2f} s", \
        (t if ok else None)


def lambda_max_bench(name, model, loss, x, y):
    # the reference in float64 (a float32 Hessian-vector product carries ~1e-5 relative noise over 1,000 images)
    ref = hessian_top(copy.deepcopy(model).double(), loss, x.double(), y, k=1, tol=1e-10, max_iter=300,
                      generator=torch.Generator().manual_seed(1)).values[0]
    hvp = floor_hvp(model, loss, x, y)
    r, t = timed(lambda: hessian_top(model, loss, x, y, k=1, tol=1e-4, max_iter=300,
                                     generator=torch.Generator().manual_seed(0)))
    floor = r.iterations * hvp
    print(f"{name}: P={dimension(model):,}, n={x.shape[0]}; lambda_max = {ref:.6g} (float64 reference)")
    print(f"  sharpcomp lanczos: {r.iterations} steps, error {rel(r.values[0], ref):.1e}, residual "
          f"{r.residuals[0]:.1e}, {t:.2f} s; floor {r.iterations} x {hvp * 1e3:.1f} ms = {floor:.2f} s; "
          f"ratio {t / floor:.2f} (goal <= 1.3)")
    others = {}
    for label, fn in (("pyhessian", run_pyhessian), ("eigenthings", run_eigenthings), ("curvlinops", run_curvlinops)):
        text, other = fn(model, loss, x, y, ref, r.iterations)
        print("  " + text)
        others[label] = other
    for label, other in others.items():
        print(f"  {label} / sharpcomp time at error <= 1e-4: "
              + (f"{other / t:.2f}x" if other else "n/a (did not reach 1e-4)"))
    return hvp


def trace_bench(name, model, loss, x, y, products):
    mv = hessian_matvec(model, loss, x, y)
    dim = dimension(model)
    g = torch.Generator().manual_seed(0)
    hutch = []
    for _ in range(products):
        z = (torch.randint(0, 2, (dim,), generator=g) * 2 - 1).float()
        hutch.append(float(z @ mv(z)))
    h = torch.tensor(hutch, dtype=torch.float64)
    h_est, h_se = float(h.mean()), float(h.std() / math.sqrt(products))
    p_est, p_se = hutchpp(mv, dim, products, torch.Generator().manual_seed(1), dtype=torch.float32)
    print(f"  Tr H with {products} products: Hutchinson {h_est:.5g} +- {h_se:.2g}; Hutch++ {p_est:.5g} +- "
          f"{p_se:.2g}; variance ratio {(h_se / p_se) ** 2:.1f}x in favour of "
          f"{'Hutch++' if p_se < h_se else 'Hutchinson'}")


def hutchpp_small(reps: int = 300) -> None:
    """Hutchinson vs Hutch++ by their RMSE against the exact trace of a dense Hessian (an MLP with 303
    parameters, float64), at equal numbers of products."""
    from collections import OrderedDict

    from torch.func import functional_call

    torch.manual_seed(0)
    m = torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(8, 12), relu1=torch.nn.ReLU(), fc2=torch.nn.Linear(12, 12),
                                        relu2=torch.nn.ReLU(), fc3=torch.nn.Linear(12, 3))).double()
    x, y = torch.randn(24, 8, dtype=torch.float64), torch.randint(0, 3, (24,))
    loss = make_loss("mse", 3)
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def of_theta(th):
        out, i = {}, 0
        for name, p in m.named_parameters():
            out[name] = th[i:i + p.numel()].view_as(p)
            i += p.numel()
        return loss(functional_call(m, out, (x,)), y)

    h = torch.autograd.functional.hessian(of_theta, theta, vectorize=True)
    exact, dim, g = float(torch.trace(h)), h.shape[0], torch.Generator().manual_seed(0)
    for prod in (12, 30, 60):
        hu, hp = [], []
        for _ in range(reps):
            z = (torch.randint(0, 2, (prod, dim), generator=g) * 2 - 1).double()
            hu.append(float((z * (z @ h)).sum(1).mean()))
            hp.append(hutchpp(lambda v: h @ v, dim, prod, g)[0])
        rh = math.sqrt(sum((v - exact) ** 2 for v in hu) / reps)
        rp = math.sqrt(sum((v - exact) ** 2 for v in hp) / reps)
        print(f"  dense MLP (P={dim}, Tr H {exact:.4f}), {prod} products, {reps} repetitions: RMSE Hutchinson "
              f"{rh:.3f}, Hutch++ {rp:.3f}; variance ratio {(rh / rp) ** 2:.2f} (> 1: Hutch++ better)")


def checkpoint_cost(model, loss, x, y, test_x, batch):
    from sharpcomp.measures.study.metrics import compute_metrics

    print(f"  per-checkpoint cost on vgg10 at the defaults ({len(x)} training images available, batch {batch}):")
    total = 0.0
    curvature = ("hessian_max", "ggn_max", "batch_sharpness", "nonuniformity", "hessian_density")
    for key in curvature:  # each at its declared defaults
        _, t = timed(lambda key=key: compute_measures(model, loss, x, y, {key: measures()[key].defaults()},
                                                      torch.Generator().manual_seed(0), batch))
        total += t
        print(f"    {key:16s} {t:7.2f} s")
    _, t_metrics = timed(lambda: compute_metrics(model, x[:100]))
    with torch.no_grad():
        _, t_eval = timed(lambda: [model(c) for c in torch.cat([x, test_x]).split(1000)])
    rest = t_metrics + t_eval
    print(f"    all curvature measures {total:.2f} s; rest of a checkpoint (study metrics on 100 samples "
          f"{t_metrics:.2f} s + evaluation of {len(x) + len(test_x)} images {t_eval:.2f} s) = {rest:.2f} s; "
          f"the curvature measures are {total / (total + rest):.0%} of such a checkpoint")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 images, a smoke run")
    p.add_argument("--n", type=int, default=None, help="training images (default 1000; --quick 200)")
    p.add_argument("--train", type=int, default=100, help="SGD steps before measuring (default 100)")
    p.add_argument("--models", default="mlp4,vgg10")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cost-only", action="store_true", help="only the per-checkpoint cost (vgg10)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    n = a.n or (200 if a.quick else 1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not a.cost_only:
        hutchpp_small(100 if a.quick else 300)
    for name in a.models.split(","):
        x, y, test_x, source = data_for(name, n)
        loss = make_loss("mse", 10)
        model = network(name, x, y, loss, 10 if a.quick else a.train)
        print(f"== {name} on {source}")
        if not a.cost_only:
            lambda_max_bench(name, model, loss, x, y)
            trace_bench(name, model, loss, x, y, 12 if a.quick else 30)
        if name == "vgg10" and (a.cost_only or not a.quick):
            checkpoint_cost(model, loss, x, y, test_x, 20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
