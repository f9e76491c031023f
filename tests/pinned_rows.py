"""Pinned rows: a few records computed before the one-engine refactor (commit fe9ed94), kept to show that
results do not change.

``python -m tests.pinned_rows --rows tests/fixtures/pinned_rows.json`` wrote the file once, with the code
of that commit; ``tests/engine/test_pinned_rows.py`` reruns the same cases with today's code and compares.
Do not regenerate the file to make the test pass: a difference beyond the tolerance means a change of
results.

Cases (real Fashion-MNIST, first 1,000 train / 300 test images, CPU, 2 threads): a single mlp4 run with
every sample set, a single vgg10 run (images 1x28x28), a run interrupted and resumed, a run extended by a
longer rerun, a diverging run, and 2-member ensembles with the grouped and the vmap implementation.

``python -m tests.pinned_rows --spread`` measures how far the same cases move on this machine when the
float32 kernels sum in another order, as they do on another x86 CPU: other thread counts, oneDNN off,
other vector instruction sets for ATen, MKL and oneDNN. Each variant runs in its own process (the
instruction-set choices are environment variables read at start-up); the table gives, per column, the
largest relative deviation from the pinned rows. The test's tolerance is set from it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
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
# Ways to make this machine's float32 kernels sum in another order: (name, torch threads or None for
# OMP_NUM_THREADS's choice, oneDNN on, environment)
VARIANTS = (
    ("threads=2", 2, True, {}),
    ("threads=1", 1, True, {}),
    ("threads=3", 3, True, {}),
    ("OMP_NUM_THREADS=1", None, True, {"OMP_NUM_THREADS": "1"}),
    ("mkldnn off", 2, False, {}),
    ("ATEN_CPU_CAPABILITY=avx2", 2, True, {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("ATEN_CPU_CAPABILITY=default", 2, True, {"ATEN_CPU_CAPABILITY": "default"}),
    ("MKL_CBWR=AVX2", 2, True, {"MKL_CBWR": "AVX2"}),
    ("MKL_CBWR=COMPATIBLE", 2, True, {"MKL_CBWR": "COMPATIBLE"}),
    ("ONEDNN_MAX_CPU_ISA=AVX2", 2, True, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("all avx2, 1 thread, mkldnn off", 1, False,
     {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("all generic, 3 threads", 3, True,
     {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
)


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


def compute(threads: int | None = 2, mkldnn: bool = True) -> dict:  # pragma: no cover - by hand
    """Every case's rows, computed now, in a temporary folder."""
    import torch
    from omegaconf import OmegaConf

    from sharpcomp.data.datasets import default_cache_dir, default_data_dir
    from sharpcomp.engine.ensemble import train_ensemble
    from sharpcomp.engine.train import train
    from sharpcomp.results.records import read_metrics
    from tests.conftest import compose_train

    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
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
    return result


def flat_rows(result: dict) -> dict[str, list[dict]]:
    """Every case's rows as one list (an ensemble's members as ``<case>/m<j>``)."""
    out = {}
    for name, rows in result.items():
        if rows and isinstance(rows[0], list):
            out.update({f"{name}/m{j}": member for j, member in enumerate(rows)})
        else:
            out[name] = rows
    return out


def deviations(got: dict, want: dict) -> tuple[dict[str, float], list[str]]:
    """Per float column, the largest relative deviation |got - want| / |want| over every case and row; and
    the differences that no tolerance covers (other non-float values, rows or NaNs)."""
    worst: dict[str, float] = {}
    other = []
    got, want = flat_rows(got), flat_rows(want)
    for case, rows in want.items():
        if len(got[case]) != len(rows):
            other.append(f"{case}: {len(got[case])} rows, pinned {len(rows)}")
            continue
        for g, w in zip(got[case], rows):
            for c in COLUMNS:
                a, b = g[c], w[c]
                if isinstance(a, float) and isinstance(b, float) and c not in ("epoch", "n_samples"):
                    rel = abs(a - b) / abs(b) if b else abs(a)
                    worst[c] = max(worst.get(c, 0.0), rel)
                elif a != b:
                    other.append(f"{case} iteration {w['iteration']} {c}: {a!r}, pinned {b!r}")
    return worst, other


def spread() -> int:  # pragma: no cover - by hand
    """Run every variant in its own process; print the per-column deviations from the pinned rows."""
    want = json.loads(PINNED.read_text())
    overall: dict[str, float] = {}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, threads, mkldnn, env) in enumerate(VARIANTS):
            out = Path(tmp) / f"{i}.json"
            cmd = [sys.executable, "-m", "tests.pinned_rows", "--rows", str(out), "--threads", str(threads or 0)]
            cmd += [] if mkldnn else ["--no-mkldnn"]
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
            if proc.returncode:
                print(f"{name}: failed\n{proc.stderr[-2000:]}")
                failed = True
                continue
            worst, other = deviations(json.loads(out.read_text()), want)
            for c, v in worst.items():
                overall[c] = max(overall.get(c, 0.0), v)
            top = max(worst.values(), default=0.0)
            print(f"{name:<34} max rel {top:.2e}  " + " ".join(f"{c}={v:.1e}" for c, v in worst.items() if v))
            for line in other:
                print(f"    {line}")
            failed |= bool(other)
            sys.stdout.flush()
    print("largest relative deviation per column, over every variant:")
    for c, v in sorted(overall.items(), key=lambda kv: -kv[1]):
        print(f"  {c:<20} {v:.2e}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:  # pragma: no cover - by hand
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.pinned_rows", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spread", action="store_true", help="measure the spread under other kernel orders")
    parser.add_argument("--rows", type=Path, help="write the rows computed now to this file (no comparison)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: leave OMP_NUM_THREADS's)")
    parser.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    args = parser.parse_args(argv)
    if args.spread:
        return spread()
    if args.rows is None:
        parser.error("give --spread or --rows FILE")
    result = compute(args.threads or None, not args.no_mkldnn)
    args.rows.parent.mkdir(parents=True, exist_ok=True)
    args.rows.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
