"""The study at the paper's scale (``make paper``): its runs, and its projected wall time on this device.

Counts the runs of every experiment (``conf/experiment/*.yaml``: the product of its sweeper params) in
the order ``make paper`` trains them. A run an earlier experiment already trained (same folder: fig1's
lr-0.1 runs are fig2's batch-20 runs, figD5 is part of fig1, figD4 of figE8, ...) costs nothing the
second time. The new runs of an experiment are grouped as ``hydra/launcher=ensemble`` groups them
(same settings but lr and seed; at most 32 members, split into near-equal parts); a group costs

    steps x (its step time) + checkpoints x (its checkpoint time)

with both measured on this device: a few seconds of SGD steps of each (model, batch, group size)
needed, as the training engine takes them (eager on a CPU; CUDA graphs where ``cuda_graph=auto``
captures them), and one checkpoint of each (model, sample sets) at ``--ckpt-k`` members, scaled
linearly to each group's size (an estimate; whole-set evaluation and metrics grow with the members).

    python scripts/paper_plan.py [EXPERIMENT ...] [--device cuda] [--seconds 2] [--count-only]

``scripts/bench_gpu.py`` imports this file for its study projection.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parents[1]
# the order of `make paper` (and `make figures-quick`): each experiment's runs shared with an earlier
# one are already trained when it starts
ORDER = ("figE8", "figD4", "figE7", "figD6", "figD6_batch", "fig1", "fig2", "fig3", "figD5", "figD5_batch")
# per-member sweep parameters; every other parameter must be shared by an ensemble's members
PER_MEMBER = ("lr", "seed")
MAX_MEMBERS = 32
DATASETS = {"cifar10_2class": ("cifar10", [0, 1]), "fashion_mnist": ("fashion_mnist", None)}


def conf_dir() -> Path:
    """conf/ of this checkout, or the installed package's copy (a wheel, e.g. on a GPU machine)."""
    if (ROOT / "conf" / "train.yaml").is_file():
        return ROOT / "conf"
    from importlib import resources

    return Path(str(resources.files("sharpcomp.conf")))


# ---------------------------------------------------------------------------------------------
# counting


