"""Records benchmark: the cost of one checkpoint's append at the start and at the end of a long run.

1. Appends ``--checkpoints`` (2,500) one-row checkpoints, in this process and on the same rows, with
   the writer before parts (the whole ``metrics.parquet`` rewritten at every append: quadratic) and
   with ``records.RunRecorder`` (one part per append, compacted at the end). Prints the mean time per
   append over the first and the last 10% of the appends, their ratio (goal <= 1.5x for the new
   writer), the new writer's start against the old one's (goal <= 1x), and the total of each. The last
   append, which ends the run and compacts the parts, is printed apart.
2. ``--real``: the same tiny real run twice, with the old and the new writer,
   ``sharpcomp train data=fashion_mnist model=mlp4 model.width=0.02 log_every=1 eval_every=1000
   metrics.n=4 steps=2000 progress=false``, and the interval between checkpoints (from the records'
   ``wall_time``) over the first and the last 10% of the run (goal <= 1.5x), the final checkpoint
   (whole-set evaluation) left out.

Usage: python scripts/bench_records.py [--checkpoints 2500] [--real | --real-only] [--steps 2000]

The benchmarks and their recorded numbers: docs/benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sharpcomp.results import records
from sharpcomp.results.columns import COLUMNS, METRIC_COLUMNS
from sharpcomp.results.records import METRICS_FILE, RunRecorder, read_metrics


class RewritingRecorder:
    """The records writer before parts (commit dac6e64): every append rewrites the whole file."""

    def __init__(self, run_dir: Path, identity: Mapping[str, object]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.identity = dict(identity)
        self.status = "running"
        self.frame = read_metrics(self.path) if self.path.exists() else None

    @property
    def last_iteration(self) -> int | None:
        return None if self.frame is None or len(self.frame) == 0 else int(self.frame["iteration"].max())

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)

    def truncate_after(self, iteration: int | None) -> None:
        if self.frame is None:
            return
        keep = self.frame.iloc[0:0] if iteration is None else self.frame[self.frame["iteration"] <= iteration]
        if len(keep) != len(self.frame):
            self.frame = keep.reset_index(drop=True)
            self._write()

    def append(self, rows: Iterable[Mapping[str, object]], status: str | None = None) -> None:
        if status is not None:
            self.set_status(status, write=False)
        new = pd.DataFrame([{**self.identity, **row} for row in rows])
        self.frame = new if self.frame is None or len(self.frame) == 0 else pd.concat([self.frame, new],
                                                                                      ignore_index=True)
        self._write()

    def set_status(self, status: str, write: bool = True) -> None:
        self.status = status
        if write and self.frame is not None and len(self.frame):
            self._write()

    def _write(self) -> None:
        frame = self.frame.copy()
        frame["status"] = self.status
        ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
        for col in COLUMNS:
            if col not in frame.columns:
                frame[col] = None
                ordered.append(col)
        frame = frame[ordered]
        for col in METRIC_COLUMNS + records.CHECKPOINT_COLUMNS[2:] + ("sample_loss",):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        self.frame = frame.drop(columns=["status"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        records.atomic_write_parquet(self.path, frame)


IDENTITY = {"run_id": "fashion_mnist-mlp4-lr0.1-b20-s0-bench", "data": "fashion_mnist", "model": "mlp4", "lr": 0.1,
            "batch": 20, "seed": 0, "loss": "mse", "width": 0.02, "outputs": 10, "optim": "sgd", "scale": "quick",
            "data_source": "fashion_mnist", "device": "cpu", "versions": json.dumps({"torch": "x", "sharpcomp": "y"}),
            "settings": json.dumps({"lr": 0.1, "batch": 20, "seed": 0, "model": "mlp4", "width": 0.02})}


def checkpoint_row(it: int, rng: np.random.Generator) -> dict:
    vals = rng.random(16)
    return {"iteration": it, "epoch": it / 3000, "wall_time": 0.06 * it, "train_loss": np.nan, "train_acc": np.nan,
            "test_loss": np.nan, "test_acc": np.nan, "train_loss_running": vals[0], "sample_set": "train",
            "n_samples": 4, "sample_loss": vals[1], **dict(zip(METRIC_COLUMNS, vals[2:10])), "bounds_reason": ""}


def time_appends(recorder, rows: list[dict]) -> np.ndarray:
    times = np.empty(len(rows))
    for k, row in enumerate(rows):
        t = time.perf_counter()
        recorder.append([row], status="finished" if k == len(rows) - 1 else "running")
        times[k] = time.perf_counter() - t
    return times


def first_last(values: np.ndarray) -> tuple[float, float]:
    tenth = max(1, len(values) // 10)
    return float(values[:tenth].mean()), float(values[-tenth:].mean())


def bench_appends(n: int) -> None:
    rng = np.random.default_rng(0)
    rows = [checkpoint_row(200 * k, rng) for k in range(n)]
    print(f"records: {n} one-row checkpoints appended (first / last 10% of the appends, ms per append)")
    starts, frames = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("old (rewrite all)", RewritingRecorder), ("new (one part each)", RunRecorder)):
            run_dir = Path(tmp) / name.split()[0]
            t = time.perf_counter()
            times = time_appends(cls(run_dir, IDENTITY), rows)
            total = time.perf_counter() - t
            first, last = first_last(times[:-1])  # the last append ends the run: compaction, shown apart
            starts[name] = first
            frames[name] = read_metrics(run_dir)
            print(f"  {name:20s} first {1e3 * first:7.2f}  last {1e3 * last:7.2f}  last/first {last / first:5.2f}x"
                  f"  total {total:7.1f} s  (last append, with the compaction: {1e3 * times[-1]:.1f} ms)")
        old, new = frames.values()
        pd.testing.assert_frame_equal(old, new)
        ratio = starts["new (one part each)"] / starts["old (rewrite all)"]
        print(f"  same records: yes; new/old at the start: {ratio:.2f}x")


def real_intervals(recorder_cls, run_dir: Path, steps: int) -> np.ndarray:
    from sharpcomp.cli import main
    from sharpcomp.results import run_state

    saved = run_state.RunRecorder
    run_state.RunRecorder = recorder_cls
    try:
        rc = main(["train", "data=fashion_mnist", "model=mlp4", "model.width=0.02", "log_every=1", "eval_every=1000",
                   "metrics.n=4", f"steps={steps}", "progress=false", f"hydra.run.dir={run_dir}"])
    finally:
        run_state.RunRecorder = saved
    assert rc == 0, rc
    wall = read_metrics(run_dir).groupby("iteration").wall_time.first().to_numpy()
    return np.diff(wall)[:-1]  # the last checkpoint evaluates the whole sets: not a typical interval


def bench_real(steps: int) -> None:
    import contextlib
    import io

    print(f"real run: mlp4 width 0.02, {steps} steps, a checkpoint every step "
          "(interval between checkpoints from wall_time, ms, first / last 10%)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("old (rewrite all)", RewritingRecorder), ("new (one part each)", RunRecorder)):
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                gaps = real_intervals(cls, Path(tmp) / name.split()[0], steps)
            first, last = first_last(gaps)
            print(f"  {name:20s} first {1e3 * first:7.2f}  last {1e3 * last:7.2f}  last/first {last / first:5.2f}x"
                  f"  run {time.perf_counter() - t:6.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=2500)
    ap.add_argument("--real", action="store_true", help="also time a real run with each writer")
    ap.add_argument("--steps", type=int, default=2000, help="steps of the real run")
    ap.add_argument("--real-only", action="store_true", help="only the real runs")
    args = ap.parse_args()
    if not args.real_only:
        bench_appends(args.checkpoints)
    if args.real or args.real_only:
        bench_real(args.steps)


if __name__ == "__main__":
    main()
