"""GPU benchmark: eager against CUDA-graph steps, checkpoint cost against its floor, and the
projected time of the paper's scale, for vgg10 (two-class CIFAR-10) and mlp4 (Fashion-MNIST).

1. Steps, batch 20: one run (``PlainStepper``) and K = 15 runs (``EnsembleStepper``, fig1's lr x seed
   grid), eager (``cuda_graph=off``) and as a replayed CUDA graph (``cuda_graph=auto``), built from the
   same weights and timed over the same indices in interleaved rounds in this process; the
   graph/eager ratio, and how far the two trajectories' parameters end apart.
2. One checkpoint of a 15-member ensemble (``train._Loop.checkpoint`` on runs opened in a temporary
   folder: whole-set evaluation, stacked metrics, records, checkpoint.pt) against its floor: the
   stacked whole-set evaluation (train and test sets) plus the stacked sample-set metrics.
3. Projected paper-scale times (500,000 iterations, a checkpoint every 200): fig1 (15 vgg10 runs, one
   ensemble) from the measured rates, and the whole study (``scripts/paper_plan.py``: every
   experiment's new runs, grouped as the ensemble launcher groups them); a group of another size is
   an estimate (step time interpolated linearly in K between 1 and 15 runs, batch size taken as 20,
   checkpoint scaled linearly in K).

On a CPU the graph rows say "n/a (no CUDA)". Hydra is needed only where installed (configs are composed
from conf/ otherwise), so it runs on a GPU machine through the bundle of ``../shared/tools/gpu-bundle.sh``:

    bash .gpu-bundle/run.sh python scripts/bench_gpu.py --json /tmp/bench_gpu.json
    python scripts/bench_gpu.py --quick                # smoke run

Recorded numbers and the commands behind them: docs/benchmarks/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: paper_plan
import paper_plan as pp  # noqa: E402

MODELS = {"vgg10": "cifar10_2class", "mlp4": "fashion_mnist"}
K = 15
WARM = 3


def params_of(stepper) -> list[torch.Tensor]:
    return list(stepper.model.parameters()) if hasattr(stepper, "model") else list(stepper.net.params.values())


def max_rel_diff(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(params_of(a), params_of(b)))


def bench_steps(model, data_name, data, device, k, steps, rounds) -> dict:
    """Eager and graph steppers of k runs from the same weights, timed over the same indices."""
    eager, _ = pp.make_stepper(model, data_name, data, k, 20, device, cuda_graph="off")
    graph = None
    if device.type == "cuda":
        graph, _ = pp.make_stepper(model, data_name, data, k, 20, device, cuda_graph="auto")
    idx = pp.batches(data, [j // 3 for j in range(k)], 20, WARM + steps, device)
    for s in (eager, graph):
        if s is not None:
            pp.time_steps(s, idx[:WARM], device)  # warm-up (the graph stepper captures here)
    captured = graph is not None and getattr(graph, "graphed", None) is not None
    times = {"eager": 0.0, "graph": 0.0}
    per = max(1, steps // rounds)
    for r in range(0, steps, per):
        chunk = idx[WARM + r:WARM + min(steps, r + per)]
        times["eager"] += pp.time_steps(eager, chunk, device) * len(chunk)
        if graph is not None:
            times["graph"] += pp.time_steps(graph, chunk, device) * len(chunk)
    out = {"k": k, "steps": steps, "eager_ms": 1e3 * times["eager"] / steps}
    if graph is not None:
        out.update(graph_ms=1e3 * times["graph"] / steps, captured=captured,
                   graph_over_eager=times["eager"] / times["graph"], max_rel_param_diff=max_rel_diff(graph, eager))
    return out


def bench_checkpoint(model, data_name, data, device, k, repeats) -> dict:
    """One k-member checkpoint against its floor, each timed ``repeats`` times, interleaved on the
    same networks (medians)."""
    pairs = pp.checkpoint_seconds(model, data_name, data, k, device, count=repeats, floor=True)
    ckpt, floor = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    return {"k": k, "checkpoint_s": ckpt, "floor_s": floor, "ratio": ckpt / floor}


def study_cost(results: dict, mode: str):
    """The cost function of :func:`paper_plan.project` from this benchmark's measured rates."""
    def cost(g: pp.Group) -> pp.Cost:
        r = results[g.model]
        one, many = (r["steps"][key].get(f"{mode}_ms", r["steps"][key]["eager_ms"]) / 1e3 for key in ("1", str(K)))
        step = one + (many - one) * (g.k - 1) / (K - 1)
        ck = r["checkpoint"]["checkpoint_s"] * g.k / K
        return pp.Cost(step, ck, g.k == K and g.batch == 20 and g.sample_sets == 1)

    return cost


