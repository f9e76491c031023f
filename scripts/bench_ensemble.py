"""Training throughput: a sweep as one vectorised ensemble vs the same runs one after another.

For each model (vgg10 on two-class CIFAR-10, mlp4 on Fashion-MNIST), the fig1 sweep (lr 0.05 / 0.1 /
0.2 x seeds 0-4 = 15 runs, batch 20) trains a fixed number of SGD steps per run, no checkpoints:

- ``sequential``: each run in turn, a plain ``train.py``-equivalent loop (``build_model(seed)``,
  ``torch.optim.SGD``, ``epoch_permutation`` minibatches, running loss summed on the device);
- ``ensemble``: the 15 runs in lockstep (``sharpcomp.engine.ensemble.StackedSGD``: stacked parameters, one
  call per step for all members, minibatches gathered as a (15, 20, ...) tensor), with the ``grouped``
  implementation and with ``vmap`` (``torch.func``).

The two are interleaved in rounds (a slice of steps of each, in turn), so background load on a shared
machine hits both alike; aggregate iterations/s = runs x steps / seconds. Then one checkpoint's cost:
whole-set evaluation of all members (vectorised vs member by member) and the sample-set metrics
(``metrics_stacked.compute_metrics_stacked`` vs ``metrics.compute_metrics`` member by member), with
their share.

    python scripts/bench_ensemble.py            # 200 steps per run
    python scripts/bench_ensemble.py --quick    # smoke run (20 steps, small checkpoint part)
    python scripts/bench_ensemble.py --device cuda --compile

Recorded numbers and the commands behind them: docs/benchmarks/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharpcomp.data.datasets import load_dataset
from sharpcomp.data.order import epoch_permutation, steps_per_epoch
from sharpcomp.engine.ensemble import StackedSGD, evaluate_stacked
from sharpcomp.engine.evaluation import evaluate
from sharpcomp.losses import make_loss
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.stacked import compute_metrics_stacked
from sharpcomp.models import build_model  # noqa: E402

LRS = (0.05, 0.1, 0.2)
SEEDS = (0, 1, 2, 3, 4)
BATCH = 20


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Sequential:
    """One plain run (train.py's loop without checkpoints), advanced a slice of steps at a time."""

    def __init__(self, name, data, lr, seed, device):
        self.model = build_model(name, 10, input_shape=data.input_shape, seed=seed).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
        self.loss_fn = make_loss("mse", 10)
        self.seed, self.data, self.device = seed, data, device
        self.n = len(data.train_x)
        self.spe = steps_per_epoch(self.n, BATCH)
        self.it, self.epoch, self.perm = 0, -1, None
        self.running = torch.zeros((), device=device)

    def run(self, steps):
        for _ in range(steps):
            e, kb = divmod(self.it, self.spe)
            if e != self.epoch:
                self.epoch, self.perm = e, epoch_permutation(self.seed, e, self.n).to(self.device)
            idx = self.perm[kb * BATCH:(kb + 1) * BATCH]
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.data.train_x[idx]), self.data.train_y[idx])
            loss.backward()
            self.opt.step()
            self.running += loss.detach()
            self.it += 1


class Ensemble:
    """The same runs in lockstep (the loop of sharpcomp.engine.ensemble without checkpoints)."""

    def __init__(self, name, data, device, impl, compile):
        runs = [(lr, s) for lr in LRS for s in SEEDS]
        models = [build_model(name, 10, input_shape=data.input_shape, seed=s).to(device) for _, s in runs]
        self.net = StackedSGD(models, [lr for lr, _ in runs], "mse", compile=compile, impl=impl)
        self.seeds = [s for _, s in runs]
        self.data, self.device = data, device
        self.n = len(data.train_x)
        self.spe = steps_per_epoch(self.n, BATCH)
        self.it, self.epoch, self.perms = 0, -1, None
        self.running = torch.zeros(len(runs), device=device)
        self.targets = F.one_hot(data.train_y, 10).to(data.train_x.dtype)

    def run(self, steps):
        for _ in range(steps):
            e, kb = divmod(self.it, self.spe)
            if e != self.epoch:
                self.epoch = e
                self.perms = torch.stack([epoch_permutation(s, e, self.n) for s in self.seeds]).to(self.device)
            idx = self.perms[:, kb * BATCH:(kb + 1) * BATCH]
            self.running += self.net.step(self.data.train_x[idx], self.targets[idx])
            self.it += 1


