"""``sharpcomp reparam RUN_DIR alpha=10 layer=fc1 [measures=...]``: rescale one layer of a run, print the measures.

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

from sharpcomp.engine.loading import MeasureNotNamed, load_run, nonfinite_weights
from sharpcomp.measure_names import flatness_options
from sharpcomp.measures.own import load as load_own
from sharpcomp.measures.registry import canonical, plan
from sharpcomp.measures.symmetry.reparam import chosen_measures, reparam_table, rescalable_layers, rescale_unit
from sharpcomp.settings import ConfigError
from sharpcomp.usage import EXIT_USAGE, Option, Syntax, UsageError, choices_list, integer, number, report
from sharpcomp.warning_lines import drop_noise

SYNTAX = Syntax(
    command="reparam",
    summary="Load the run's last checkpoint (RUN_DIR/checkpoint.pt), rescale hidden layer NAME's incoming weights "
            "and biases by alpha and the next layer's matching weights by 1/alpha (the network function does not "
            "change), and print every measure before and after on the run's train sample set, marking which moved.",
    folders="RUN_DIR",
    folders_help="a run folder (any folder sharpcomp train wrote)",
    most=1,
    options=(
        Option("alpha", "rescaling factor > 0 (default 10)", "A"),
        Option("layer", "a hidden layer (default: the last one before the output layer)", "NAME"),
        Option("units", "comma-separated unit/channel indices (default: all units of the layer)", "I,J"),
        Option("measures", "comma-separated measures to compute (default: every measure with a declared verdict: "
                           "metrics, network_wide, quotient_trace, worst_case, hessian_max, ...)", "LIST"),
        Option("probes", "Hutchinson probes for the traces (default 50; < 2 skips them)", "K"),
        Option("seed", "seed of the probes and draws (default 0)", "S"),
        Option("n", "use the first n points of the train sample set (default: all of them); each measure is "
                    "computed twice in float64, which takes minutes on a convolutional network", "N"),
        Option("model._target_", "a network that is not built in: the dotted path of its callable, named by you "
                                 "(the config stored in the checkpoint never chooses code)", "PATH"),
    ),
    families=(("metrics.flatness.", "a measure of your own, {_target_: mypkg.measures.MEASURE, ...} (or {} for an "
                                    "installed package's): its rows join the table; a run that recorded one is "
                                    "read only when you name it"),),
    examples=("sharpcomp reparam outputs/runs/fashion_mnist-mlp4/default alpha=10 layer=fc2",
              "sharpcomp reparam RUN measures=hessian_max,worst_case n=20"),
)


def _parse(argv: Sequence[str]) -> tuple[str, dict]:
    """The run folder and the checked options; UsageError for a bad command line."""
    args = list(argv)
    if args and args[0] == "reparam" and not Path("reparam").exists():
        args = args[1:]
    try:
        args, flatness = flatness_options(args)
        own = own_entries(flatness)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    parsed = SYNTAX.parse(args)
    if not parsed.folders:
        raise UsageError("missing RUN_DIR (see `sharpcomp reparam --help`)")
    opts = parsed.values
    out: dict = {"layer": opts.get("layer"), "target": opts.get("model._target_") or None, "flatness": flatness,
                 "own": own}
    out["alpha"] = number(parsed.said("alpha"), opts.get("alpha", "10"), 0, above=True)
    out["probes"] = integer(parsed.said("probes"), opts.get("probes", "50"), 0)
    out["seed"] = integer(parsed.said("seed"), opts.get("seed", "0"))
    out["n"] = integer(parsed.said("n"), opts["n"], 1) if "n" in opts else 0
    out["units"] = None
    if "units" in opts:
        try:
            out["units"] = [int(u) for u in opts["units"].split(",") if u.strip()]
        except ValueError:
            raise UsageError(f"units must be comma-separated integers, got '{opts['units']}'") from None
    out["measures"] = None
    if "measures" in opts:
        out["measures"] = choices_list("measures", opts["measures"], [m.name for m in chosen_measures()])
    return parsed.folders[0], out


def own_entries(flatness: dict) -> list[tuple]:
    """The measures of one's own named on the command line (``metrics.flatness.NAME=...``), checked (ValueError,
    one line), each with the settings named for it; built-in measures named that way are in the table anyway."""
    plan(flatness)  # every check a run makes
    out = []
    for key, value in flatness.items():
        if canonical(key) is None and value is not None and value is not False:
            m, settings = load_own(key, value)
            out.append((m, {} if settings is True else dict(settings)))
    return out


@SYNTAX.entry_point
def main(argv: list[str]) -> int:
    """``sharpcomp reparam RUN_DIR alpha=10 layer=fc1``: print the before/after table; 0 on success."""

    def err(msg: str, code: int = EXIT_USAGE) -> int:
        return report("reparam", msg, code)

    try:
        run_dir, opts = _parse(argv)
    except UsageError as exc:
        return err(str(exc))
    path = Path(run_dir)
    if not path.is_dir():
        return err(f"no run directory '{run_dir}'")
    try:
        run = load_run(path, target=opts["target"], measures=opts["flatness"])
        model, cfg, x, y, loss_fn = run.model, run.config, run.sample_x, run.sample_y, run.loss_fn
    except FileNotFoundError as exc:
        return err(f"cannot load run '{run_dir}': {exc}", 1)
    except ConfigError as exc:  # a refused checkpoint or stored config (a measure left unnamed: the user's to name)
        return err(f"cannot load run '{run_dir}': {exc}", EXIT_USAGE if isinstance(exc, MeasureNotNamed) else 1)
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
            drop_noise()  # collected to be said, but never a library's notice of its own deprecation
            table = reparam_table(model, x, y, loss_fn, layer, opts["alpha"], units=opts["units"],
                                  probes=opts["probes"], seed=opts["seed"], metrics_kwargs=kwargs,
                                  measures=opts["measures"], own=opts["own"], progress=progress)
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
