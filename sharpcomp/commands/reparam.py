"""``sharpcomp reparam RUN_DIR alpha=10 layer=fc1``: rescale one layer of a trained run, print every measure.

The table comes from :func:`sharpcomp.measures.symmetry.reparam.reparam_table` on the run's train sample set, in
float64; this module reads the run folder and the options and prints it.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sharpcomp.engine.loading import load_run, nonfinite_weights
from sharpcomp.measures.symmetry.reparam import reparam_table, rescalable_layers, rescale_unit
from sharpcomp.settings import ConfigError
from sharpcomp.usage import EXIT_USAGE, UsageError, report

USAGE = """usage: sharpcomp reparam RUN_DIR [alpha=10] [layer=NAME] [units=I,J,...] [probes=50] [seed=0] [n=N]

Load the run's last checkpoint (RUN_DIR/checkpoint.pt), rescale hidden layer NAME's incoming weights
and biases by alpha and the next layer's matching weights by 1/alpha (the network function does not
change), and print every metric before and after on the run's train sample set, marking which moved.
  alpha   rescaling factor > 0 (default 10)
  layer   a hidden layer (default: the last one before the output layer)
  units   comma-separated unit/channel indices (default: all units of the layer)
  probes  Hutchinson probes for hessian_trace and quotient_trace (default 50; < 2 skips them)
  seed    seed of the probes (default 0)
  n       use the first n points of the train sample set (default: all of them); each measure is
          recomputed twice in float64, which takes minutes on a convolutional network
  model._target_  a network that is not built in: the dotted path of its callable, named by you
          (the config stored in the checkpoint never chooses code)"""


def _parse(argv: Sequence[str]) -> tuple[str, dict]:
    args = list(argv)
    if args and args[0] == "reparam":
        args = args[1:]
    run_dir, opts = None, {}
    known = ("alpha", "layer", "units", "probes", "seed", "n", "model._target_")
    for a in args:
        if run_dir is None and "=" in a and Path(a).is_dir():
            run_dir = a  # Hydra run folders carry '=' in their names (outputs/runs/.../lr=0.1,seed=0)
        elif "=" in a and not a.startswith("-"):
            k, v = a.split("=", 1)
            if k not in known:
                raise UsageError(f"unknown option '{k}' (options: {', '.join(known)})")
            opts[k] = v
        elif a.startswith("-"):
            raise UsageError(f"unknown flag '{a}' (see `sharpcomp reparam --help`)")
        elif run_dir is None:
            run_dir = a
        else:
            raise UsageError(f"unexpected argument '{a}' (one RUN_DIR, then key=value options)")
    if run_dir is None:
        raise UsageError("missing RUN_DIR (see `sharpcomp reparam --help`)")
    out: dict = {"layer": opts.get("layer"), "target": opts.get("model._target_") or None}
    try:
        out["alpha"] = float(opts.get("alpha", "10"))
    except ValueError:
        raise UsageError(f"alpha must be a positive number, got '{opts['alpha']}'") from None
    if not (math.isfinite(out["alpha"]) and out["alpha"] > 0):
        raise UsageError(f"alpha must be a positive number, got {opts.get('alpha')}")
    for k, default in (("probes", 50), ("seed", 0), ("n", 0)):
        try:
            out[k] = int(opts.get(k, default))
        except ValueError:
            raise UsageError(f"{k} must be an integer, got '{opts[k]}'") from None
    if out["probes"] < 0:
        raise UsageError(f"probes must be >= 0, got {out['probes']}")
    if "n" in opts and out["n"] < 1:
        raise UsageError(f"n must be >= 1, got {out['n']}")
    if "units" in opts:
        try:
            out["units"] = [int(u) for u in opts["units"].split(",") if u.strip()]
        except ValueError:
            raise UsageError(f"units must be comma-separated integers, got '{opts['units']}'") from None
    else:
        out["units"] = None
    return run_dir, out


def main(argv: Sequence[str] | None = None) -> int:
    """``sharpcomp reparam RUN_DIR alpha=10 layer=fc1``: print the before/after table; 0 on success."""
    argv = sys.argv[1:] if argv is None else argv

    def err(msg: str, code: int = EXIT_USAGE) -> int:
        return report("reparam", msg, code)

    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        run_dir, opts = _parse(argv)
    except UsageError as exc:
        return err(str(exc))
    path = Path(run_dir)
    if not path.is_dir():
        return err(f"no run directory '{run_dir}'")
    try:
        run = load_run(path, target=opts["target"])
        model, cfg, x, y, loss_fn = run.model, run.config, run.sample_x, run.sample_y, run.loss_fn
    except FileNotFoundError as exc:
        return err(f"cannot load run '{run_dir}': {exc}", 1)
    except ConfigError as exc:  # a refused checkpoint or stored config
        return err(f"cannot load run '{run_dir}': {exc}", 1)
    except Exception as exc:  # a broken checkpoint or missing data: one line, no traceback
        return err(f"cannot load run '{run_dir}': {type(exc).__name__}: {exc}", 1)
    bad = nonfinite_weights(model)
    if bad:  # a diverged run: nothing to rescale, whatever alpha
        return err(f"run '{run_dir}' holds weights that are not finite ({bad[0]}); a diverged run has nothing "
                   f"to rescale")
    hidden = rescalable_layers(model)
    layer = opts["layer"] or (list(hidden)[-1] if hidden else None)
    if layer is None:
        return err("this model has no rescalable layer")
    try:
        rescale_unit(model, layer, opts["alpha"], opts["units"], copy_model=True)  # validates the input
    except ValueError as exc:
        return err(str(exc))
    mcfg = cfg.get("metrics", {}) if isinstance(cfg, dict) else {}
    kwargs = {k: mcfg[k] for k in ("layer", "log_volume_rank") if mcfg.get(k) is not None}
    if opts["n"]:
        x, y = x[: opts["n"]], y[: opts["n"]]
    start = time.monotonic()

    def progress(stage: str) -> None:
        print(f"sharpcomp reparam: [{time.monotonic() - start:6.0f} s] {stage}", file=sys.stderr, flush=True)

    try:
        with warnings.catch_warnings(record=True) as caught:  # said only when the table can be computed
            warnings.simplefilter("always")
            table = reparam_table(model, x, y, loss_fn, layer, opts["alpha"], units=opts["units"],
                                  probes=opts["probes"], seed=opts["seed"], metrics_kwargs=kwargs,
                                  progress=progress)
    except Exception as exc:  # e.g. alpha so extreme that float64 overflows and a factorisation fails
        why = (str(exc).strip().splitlines() or [""])[0][:200]
        return err(f"the metrics cannot be computed at alpha={opts['alpha']:g} (float64 range exceeded?): "
                   f"{type(exc).__name__}: {why}", 1)
    for note in dict.fromkeys(str(w.message) for w in caught):
        print(f"sharpcomp reparam: note: {note}", file=sys.stderr)
    model_cfg = cfg.get("model", {}) if isinstance(cfg, dict) else {}
    which = "all units" if opts["units"] is None else f"units {','.join(map(str, opts['units']))}"
    print(f"run {run_dir} ({model_cfg.get('name', '?')}), {len(x)} train sample points, float64: "
          f"layer {layer} ({which}) rescaled by alpha={opts['alpha']:g}")
    with pd.option_context("display.float_format", "{:.6g}".format, "display.width", 120):
        print(table.to_string())
    moved = [m for m in table.index if table.loc[m, "moved"]]
    still = [m for m in table.index if not table.loc[m, "moved"] and not math.isnan(table.loc[m, "before"])]
    print(f"moved: {', '.join(moved) or 'none'}")
    print(f"unchanged: {', '.join(still) or 'none'}")
    surprises = [m for m in moved + still if table.loc[m, "moved"] != (table.loc[m, "expected"] == "moves")]
    print(f"against the declared verdicts: {'as expected' if not surprises else 'differs for ' + ', '.join(surprises)}")
    return 0