def timed(fn, device):
    sync(device)
    w, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w, time.process_time() - c


def bench_training(name, data, device, steps, rounds, impls, compile):
    runs = len(LRS) * len(SEEDS)
    seq = [Sequential(name, data, lr, s, device) for lr in LRS for s in SEEDS]
    ens = {impl: Ensemble(name, data, device, impl, compile) for impl in impls}
    # warm-up (first-call allocations, torch.compile), not timed
    for r in seq:
        r.run(2)
    for e in ens.values():
        e.run(2)
    per_round = max(1, steps // rounds)
    totals = {"sequential": [0.0, 0.0], **{f"ensemble[{i}]": [0.0, 0.0] for i in impls}}
    done = 0
    while done < steps:
        s = min(per_round, steps - done)
        w, c = timed(lambda s=s: [r.run(s) for r in seq], device)
        totals["sequential"][0] += w
        totals["sequential"][1] += c
        for impl, e in ens.items():
            w, c = timed(lambda s=s, e=e: e.run(s), device)
            totals[f"ensemble[{impl}]"][0] += w
            totals[f"ensemble[{impl}]"][1] += c
        done += s
    out = {}
    base = runs * steps / totals["sequential"][0]
    for key, (w, c) in totals.items():
        ips = runs * steps / w
        out[key] = {"seconds": w, "cpu_seconds": c, "iterations_per_s": ips, "speedup": ips / base}
    return out


def bench_checkpoint(name, data, device, n_eval, metrics_n, impl, repeats):
    """One checkpoint of the 15-member ensemble: whole-set evaluation (vectorised vs one by one) on
    n_eval train + n_eval test images, and the sample-set metrics on metrics_n training samples per
    member (stacked vs member by member; median of ``repeats``, interleaved)."""
    runs = [(lr, s) for lr in LRS for s in SEEDS]
    models = [build_model(name, 10, input_shape=data.input_shape, seed=s).to(device).eval() for _, s in runs]
    net = StackedSGD(models, [lr for lr, _ in runs], "mse", impl=impl)
    xs = [(data.train_x[:n_eval], data.train_y[:n_eval]), (data.test_x[:n_eval], data.test_y[:n_eval])]
    w_vec, _ = timed(lambda: [evaluate_stacked(net, x, y, "mse") for x, y in xs], device)
    w_seq, _ = timed(lambda: [evaluate(m, x, y, "mse") for m in models for x, y in xs], device)
    samples = [data.train_x[j * metrics_n:(j + 1) * metrics_n] for j in range(len(models))]
    out = {}

    def members():
        out["members"] = [compute_metrics(m, x) for m, x in zip(models, samples)]

    def stacked():
        out["stacked"] = compute_metrics_stacked(models, samples)

    stacked()  # warm-up
    t_mem, t_st = [], []
    for _ in range(repeats):
        t_mem.append(timed(members, device)[0])
        t_st.append(timed(stacked, device)[0])
    w_mem, w_st = statistics.median(t_mem), statistics.median(t_st)
    agree = max(abs(a["sharpness"] - b["sharpness"]) / abs(a["sharpness"])
                for a, b in zip(out["members"], out["stacked"]))
    scale = (len(data.train_x) + len(data.test_x)) / (2 * n_eval)
    eval_full = w_vec * scale
    return {"eval_vectorised_s": w_vec, "eval_member_by_member_s": w_seq, "eval_speedup": w_seq / w_vec,
            "eval_full_sets_estimate_s": eval_full, "metrics_member_by_member_s": w_mem, "metrics_stacked_s": w_st,
            "metrics_speedup": w_mem / w_st, "metrics_max_rel_diff_S": agree,
            "metrics_share_of_checkpoint": w_st / (w_st + eval_full)}


def bench_engine(name, data, device, steps):
    """The fig1 grid through sharpcomp's one training loop: ``train_ensemble`` against ``train`` run by
    run, on the same data (2,000 training images: the step does not depend on the set's size, the
    checkpoints do); training time only (``train.LAST_TIMINGS``), checkpoints excluded."""
    import tempfile

    from omegaconf import OmegaConf

    from sharpcomp.data.datasets import Dataset
    from sharpcomp.engine import train as engine
    from sharpcomp.engine.ensemble import train_ensemble
    from sharpcomp.settings import defaults

    small = Dataset(data.name, data.train_x[:2000], data.train_y[:2000], data.test_x[:200], data.test_y[:200],
                    data.num_classes, data.source)
    base = defaults(model=name, data="cifar10_2class" if name == "vgg10" else "fashion_mnist")
    base.update(steps=steps, log_every=steps, batch=BATCH, progress=False, device=str(device))
    base["metrics"]["n"] = 4
    cfgs = [OmegaConf.create({**base, "lr": lr, "seed": seed}) for lr in LRS for seed in SEEDS]
    with tempfile.TemporaryDirectory() as tmp:
        train_ensemble(cfgs, [Path(tmp) / "e" / str(j) for j in range(len(cfgs))], data=small)
        ens = engine.LAST_TIMINGS["train"]
        alone = 0.0
        for j, cfg in enumerate(cfgs):
            engine.train(cfg, Path(tmp) / "s" / str(j), data=small)
            alone += engine.LAST_TIMINGS["train"]
    n = len(cfgs) * steps
    return {"ensemble_it_s": n / ens, "one_by_one_it_s": n / alone, "speedup": alone / ens}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--steps", type=int, default=None, help="SGD steps per run (default 200; --quick: 20)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaving rounds (default 10; --quick: 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's)")
    ap.add_argument("--models", default="vgg10,mlp4")
    ap.add_argument("--impls", default="grouped,vmap", help="ensemble implementations to time")
    ap.add_argument("--compile", action="store_true", help="torch.compile the ensemble step")
    ap.add_argument("--no-checkpoint", action="store_true", help="skip the checkpoint-cost part")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--no-engine", action="store_true", help="skip the part timing sharpcomp's own training loop")
    args = ap.parse_args(argv)
    steps = args.steps or (20 if args.quick else 200)
    rounds = args.rounds or (2 if args.quick else 10)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = [i for i in args.impls.split(",") if i]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor()}"
          f"), torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; 15 runs x {steps} steps, batch {BATCH}", flush=True)
    datasets = {"vgg10": ("cifar10_2class", "cifar10", [0, 1]), "mlp4": ("fashion_mnist", "fashion_mnist", None)}
    results = {}
    for name in [m for m in args.models.split(",") if m]:
        data = load_dataset(*datasets[name], device=device)
        res = bench_training(name, data, device, steps, rounds, impls, args.compile)
        print(f"\n{name} on {data.name}: aggregate iterations/s (wall), 15 runs x {steps} steps")
        for key, r in res.items():
            print(f"  {key:20s} {r['iterations_per_s']:8.1f} it/s  ({r['seconds']:.1f} s wall, "
                  f"{r['cpu_seconds']:.1f} s CPU)  speedup {r['speedup']:.2f}x", flush=True)
        results[name] = {"training": res}
        if not args.no_engine:
            eng = bench_engine(name, data, device, steps)
            print(f"  sharpcomp's loop (train_ensemble vs train, 15 runs, checkpoints excluded): "
                  f"{eng['ensemble_it_s']:.1f} vs {eng['one_by_one_it_s']:.1f} it/s, speedup {eng['speedup']:.2f}x",
                  flush=True)
            results[name]["engine"] = eng
        if not args.no_checkpoint:
            n_eval = 200 if args.quick else 1000
            ck = bench_checkpoint(name, data, device, n_eval, 20 if args.quick else 100,
                                  impls[0] if impls else "auto", 1 if args.quick else 3)
            print(f"  checkpoint of 15 members: whole-set eval on {n_eval}+{n_eval} images "
                  f"{ck['eval_vectorised_s']:.2f} s vectorised vs {ck['eval_member_by_member_s']:.2f} s one by one "
                  f"({ck['eval_speedup']:.2f}x); full sets ~{ck['eval_full_sets_estimate_s']:.1f} s\n"
                  f"  sample-set metrics, 15 members: {ck['metrics_stacked_s']:.2f} s stacked vs "
                  f"{ck['metrics_member_by_member_s']:.2f} s member by member ({ck['metrics_speedup']:.2f}x; S agrees "
                  f"to {ck['metrics_max_rel_diff_S']:.1e}); {100 * ck['metrics_share_of_checkpoint']:.0f}% of a "
                  f"checkpoint", flush=True)
            results[name]["checkpoint"] = ck
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
