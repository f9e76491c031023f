"""What every ``metrics.flatness`` measure costs at one checkpoint, at its defaults (or at given settings),
against the rest of a checkpoint interval at the default cadence.

For one model (mlp4 on Fashion-MNIST or vgg10 on two-class CIFAR-10, all their training images when the
data folder is found) and one network (seed 0, ``--train`` SGD steps at lr 0.1, batch 20, so that it is
not at initialisation), in one process on the same weights:

- the training interval: ``--interval`` SGD steps (default: the dataset's ``quick_log_every``), timed on
  200 steps and scaled;
- the rest of a checkpoint: the whole train and test sets evaluated, the study's metrics (network-wide
  columns included) on 100 training points;
- each measure, switched on with ``{}`` (its defaults) or with the settings given by ``--set``, computed
  once by the registry's loop on the training set with the run's batch size (what a run computes at a
  flatness checkpoint).

Wall time and process CPU time (summed over threads) are printed for each; on a shared machine the CPU
time is the steadier of the two.

    python scripts/bench_measures.py --model mlp4
    python scripts/bench_measures.py --model mlp4 --measures hessian_max,keskar --set '{"keskar": {"n": 256}}'

Recorded numbers and the commands behind them: docs/benchmarks/measures.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharpcomp.data.datasets import default_data_dir, load_dataset  # noqa: E402
from sharpcomp.engine.evaluation import evaluate  # noqa: E402
from sharpcomp.losses import make_loss  # noqa: E402
from sharpcomp.measures.registry import plan, switchable  # noqa: E402
from sharpcomp.measures.sample import Sample  # noqa: E402
from sharpcomp.measures.study.metrics import compute_metrics  # noqa: E402
from sharpcomp.models import build_model  # noqa: E402

CASES = {"mlp4": ("fashion_mnist", None, 1000), "vgg10": ("cifar10", [0, 1], 500)}


def timed(fn):
    """(result, wall seconds, CPU seconds) of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def sgd(model, loss, x, y, steps: int, g: torch.Generator) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (20,), generator=g)
        opt.zero_grad()
        loss(model(x[idx]), y[idx]).backward()
        opt.step()


def rest_of_interval(model, loss, data, interval: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``interval`` SGD steps (timed on 200) and one checkpoint without the measures."""
    g = torch.Generator().manual_seed(1)
    _, w, c = timed(lambda: sgd(model, loss, data.train_x, data.train_y, 200, g))
    model.eval()
    _, we, ce = timed(lambda: (evaluate(model, data.train_x, data.train_y, "mse"),
                               evaluate(model, data.test_x, data.test_y, "mse"),
                               compute_metrics(model, data.train_x[:100], network_wide=True, progress=False)))
    return w * interval / 200 + we, c * interval / 200 + ce


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=tuple(CASES), default="mlp4")
    p.add_argument("--measures", default=None, help="comma-separated names (default: every flatness measure)")
    p.add_argument("--set", default="{}", help='JSON: settings per measure, e.g. \'{"keskar": {"n": 256}}\'')
    p.add_argument("--train", type=int, default=300, help="SGD steps before measuring (default 300)")
    p.add_argument("--interval", type=int, default=None, help="steps per checkpoint (default: the quick scale's)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dataset, classes, interval = CASES[a.model]
    data = load_dataset(dataset, dataset, classes, default_data_dir(), None)
    loss = make_loss("mse", 10)
    torch.manual_seed(0)
    model = build_model(a.model, 10)
    initial = copy.deepcopy(model).eval()  # for the measures relative to initialisation (dist_init)
    sgd(model, loss, data.train_x, data.train_y, a.train, torch.Generator().manual_seed(0))
    chosen = a.measures.split(",") if a.measures else list(switchable())
    given = json.loads(a.set)
    rest_w, rest_c = rest_of_interval(model, loss, data, a.interval or interval)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.model} on {dataset} "
          f"({len(data.train_x)} training images), after {a.train} SGD steps")
    print(f"rest of a checkpoint interval ({a.interval or interval} steps at batch 20, evaluation, study metrics): "
          f"{rest_w:.1f} s wall, {rest_c:.1f} s CPU")
    total_w = total_c = 0.0
    for name in chosen:
        entry = given.get(name, {})
        measure_plan = plan({name: entry})
        settings = measure_plan.settings(name)
        sample = Sample(model.eval(), loss, data.train_x, data.train_y, torch.Generator().manual_seed(0), 20,
                        initial=lambda: initial)
        _, w, c = timed(lambda mp=measure_plan, s=sample: mp.compute(s))
        total_w, total_c = total_w + w, total_c + c
        shown = dataclasses.asdict(settings)
        print(f"  {name:20s} {w:7.1f} s wall {c:7.1f} s CPU  {json.dumps(shown, default=str)}", flush=True)
    print(f"all {len(chosen)}: {total_w:.1f} s wall, {total_c:.1f} s CPU per checkpoint "
          f"({total_w / (total_w + rest_w):.0%} of an interval with all of them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