def projections(results: dict, modes: list[str]) -> dict:
    out = {}
    plans = pp.plan(pp.all_experiments())
    fig1 = [p for p in plans if p.name == "fig1"]
    for mode in modes:
        cost = study_cost(results, mode)
        f1 = pp.project(pp.plan(["fig1"]), cost)[0]["seconds"] if "vgg10" in results else None
        study = pp.project(plans, cost) if set(MODELS) <= set(results) else None
        out[mode] = {"fig1_s": f1, "study_s": None if study is None else sum(r["seconds"] for r in study),
                     "experiments": study}
    steps, every = (fig1[0].steps, fig1[0].log_every) if fig1 else (500000, 200)
    out["steps"], out["log_every"] = steps, every
    return out


def print_steps(name: str, rows: dict) -> None:
    for key, r in rows.items():
        what = "one run (PlainStepper)" if key == "1" else f"K = {r['k']} (EnsembleStepper)"
        line = f"  step, {what:30s} eager {r['eager_ms']:7.2f} ms ({r['k'] * 1e3 / r['eager_ms']:8.0f} it/s)"
        if "graph_ms" in r:
            note = "" if r["captured"] else " [capture failed: eager]"
            line += (f" | graph {r['graph_ms']:7.2f} ms ({r['k'] * 1e3 / r['graph_ms']:8.0f} it/s) "
                     f"graph/eager {r['graph_over_eager']:.2f}x; params agree to {r['max_rel_param_diff']:.1e}{note}")
        else:
            line += " | graph n/a (no CUDA)"
        print(line, flush=True)


def print_projection(proj: dict) -> None:
    print(f"\nprojected at the paper's scale ({proj['steps']:,} iterations, a checkpoint every {proj['log_every']}):")
    for mode in ("eager", "graph"):
        if mode not in proj:
            print(f"  {mode:5s}: n/a (no CUDA)")
            continue
        p = proj[mode]
        f1 = "-" if p["fig1_s"] is None else pp.hms(p["fig1_s"])
        st = "-" if p["study_s"] is None else pp.hms(p["study_s"])
        parts = ", ".join(f"{r['experiment']} {pp.hms(r['seconds'])}" for r in p["experiments"] or [] if r["groups"])
        why = f"estimate: {parts}" if parts else "needs vgg10 and mlp4"
        print(f"  {mode:5s}: fig1 (15 vgg10 runs, one ensemble; measured rates) {f1}; whole study {st} ({why})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, one repeat, 3-member checkpoint")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per stepper (default 300 on CUDA, 30 on "
                    "a CPU; --quick 10)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaving rounds of eager and graph")
    ap.add_argument("--ckpt-k", type=int, default=None, help=f"members in the measured checkpoint (default {K}; "
                    "--quick 3)")
    ap.add_argument("--repeats", type=int, default=None, help="checkpoints measured (default 2; --quick 1)")
    ap.add_argument("--models", default="vgg10,mlp4")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-dir", default=os.environ.get("SHARPCOMP_DATA"), help="offline datasets")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (10 if args.quick else 300 if cuda else 30)
    ckpt_k, repeats = args.ckpt_k or (3 if args.quick else K), args.repeats or (1 if args.quick else 2)
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{steps} timed steps per stepper, batch 20", flush=True)
    results = {}
    for model in [m for m in args.models.split(",") if m]:
        data = pp.load(model, MODELS[model], device, args.data_dir)
        print(f"\n{model} on {data.name} ({len(data.train_x)} train, {len(data.test_x)} test images)", flush=True)
        rows = {str(k): bench_steps(model, MODELS[model], data, device, k, steps, args.rounds) for k in (1, K)}
        print_steps(model, rows)
        ck = bench_checkpoint(model, MODELS[model], data, device, ckpt_k, repeats)
        ck["checkpoint_s"] *= K / ckpt_k  # scaled to 15 members where fewer were measured (--quick)
        ck["floor_s"] *= K / ckpt_k
        scaled = "" if ckpt_k == K else f" (measured at {ckpt_k} members, scaled to {K}: estimate)"
        print(f"  checkpoint of {K} members: {ck['checkpoint_s']:.3f} s against its floor {ck['floor_s']:.3f} s "
              f"(stacked whole-set evaluation + stacked sample-set metrics): {ck['ratio']:.2f}x{scaled}", flush=True)
        results[model] = {"steps": rows, "checkpoint": ck}
    proj = projections(results, ["eager", "graph"] if cuda else ["eager"])
    print_projection(proj)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "device_name": name,
                                               "torch": torch.__version__, "results": results,
                                               "projection": proj}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
