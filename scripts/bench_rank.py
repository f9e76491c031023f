"""Steps to a training loss: how long a run of the ranking experiment (conf/experiment/rank.yaml) trains.

Plain SGD on mlp4 and the first ``--n-train`` Fashion-MNIST training images, MSE against one-hot targets
(sharpcomp's loss), the whole-training-set loss read every ``--every`` steps, until it is at or below
``--loss`` or ``--cap`` steps: prints the steps it took and the CPU time per step (process time, the
steadier number on a shared machine), for the settings given (each a comma list; every combination runs).

Usage: python scripts/bench_rank.py --lr 0.1,0.2 --batch 32 --width 0.25 --n-train 2000 [--threads 1]

Recorded numbers and the commands behind them: docs/benchmarks/ranking.md.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from sharpcomp.data.datasets import default_data_dir, load_dataset
from sharpcomp.models import mlp4


def steps_to(x, y, lr: float, batch: int, width: float, loss: float, every: int, cap: int) -> tuple[int, float, float]:
    """(steps, the whole-set loss then, CPU seconds) of plain SGD from mlp4's seed-0 initial weights."""
    targets = F.one_hot(y, 10).float()
    torch.manual_seed(0)
    model = mlp4(10, width)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    start, it, full = time.process_time(), 0, float("nan")
    while it < cap:
        perm = torch.randperm(len(x), generator=order)
        for k in range(0, len(x) - batch + 1, batch):
            idx = perm[k:k + batch]
            opt.zero_grad()
            F.mse_loss(model(x[idx]), targets[idx]).backward()
            opt.step()
            it += 1
            if it % every == 0:
                with torch.no_grad():
                    full = float(F.mse_loss(model(x), targets))
                if full <= loss:
                    return it, full, time.process_time() - start
            if it >= cap:
                break
    return it, full, time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lr", default="0.1")
    p.add_argument("--batch", default="32")
    p.add_argument("--width", default="0.25")
    p.add_argument("--n-train", default="2000")
    p.add_argument("--loss", type=float, default=0.01)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--cap", type=int, default=30000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion_mnist", "fashion_mnist", None, default_data_dir(), None)
    grid = itertools.product(*(map(float, a.lr.split(",")), map(int, a.batch.split(",")),
                               map(float, a.width.split(",")), map(int, a.n_train.split(","))))
    print(f"{'lr':>5} {'batch':>5} {'width':>5} {'images':>6} {'steps':>6} {'loss':>8} {'CPU/step':>9}")
    for lr, batch, width, n in grid:
        steps, full, cpu = steps_to(data.train_x[:n], data.train_y[:n], lr, batch, width, a.loss, a.every, a.cap)
        print(f"{lr:>5g} {batch:>5d} {width:>5g} {n:>6d} {steps:>6d} {full:>8.4f} {1000 * cpu / steps:>7.2f}ms",
              flush=True)


if __name__ == "__main__":
    main()