def split_values(text) -> list[str]:
    """A sweep parameter's values, as Hydra's basic sweeper splits ``a,b,c`` (commas inside [] or
    quotes do not split): ``"0.05,0.1"`` -> ["0.05", "0.1"]; ``"[train,test]"`` -> ["[train,test]"]."""
    text, out, depth, quote, cur = str(text), [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


@dataclass(frozen=True)
class Run:
    """One job of a sweep: its dataset, model and sweep parameters (the run's folder is a function of these)."""

    data: str
    model: str
    params: tuple[tuple[str, str], ...]

    def get(self, key: str, default=None):
        return dict(self.params).get(key, default)

    @property
    def batch(self) -> int:
        return int(self.get("batch", 20))

    @property
    def sample_sets(self) -> int:
        return len(split_values(self.get("metrics.sample_sets", "[train]").strip("'\"[]")))

    @property
    def group_key(self) -> tuple:
        return self.data, self.model, tuple(p for p in self.params if p[0] not in PER_MEMBER)


def experiment_runs(name: str, conf: Path | None = None) -> list[Run]:
    """The runs of ``+experiment=name``: the Cartesian product of its sweeper params."""
    doc = yaml.safe_load((conf or conf_dir()).joinpath("experiment", f"{name}.yaml").read_text())
    groups = {}
    for entry in doc.get("defaults", []):
        for key, value in (entry.items() if isinstance(entry, dict) else []):
            groups[key.split("/")[-1]] = value
    params = ((doc.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    keys = sorted(params)
    values = [split_values(params[k]) for k in keys]
    return [Run(groups.get("data", "cifar10_2class"), groups.get("model", "vgg10"), tuple(zip(keys, combo)))
            for combo in itertools.product(*values)]


def scale_steps(scale: str, data: str, conf: Path | None = None) -> tuple[int, int]:
    """(steps, log_every) of ``scale=...`` for a dataset (quick reads the dataset's own)."""
    conf = conf or conf_dir()
    sc = yaml.safe_load((conf / "scale" / f"{scale}.yaml").read_text())
    d = yaml.safe_load((conf / "data" / f"{data}.yaml").read_text())

    def value(v):
        return int(d[v[len("${data."):-1]]) if isinstance(v, str) and v.startswith("${data.") else int(v)

    return value(sc["steps"]), value(sc["log_every"])


def split_group(runs: list[Run], max_members: int = MAX_MEMBERS) -> list[list[Run]]:
    """Near-equal parts of at most ``max_members`` (as ``ensemble.group_compatible`` splits)."""
    parts = max(1, math.ceil(len(runs) / max_members))
    base, extra = divmod(len(runs), parts)
    out, pos = [], 0
    for p in range(parts):
        out.append(runs[pos:pos + base + (p < extra)])
        pos += len(out[-1])
    return out


@dataclass
class Group:
    model: str
    data: str
    batch: int
    sample_sets: int
    k: int


@dataclass
class ExperimentPlan:
    name: str
    runs: int
    new: int
    steps: int
    log_every: int
    groups: list[Group] = field(default_factory=list)

    @property
    def checkpoints(self) -> int:
        return len(set(range(0, self.steps, self.log_every)) | {self.steps})


def plan(names: Sequence[str], scale: str = "paper", conf: Path | None = None,
         max_members: int = MAX_MEMBERS) -> list[ExperimentPlan]:
    """Per experiment (in this order): its runs, those not trained by an earlier one, and their groups."""
    seen: set[Run] = set()
    out = []
    for name in names:
        runs = experiment_runs(name, conf)
        new = [r for r in dict.fromkeys(runs) if r not in seen]
        seen.update(new)
        by_key: dict[tuple, list[Run]] = {}
        for r in new:
            by_key.setdefault(r.group_key, []).append(r)
        steps, log_every = scale_steps(scale, runs[0].data, conf)
        ep = ExperimentPlan(name, len(runs), len(new), steps, log_every)
        for members in by_key.values():
            for part in split_group(members, max_members):
                r = part[0]
                ep.groups.append(Group(r.model, r.data, r.batch, r.sample_sets, len(part)))
        out.append(ep)
    return out


def all_experiments(conf: Path | None = None) -> list[str]:
    """The study's experiments found in ``conf/experiment`` (others there, such as eos, are not the study's)."""
    names = {p.stem for p in (conf or conf_dir()).joinpath("experiment").glob("*.yaml")}
    return [n for n in ORDER if n in names]


# ---------------------------------------------------------------------------------------------
# projecting


@dataclass
class Cost:
    """Seconds per step and per checkpoint of a group, and whether each was measured for exactly
    this group (else an estimate from measured neighbours)."""

    step_s: float
    checkpoint_s: float
    measured: bool


def project(plans: Sequence[ExperimentPlan], cost: Callable[[Group], Cost]) -> list[dict]:
    """Seconds of each experiment: sum over its groups of steps x step + checkpoints x checkpoint."""
    rows = []
    for ep in plans:
        secs, measured = 0.0, True
        for g in ep.groups:
            c = cost(g)
            secs += ep.steps * c.step_s + ep.checkpoints * c.checkpoint_s
            measured = measured and c.measured
        rows.append({"experiment": ep.name, "runs": ep.runs, "new_runs": ep.new,
                     "groups": [g.k for g in ep.groups], "seconds": secs, "measured": measured and bool(ep.groups)})
    return rows


def hms(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def print_table(rows: Sequence[dict], steps: int, log_every: int, device: str) -> float:
    total = sum(r["seconds"] for r in rows)
    print(f"\nprojected wall time at {steps:,} iterations, a checkpoint every {log_every}, on {device} "
          f"(estimate: groups sized or batched unlike a measured one)")
    print(f"{'experiment':12s} {'runs':>4s} {'new':>4s}  {'ensembles (members)':24s} {'time':>12s}")
    for r in rows:
        groups = ", ".join(map(str, r["groups"])) or "- (already trained)"
        kind = "" if not r["groups"] else ("measured rate" if r["measured"] else "estimate")
        print(f"{r['experiment']:12s} {r['runs']:4d} {r['new_runs']:4d}  {groups:24s} {hms(r['seconds']):>12s}  {kind}")
    print(f"{'whole study':12s} {sum(r['runs'] for r in rows):4d} {sum(r['new_runs'] for r in rows):4d}  "
          f"{'':24s} {hms(total):>12s}")
    return total


# ---------------------------------------------------------------------------------------------
# measuring (the training engine's own steppers and checkpoint)


def compose(model: str, data: str, **overrides) -> dict:
    """The composed ``train`` config of a model and dataset, with plain key=value overrides (lr, seed,
    batch, steps, ...). Hydra composes it where installed; otherwise the YAML files of conf/ are
    merged as Hydra would (train.yaml, then the data, model, optim, schedule and quick-scale groups)."""
    try:
        from sharpcomp.settings import defaults

        cfg = defaults(model=model, data=data)
    except ImportError:
        cfg = compose_yaml(model, data)
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def compose_yaml(model: str, data: str, conf: Path | None = None) -> dict:
    """Hydra-free composition of conf/train.yaml (no experiment, scale=quick, optim=sgd, schedule=constant)."""
    from omegaconf import OmegaConf

    conf = conf or conf_dir()
    base = OmegaConf.load(conf / "train.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    for group, name in (("data", data), ("model", model), ("optim", "sgd"), ("schedule", "constant"),
                        ("logger", "none")):
        base[group] = OmegaConf.load(conf / group / f"{name}.yaml")
    base = OmegaConf.merge(base, OmegaConf.load(conf / "scale" / "quick.yaml"))
    return OmegaConf.to_container(base, resolve=True)


def load(model: str, data: str, device, data_dir=None):
    from sharpcomp.data.datasets import load_dataset

    dataset, classes = DATASETS[data]
    return load_dataset(data, dataset, classes, data_dir, device=device)


def make_stepper(model: str, data_name: str, data, k: int, batch: int, device, cuda_graph: str = "auto",
                 sample_sets=("train",)):
    """A stepper of k runs (lr 0.05 / 0.1 / 0.2 x seeds 0.., as fig1) and their settings: a
    ``PlainStepper`` for k = 1, else an ``EnsembleStepper``."""
    from sharpcomp.engine.ensemble import EnsembleStepper
    from sharpcomp.engine.setup import build, prepare_runtime
    from sharpcomp.engine.steppers import PlainStepper
    from sharpcomp.settings import settings

    cfgs = [compose(model, data_name, lr=(0.05, 0.1, 0.2)[j % 3], seed=j // 3, batch=batch, device=str(device),
                    cuda_graph=cuda_graph, progress=False, **{"metrics.sample_sets": list(sample_sets)})
            for j in range(k)]
    ss = [settings(c) for c in cfgs]
    prepare_runtime(ss[0], data)  # determinism and training precision, as a run sets them
    if k == 1:
        return PlainStepper(build(ss[0], data, device), ss[0], data, ss[0].num_outputs(data.num_classes)), cfgs
    members = [SimpleNamespace(settings=s, run=SimpleNamespace(resume=None)) for s in ss]
    return EnsembleStepper(members, data), cfgs


def batches(data, seeds: Sequence[int], batch: int, count: int, device):
    """``count`` (k, batch) index tensors: the runs' first minibatches, as the loop takes them."""
    import torch

    from sharpcomp.data.order import epoch_permutation, steps_per_epoch

    n = len(data.train_x)
    spe = steps_per_epoch(n, batch)
    out, perms, epoch = [], None, -1
    for it in range(count):
        e, kb = divmod(it, spe)
        if e != epoch:
            epoch, perms = e, torch.stack([epoch_permutation(s, e, n) for s in seeds]).to(device)
        out.append(perms[:, kb * batch:(kb + 1) * batch])
    return out


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(stepper, idx: Sequence, device) -> float:
    """Seconds per step over ``idx`` (the device synchronised before and after)."""
    import torch

    running = torch.zeros(stepper.k, device=device)
    sync(device)
    t0 = time.perf_counter()
    for i in idx:
        running += stepper.step(i)
    sync(device)
    return (time.perf_counter() - t0) / len(idx)


def step_seconds(model, data_name, data, k, batch, device, seconds: float) -> float:
    """Seconds per step of k runs, measured for about ``seconds`` (at least 3 steps), after 3 warm-up
    steps (where the step is captured as a CUDA graph) and 3 probe steps."""
    stepper, _ = make_stepper(model, data_name, data, k, batch, device)
    seeds = [j // 3 for j in range(k)]
    time_steps(stepper, batches(data, seeds, batch, 3, device), device)
    probe = time_steps(stepper, batches(data, seeds, batch, 3, device), device)
    count = max(3, min(5000, int(seconds / max(probe, 1e-6))))
    return time_steps(stepper, batches(data, seeds, batch, count, device), device)


def floor_seconds(loop, device) -> float:
    """The floor of one checkpoint of ``loop``'s runs: the stepper's whole-set evaluation of the train and
    test sets plus its sample-set metrics (no records, no rows), on the same networks."""
    from sharpcomp.engine.evaluation import sample_sets

    d, st = loop.data, loop.stepper
    sync(device)
    t0 = time.perf_counter()
    st.evaluate(d.train_x, d.train_y)
    st.evaluate(d.test_x, d.test_y)
    st.sample_metrics(st.models(), [sample_sets(m.settings, d, m.sample_idx, None) for m in loop.members])
    sync(device)
    st.train()
    return time.perf_counter() - t0


def checkpoint_seconds(model, data_name, data, k, device, sample_sets=("train",), log_every=200,
                       count: int = 2, floor: bool = False) -> list:
    """Seconds of ``count`` checkpoints (after the one at iteration 0) of k runs, each after one step:
    ``train._Loop.checkpoint`` on runs opened in a temporary folder (evaluation, metrics, records,
    checkpoint.pt), as a paper-scale run takes them. ``floor``: (checkpoint, floor) pairs instead, the
    floor (:func:`floor_seconds`) timed right after each checkpoint on the same networks."""
    from sharpcomp.engine.opening import close_all, open_runs
    from sharpcomp.engine.train import _Loop

    stepper, cfgs = make_stepper(model, data_name, data, k, 20, device, sample_sets=sample_sets)
    for c in cfgs:
        c.update(steps=log_every * (count + 2), log_every=log_every)
    with tempfile.TemporaryDirectory() as tmp:
        members, data = open_runs(cfgs, [Path(tmp) / f"run{j}" for j in range(k)], data)
        try:
            loop = _Loop(members, stepper, data, None)
            idx = batches(data, [m.seed for m in members], 20, count + 1, device)
            out = []
            for c in range(count + 1):
                with contextlib.redirect_stdout(io.StringIO()):
                    sync(device)
                    t0 = time.perf_counter()
                    loop.checkpoint(c * log_every)
                    sync(device)
                    ck = time.perf_counter() - t0
                out.append((ck, floor_seconds(loop, device)) if floor else ck)
                loop.running_sum += stepper.step(idx[c])
                loop.running_count += 1
        finally:
            close_all(members)
    return out[1:]


def measured_cost(plans: Sequence[ExperimentPlan], device, seconds: float, ckpt_k: int, data_dir=None,
                  log=print) -> Callable[[Group], Cost]:
    """Measure every (model, batch, k) step and one checkpoint per (model, sample sets) at ``ckpt_k``
    members; the cost function of :func:`project`."""
    groups = [g for ep in plans for g in ep.groups]
    steps, ckpts, datasets = {}, {}, {}
    for g in groups:
        if g.model not in datasets:
            datasets[g.model] = load(g.model, g.data, device, data_dir)
        data = datasets[g.model]
        if (g.model, g.batch, g.k) not in steps:
            steps[g.model, g.batch, g.k] = s = step_seconds(g.model, g.data, data, g.k, g.batch, device, seconds)
            log(f"  step   {g.model:6s} batch {g.batch:2d}, {g.k:2d} runs: {1e3 * s:8.2f} ms ({g.k / s:,.0f} run-it/s)")
        if (g.model, g.sample_sets) not in ckpts:
            sets = ("train", "test", "misclassified")[:g.sample_sets]
            ckpts[g.model, g.sample_sets] = c = statistics.median(
                checkpoint_seconds(g.model, g.data, data, ckpt_k, device, sets, count=1))
            log(f"  checkpoint {g.model:6s} {ckpt_k} runs, sample sets {','.join(sets)}: {c:.2f} s")

    def cost(g: Group) -> Cost:
        return Cost(steps[g.model, g.batch, g.k], ckpts[g.model, g.sample_sets] * g.k / ckpt_k, g.k == ckpt_k)

    return cost


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="*", help="in training order (default: every experiment, make's order)")
    ap.add_argument("--scale", default="paper")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--seconds", type=float, default=1.0, help="measured seconds per step rate")
    ap.add_argument("--ckpt-k", type=int, default=None, help="members in the measured checkpoint (default: "
                    "15 on CUDA, 1 on a CPU)")
    ap.add_argument("--data-dir", default=None, help="offline datasets (default: $SHARPCOMP_DATA)")
    ap.add_argument("--count-only", action="store_true", help="only count the runs; measure nothing")
    args = ap.parse_args(argv)
    names = args.experiments or all_experiments()
    plans = plan(names, args.scale)
    print(f"study at scale={args.scale}: {sum(p.new for p in plans)} runs in {len(plans)} experiments "
          f"({sum(p.runs for p in plans)} counting the runs experiments share)")
    if args.count_only:
        for p in plans:
            print(f"  {p.name:12s} {p.runs:3d} runs, {p.new:3d} new; ensembles of {[g.k for g in p.groups]}")
        return 0
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt_k = args.ckpt_k or (15 if device.type == "cuda" else 1)
    print(f"measuring on {device} (a few seconds per model; --count-only skips this):", flush=True)
    cost = measured_cost(plans, device, args.seconds, ckpt_k, args.data_dir)
    print_table(project(plans, cost), plans[0].steps, plans[0].log_every, str(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
