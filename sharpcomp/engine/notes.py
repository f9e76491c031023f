"""The lines a run prints about itself before it trains: sample sets cut to the data, more outputs than
classes, a run that has ended (and a live logger with nothing to log)."""

from __future__ import annotations

import sys

from sharpcomp.data.datasets import Dataset
from sharpcomp.results.records import METRICS_FILE
from sharpcomp.results.run_state import RunState
from sharpcomp.settings import Settings


def ended_line(s: Settings, run_dir, state: RunState) -> str:
    """The line for a run that has ended: nothing to train, and nothing for a live logger to log."""
    line = f"sharpcomp: {run_dir}: {state.result.status} at iteration {state.start}; nothing to train"
    name = (s.raw.get("logger") or {}).get("name", "none")
    if name != "none":
        line += (f" (logger={name} logs checkpoints as they are trained: nothing to log; the rows are in "
                 f"{METRICS_FILE})")
    return line


def note_small_sets(s: Settings, data: Dataset) -> None:
    """One line when ``metrics.n`` exceeds a set its sample sets are drawn from (the sets are cut)."""
    sizes = {"train": len(data.train_x), "test": len(data.test_x)}
    cut = [f"{name} {sizes[name]}" for name in s.metrics.sample_sets if s.metrics.n > sizes.get(name, s.metrics.n)]
    if cut:
        print(f"sharpcomp: metrics.n={s.metrics.n} is more than the data holds; sample sets cut to "
              f"{', '.join(cut)} samples", file=sys.stderr, flush=True)


def note_outputs(s: Settings, data: Dataset) -> None:
    """One line when the network has more outputs than the data has classes (the study's vgg10 has 10 for
    two-class CIFAR-10): accuracy takes the largest output, and an output that names no class counts as
    wrong, so an untrained network's accuracy can be 0."""
    outputs, classes = s.num_outputs(data.num_classes), data.num_classes
    if outputs > classes:
        extra = f"output {classes}" if outputs == classes + 1 else f"outputs {classes}-{outputs - 1}"
        print(f"sharpcomp: {s.model['name']} has {outputs} outputs for {classes} classes (model.outputs="
              f"{s.model.get('outputs')}): a prediction on {extra} names no class and counts as wrong, so early "
              f"accuracy can be near 0 (model.outputs=classes gives {classes} outputs)", file=sys.stderr, flush=True)
