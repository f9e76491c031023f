"""Pinned rows: a few records computed on main before the one-engine refactor (issue 10, commit fe9ed94).

``python -m tests.pinned_rows`` wrote ``tests/fixtures/pinned_rows.json`` once, with the code of that commit;
``tests/test_pinned_rows.py`` reruns the same cases with today's code and compares. Do not regenerate
the file to make the test pass: a difference means a change of results, which the refactor promised not
to make.

Cases (real Fashion-MNIST, first 1,000 train / 300 test images, CPU, 2 threads): a single mlp4 run with
every sample set, a single vgg10 run (images 1x28x28), a run interrupted and resumed, a run extended by a
longer rerun, a diverging run, and 2-member ensembles with the grouped and the vmap implementation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PINNED = Path(__file__).resolve().parent / "fixtures" / "pinned_rows.json"
COLUMNS = ("run_id", "status", "iteration", "epoch", "sample_set", "n_samples", "train_loss_running", "train_loss",
           "train_acc", "test_loss", "test_acc", "sample_loss", "sharpness", "G", "log_volume", "mls", "local_dim",
           "bound_b", "bound_c", "bound_d")
BASE = ["data=fashion_mnist", "model=mlp4", "model.width=0.2", "steps=12", "log_every=4", "metrics.n=8",
        "progress=false", "batch=16"]
CASES = {
    "single_mlp4": BASE + ["metrics.sample_sets=[train,test,misclassified]"],
    "single_vgg10": ["data=fashion_mnist", "model=vgg10", "model.width=0.25", "steps=6", "log_every=3",
                     "metrics.n=6", "progress=false", "batch=8", "lr=0.05"],
    "resumed": BASE + ["seed=3"],
    "extended": BASE + ["seed=4"],
    "diverged": BASE + ["lr=40", "seed=5"],
    "ensemble_grouped": BASE + ["eval_every=2"],
    "ensemble_vmap": BASE + ["eval_every=2"],
}
MEMBERS = ((0.1, 1), (0.2, 2))  # (lr, seed) of the ensembles


def frame_rows(frame) -> list[dict]:
    """The pinned columns of a records frame, as JSON-safe rows (NaN and missing as None)."""
    out = []
    for rec in frame.to_dict("records"):
        row = {}
        for c in COLUMNS:
            v = rec.get(c)
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            row[c] = v
        out.append(row)
    return out


def small_data(data_dir, cache_dir):
    from sharpcomp.data.datasets import Dataset, load_dataset

    d = load_dataset("fashion_mnist", "fashion_mnist", None, data_dir, cache_dir)
    return Dataset("fashion_mnist", d.train_x[:1000].clone(), d.train_y[:1000].clone(), d.test_x[:300].clone(),
                   d.test_y[:300].clone(), 10, d.source)


def generate(out: Path = PINNED) -> None:  # pragma: no cover - run once, by hand
    import tempfile

    import torch
    from omegaconf import OmegaConf

    from sharpcomp.data.datasets import default_cache_dir, default_data_dir
    from sharpcomp.engine.ensemble import train_ensemble
    from sharpcomp.engine.train import train
    from sharpcomp.results.records import read_metrics
    from tests.conftest import compose_train

    torch.set_num_threads(2)
    data = small_data(default_data_dir(), default_cache_dir())

    def cfg(overrides):
        c = compose_train(overrides)
        OmegaConf.set_struct(c, False)
        return c

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("single_mlp4", "single_vgg10", "diverged"):
            train(cfg(CASES[name]), tmp / name, data=data)
            result[name] = frame_rows(read_metrics(tmp / name))

        def stop_at_8(it, rows):
            if it == 8:
                raise KeyboardInterrupt

        try:
            train(cfg(CASES["resumed"]), tmp / "resumed", data=data, callback=stop_at_8)
        except KeyboardInterrupt:
            pass
        train(cfg(CASES["resumed"]), tmp / "resumed", data=data)
        result["resumed"] = frame_rows(read_metrics(tmp / "resumed"))
        train(cfg(CASES["extended"] + ["steps=8"]), tmp / "extended", data=data)
        train(cfg(CASES["extended"]), tmp / "extended", data=data)
        result["extended"] = frame_rows(read_metrics(tmp / "extended"))
        for name, impl in (("ensemble_grouped", "grouped"), ("ensemble_vmap", "vmap")):
            cfgs = [cfg(CASES[name] + [f"lr={lr}", f"seed={s}"]) for lr, s in MEMBERS]
            dirs = [tmp / name / f"m{j}" for j in range(len(cfgs))]
            train_ensemble(cfgs, dirs, data=data, impl=impl)
            result[name] = [frame_rows(read_metrics(d)) for d in dirs]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":  # pragma: no cover
    generate()
