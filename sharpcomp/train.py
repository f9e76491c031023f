"""The training loop: plain SGD on the study's protocol, with metric checkpoints (SPEC, "Data and training").

One run = one output folder holding
- ``metrics.parquet``: one row per (checkpoint, sample set), appended atomically (``records``);
- ``checkpoint.pt``: model and optimizer state at the last logged checkpoint (atomic, written after
  that checkpoint's rows), from which the same command resumes.

Checkpoints are at iteration 0, every ``log_every`` iterations, and at ``steps``. Data order and the
train sample set are functions of the seed alone (``data.batch_indices``), so a resumed run sees
exactly the batches an uninterrupted one would: no random state needs saving.

A non-finite training loss at a checkpoint marks the run ``diverged`` (its last row holds NaN) and
stops it; any other exception marks it ``failed``; Ctrl-C leaves it ``running``, resumable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .data import (
    DataError,
    Dataset,
    check_data_config,
    epoch_permutation,
    load_from_config,
    steps_per_epoch,
    train_sample_indices,
)
from .models import ModelError, build_from_config, check_model_config, samples_per_chunk
from .records import RunRecorder, atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
LOSSES = ("mse", "ce")
OPTIMS = ("sgd", "sam")


def eval_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout on a CPU (oneDNN's faster convolution and pooling there; same values)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and x.device.type == "cpu" else x


class ConfigError(ValueError):
    """Invalid settings; the message is one line meant for the user."""


class Diverged(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# settings


def _plain(cfg) -> dict:
    """A plain dict from a DictConfig or mapping (interpolations resolved)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return json.loads(json.dumps(cfg, default=str))


def validate_config(cfg: Mapping, n_train: int | None = None) -> None:
    """Raise ConfigError with one clear line for settings no run can use."""

    def number(key, value, kind=float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        return value

    lr = number("lr", cfg["lr"])
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be > 0, got lr={lr}")
    batch = number("batch", cfg["batch"], int)
    if batch <= 0:
        raise ConfigError(f"batch size must be > 0, got batch={batch}")
    if n_train is not None and batch > n_train:
        raise ConfigError(f"batch size {batch} is larger than the training set ({n_train} samples)")
    if number("steps", cfg["steps"], int) <= 0:
        raise ConfigError(f"steps must be > 0, got steps={cfg['steps']}")
    if number("log_every", cfg["log_every"], int) <= 0:
        raise ConfigError(f"log_every must be > 0, got log_every={cfg['log_every']}")
    if number("eval_every", cfg.get("eval_every", 1), int) <= 0:
        raise ConfigError(f"eval_every must be > 0, got eval_every={cfg.get('eval_every')}")
    number("seed", cfg["seed"], int)
    if cfg["loss"] not in LOSSES:
        raise ConfigError(f"unknown loss '{cfg['loss']}' (choose from {', '.join(LOSSES)})")
    try:  # the model's callable importable, the data config usable (models.py, data.py)
        check_model_config(cfg["model"])
        check_data_config(cfg["data"], cfg.get("data_dir"))
    except (ModelError, DataError) as exc:
        raise ConfigError(str(exc)) from None
    if cfg.get("optim", {}).get("name", "sgd") not in OPTIMS:
        raise ConfigError(f"unknown optimizer '{cfg['optim']['name']}' (choose from {', '.join(OPTIMS)})")
    m = cfg.get("metrics", {})
    if number("metrics.n", m.get("n", 100), int) <= 0:
        raise ConfigError(f"metrics.n must be > 0, got {m.get('n')}")
    if not m.get("sample_sets", ["train"]):
        raise ConfigError("metrics.sample_sets must name at least one of train, test, misclassified")
    bad = [s for s in m.get("sample_sets", ["train"]) if s not in ("train", "test", "misclassified")]
    if bad:
        raise ConfigError(f"unknown sample set {bad[0]!r} (choose from train, test, misclassified)")
    if number("metrics.flatness_every", m.get("flatness_every", 1), int) <= 0:
        raise ConfigError(f"metrics.flatness_every must be > 0, got {m.get('flatness_every')}")
    if m.get("dtype", "float32") not in ("float32", "float64"):
        raise ConfigError(f"metrics.dtype must be float32 or float64, got {m.get('dtype')!r}")
    device = str(cfg.get("device", "auto"))
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise ConfigError(f"unknown device '{device}' (auto, cpu, cuda, cuda:N)") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' requested but CUDA is not available here")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_identity(cfg: Mapping) -> dict:
    """The settings that define a run's trajectory (``steps`` excluded: a longer rerun extends it)."""
    keys = {
        "data": cfg["data"], "model": cfg["model"], "lr": cfg["lr"], "batch": cfg["batch"], "seed": cfg["seed"],
        "loss": cfg["loss"], "optim": cfg.get("optim", {"name": "sgd"}), "log_every": cfg["log_every"],
        "eval_every": cfg.get("eval_every", 1),
        "metrics": {k: v for k, v in cfg.get("metrics", {}).items() if k != "chunk_size"},
    }
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:8]
    run_id = f"{cfg['data']['name']}-{cfg['model']['name']}-lr{cfg['lr']}-b{cfg['batch']}-s{cfg['seed']}-{digest}"
    return {"run_id": run_id, "settings": keys}


def package_versions() -> str:
    import numpy

    vers = {"sharpcomp": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}
    try:
        import torchvision

        vers["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return json.dumps(vers, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# loss and evaluation


def make_loss(name: str, num_outputs: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean loss over a batch: MSE against one-hot targets averaged over batch and outputs (the
    reference code's ``MSELoss()``), or cross-entropy."""
    if name == "ce":
        return lambda out, y: F.cross_entropy(out, y)

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, F.one_hot(y, num_outputs).to(out.dtype))

    return mse


def per_sample_loss(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "ce":
        return F.cross_entropy(out, y, reduction="none")
    return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype), reduction="none").mean(dim=1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, per-sample correctness) over a whole set, in chunks."""
    losses, correct = [], []
    chunk = samples_per_chunk(model, x[:1])
    for i in range(0, len(x), chunk):
        out = model(eval_layout(x[i:i + chunk]))
        losses.append(per_sample_loss(loss, out, y[i:i + chunk]))
        correct.append(out.argmax(dim=1) == y[i:i + chunk])
    losses, correct = torch.cat(losses), torch.cat(correct)
    return float(losses.mean()), float(correct.float().mean()), correct


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class RunResult:
    run_dir: Path
    status: str
    iteration: int
    rows: int
    seconds: float = 0.0  # wall time of this call
    checkpoint_seconds: float = 0.0  # of which in checkpoints (evaluation, metrics, writing)
    checkpoints: int = 0  # checkpoints logged by this call


def _make_optimizer(cfg: Mapping, model: nn.Module) -> torch.optim.Optimizer:
    optim = cfg.get("optim", {"name": "sgd"})
    if optim.get("name", "sgd") == "sam":
        from .optim import SAM

        return SAM(model.parameters(), lr=cfg["lr"], rho=optim.get("rho", 0.05), adaptive=optim.get("adaptive", False))
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.0, weight_decay=0.0)


def _save_checkpoint(run_dir: Path, state: dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(run_dir / CHECKPOINT_FILE, buf.getvalue())


def _num_outputs(cfg: Mapping, data: Dataset) -> int:
    outputs = cfg["model"].get("outputs", 10)
    return data.num_classes if outputs == "classes" else int(outputs)


def _load_data(cfg: Mapping, device: torch.device) -> Dataset:
    return load_from_config(cfg["data"], cfg.get("data_dir"), cfg.get("cache_dir"), device=device)


def _build(cfg: Mapping, data: Dataset, device: torch.device) -> nn.Module:
    try:
        return build_from_config(cfg["model"], _num_outputs(cfg, data), data.input_shape, seed=int(cfg["seed"]),
                                 device=device, num_classes=data.num_classes)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def prepare_runtime(cfg: Mapping, data: Dataset | None) -> tuple[torch.device, Dataset]:
    """Device, threads and determinism as the config says; the dataset loaded onto (or moved to) the device."""
    device = select_device(str(cfg.get("device", "auto")))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if cfg.get("deterministic", True):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if data is None:
        return device, _load_data(cfg, device)
    moved = (t.to(device) for t in (data.train_x, data.train_y, data.test_x, data.test_y))
    return device, Dataset(data.name, *moved, data.num_classes, data.source)


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and prove it writable, or raise ConfigError with one line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to output folder {run_dir}: {exc.strerror or exc}") from None


def record_identity(cfg: Mapping, run_id: str, data: Dataset, device: torch.device) -> dict:
    """The identity columns of a run's parquet rows (``records.IDENTITY_COLUMNS`` less ``status``)."""
    return {
        "run_id": run_id, "data": cfg["data"]["name"], "model": cfg["model"]["name"], "lr": float(cfg["lr"]),
        "batch": int(cfg["batch"]), "seed": int(cfg["seed"]), "loss": cfg["loss"],
        "width": float(cfg["model"].get("width", 1.0)), "outputs": _num_outputs(cfg, data),
        "optim": cfg.get("optim", {}).get("name", "sgd"), "scale": cfg.get("scale_name", "custom"),
        "data_source": data.source, "device": str(device), "versions": package_versions(),
        # every setting that defines the trajectory (any swept key), as JSON: figures group by any of them
        "settings": json.dumps(run_identity(cfg)["settings"], sort_keys=True, default=str),
    }


def load_checkpoint(run_dir: Path, run_id: str, device: torch.device) -> dict | None:
    """The run's saved state, None when there is none; ConfigError when the folder holds another run."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location=device, weights_only=False)
    if state.get("run_id") != run_id:
        raise ConfigError(f"output folder {run_dir} holds another run ({state.get('run_id')}); "
                          f"choose another folder (hydra.run.dir=...)")
    return state


def restore_run(run_dir: str | Path):
    """Load a run's last checkpoint: (model in eval mode, config dict, train sample inputs and
    targets, loss function). For analyses of finished or running runs (e.g. ``sharpcomp reparam``)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = state["config"]
    data = _load_data(cfg, torch.device("cpu"))
    model = _build(cfg, data, torch.device("cpu"))
    model.load_state_dict(state["model_state"])
    model.eval()
    idx = train_sample_indices(int(cfg["seed"]), len(data.train_x), int(cfg["metrics"]["n"]))
    return model, cfg, data.train_x[idx], data.train_y[idx], make_loss(cfg["loss"], _num_outputs(cfg, data))


def train(cfg, run_dir: str | Path, *, callback: Callable[[int, list[dict]], None] | None = None,
          data: Dataset | None = None) -> RunResult:
    """Train one run into ``run_dir``, resuming from its checkpoint when there is one.

    ``cfg``: the resolved ``train`` config (DictConfig or mapping). ``callback(iteration, rows)``
    is called after each checkpoint is safely written. ``data`` may be passed to skip loading.
    """
    cfg = _plain(cfg)
    validate_config(cfg)
    run_dir = Path(run_dir)
    check_writable(run_dir)

    t_call = time.perf_counter()
    device, data = prepare_runtime(cfg, data)
    n_train = len(data.train_x)
    validate_config(cfg, n_train=n_train)

    ident = run_identity(cfg)
    num_outputs = _num_outputs(cfg, data)
    identity = record_identity(cfg, ident["run_id"], data, device)

    model = _build(cfg, data, device)
    optimizer = _make_optimizer(cfg, model)
    loss_name = cfg["loss"]
    loss_fn = make_loss(loss_name, num_outputs)
    recorder = RunRecorder(run_dir, identity)

    start, wall_offset, prev_ckpt = 0, 0.0, None
    state = load_checkpoint(run_dir, ident["run_id"], device)
    if state is not None:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        start, wall_offset, prev_ckpt = int(state["iteration"]), float(state["wall_time"]), int(state["iteration"])
        if state.get("status") == "diverged":
            recorder.set_status("diverged")
            return RunResult(run_dir, "diverged", start, len(recorder.frame))
        recorder.truncate_after(start)
    else:
        recorder.truncate_after(None)  # rows without a saved model state cannot be resumed

    steps, log_every = int(cfg["steps"]), int(cfg["log_every"])
    eval_every = int(cfg.get("eval_every", 1))
    mcfg = cfg.get("metrics", {})
    sample_idx = train_sample_indices(int(cfg["seed"]), n_train, int(mcfg.get("n", 100))).to(device)
    checkpoints = sorted(set(range(0, steps, log_every)) | {steps})
    if prev_ckpt is not None and prev_ckpt >= steps:
        recorder.set_status("finished")
        return RunResult(run_dir, "finished", prev_ckpt, len(recorder.frame))

    spe = steps_per_epoch(n_train, int(cfg["batch"]))
    batch = int(cfg["batch"])
    is_sam = cfg.get("optim", {}).get("name", "sgd") == "sam"
    running_sum = torch.zeros((), device=device)
    running_count = 0
    t0 = time.perf_counter() - wall_offset
    checkpoint_seconds, n_checkpoints, c_start = 0.0, 0, 0.0

    def checkpoint(it: int) -> list[dict]:
        nonlocal running_sum, running_count
        run_loss = float(running_sum) / running_count if running_count else math.nan
        running_sum, running_count = torch.zeros((), device=device), 0
        if it > 0 and not math.isfinite(run_loss):
            raise Diverged(it)
        k = checkpoints.index(it)
        row = {"iteration": it, "epoch": it / spe, "train_loss_running": run_loss}
        model.eval()
        test_correct = None
        if k % eval_every == 0 or it == steps:
            row["train_loss"], row["train_acc"], _ = evaluate(model, data.train_x, data.train_y, loss_name)
            row["test_loss"], row["test_acc"], test_correct = evaluate(model, data.test_x, data.test_y, loss_name)
            if not math.isfinite(row["train_loss"]):
                raise Diverged(it)
        rows = checkpoint_rows(model, cfg, data, sample_idx, loss_name, loss_fn, row, test_correct, it,
                               with_flatness=k % int(mcfg.get("flatness_every", 1)) == 0 or it == steps)
        model.train()
        for r in rows:
            r["wall_time"] = time.perf_counter() - t0
        return rows

    def commit(it: int, rows: list[dict], status: str = "running") -> None:
        nonlocal checkpoint_seconds, n_checkpoints
        recorder.append(rows, status=status)
        _save_checkpoint(run_dir, {
            "run_id": ident["run_id"], "iteration": it, "wall_time": time.perf_counter() - t0, "status": status,
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "config": cfg,
        })
        checkpoint_seconds += time.perf_counter() - c_start
        n_checkpoints += 1
        if callback is not None:
            callback(it, rows)

    show = bool(cfg.get("progress", True))
    bar = tqdm(total=steps, initial=start, desc=ident["run_id"][:40], unit="it", disable=None if show else True,
               dynamic_ncols=True, mininterval=0.5, smoothing=0.05)
    status = "running"
    it = start
    try:
        if prev_ckpt is None:
            c_start = time.perf_counter()
            rows = checkpoint(0)
            commit(0, rows)
            _summary(bar, rows, steps)
        model.train()
        next_ckpts = iter([c for c in checkpoints if c > start])
        next_ckpt = next(next_ckpts)
        epoch, perm = -1, None
        while it < steps:
            e, kb = divmod(it, spe)
            if e != epoch:
                epoch, perm = e, epoch_permutation(int(cfg["seed"]), e, n_train).to(device)
            idx = perm[kb * batch:(kb + 1) * batch]
            xb, yb = data.train_x[idx], data.train_y[idx]
            if is_sam:
                def closure(xb=xb, yb=yb):
                    optimizer.zero_grad(set_to_none=True)
                    out = loss_fn(model(xb), yb)
                    out.backward()
                    return out

                loss = optimizer.step(closure)
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
            running_sum += loss.detach()
            running_count += 1
            it += 1
            bar.update(1)
            if it == next_ckpt:
                c_start = time.perf_counter()
                rows = checkpoint(it)
                commit(it, rows, "finished" if it == steps else "running")
                _summary(bar, rows, steps)
                next_ckpt = next(next_ckpts, None)
        status = "finished"
    except Diverged:
        status = "diverged"
        recorder.append([{"iteration": it, "epoch": it / spe, "train_loss_running": math.nan,
                          "train_loss": math.nan, "sample_set": "train",
                          "wall_time": time.perf_counter() - t0}], status="diverged")
        _save_checkpoint(run_dir, {"run_id": ident["run_id"], "iteration": it, "status": "diverged",
                                   "wall_time": time.perf_counter() - t0, "config": cfg,
                                   "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict()})
        bar.write(f"{ident['run_id']}: diverged (non-finite loss) at iteration {it}; recorded as diverged")
        sys.stdout.flush()  # summaries reach logs (SLURM, pipes) as they happen
    except KeyboardInterrupt:
        bar.close()
        raise
    except BaseException:
        recorder.set_status("failed")
        bar.close()
        raise
    finally:
        bar.close()
    return RunResult(run_dir, status, it, 0 if recorder.frame is None else len(recorder.frame),
                     time.perf_counter() - t_call, checkpoint_seconds, n_checkpoints)


def _summary(bar, rows: list[dict], steps: int) -> None:
    r = rows[0]

    def fmt(key, spec=".4g"):
        v = r.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    sharp = r.get("sharpness")
    ssq = "-" if sharp is None or not math.isfinite(sharp) else format(math.sqrt(max(sharp, 0.0)), ".4g")
    bar.set_postfix_str(f"loss={fmt('train_loss_running')} acc={fmt('train_acc', '.3f')}", refresh=False)
    bar.write(f"[{r['iteration']:>7d}/{steps}] loss(run)={fmt('train_loss_running')} "
              f"train_acc={fmt('train_acc', '.4f')} "
              f"test_acc={fmt('test_acc', '.4f')} sqrtS={ssq} G={fmt('G')} logvol={fmt('log_volume')} "
              f"local_dim={fmt('local_dim')} t={r['wall_time']:.1f}s")
    sys.stdout.flush()  # summaries reach logs (SLURM, pipes) as they happen


def metric_options(cfg: Mapping) -> dict:
    """``compute_metrics`` keyword arguments from the ``metrics`` config."""
    mcfg = cfg.get("metrics", {})
    return {"layer": mcfg.get("layer"), "log_volume_rank": mcfg.get("log_volume_rank"),
            "chunk_size": mcfg.get("chunk_size"),
            "dtype": torch.float64 if mcfg.get("dtype", "float32") == "float64" else torch.float32}


def sample_set(name: str, data: Dataset, sample_idx: torch.Tensor, n: int,
               test_correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of one sample set: ``train`` (the run's fixed training samples), ``test``
    (the first n test samples) or ``misclassified`` (the first n misclassified test samples)."""
    if name == "train":
        return data.train_x[sample_idx], data.train_y[sample_idx]
    if name == "test":
        return data.test_x[:n], data.test_y[:n]
    wrong = torch.nonzero(~test_correct).flatten()[:n]
    return data.test_x[wrong], data.test_y[wrong]


def checkpoint_rows(model: nn.Module, cfg: Mapping, data: Dataset, sample_idx: torch.Tensor, loss_name: str,
                    loss_fn: Callable, base: dict, test_correct: torch.Tensor | None, iteration: int,
                    with_flatness: bool = True, metrics: Mapping[str, dict] | None = None) -> list[dict]:
    """The rows of one checkpoint: ``base`` (whole-set columns) joined with the metrics of each
    sample set (and the optional flatness measures on the train row). The model is in eval mode.
    ``metrics``: ``compute_metrics`` results already computed, by sample set (an ensemble's)."""
    from .metrics import compute_metrics

    mcfg = cfg.get("metrics", {})
    n = int(mcfg.get("n", 100))
    rows = []
    for name in mcfg.get("sample_sets", ["train"]):
        if name == "misclassified" and test_correct is None:
            _, _, test_correct = evaluate(model, data.test_x, data.test_y, loss_name)
        x, y = sample_set(name, data, sample_idx, n, test_correct)
        row = {**base, "sample_set": name, "n_samples": len(x)}
        if len(x):
            with torch.no_grad():
                row["sample_loss"] = float(per_sample_loss(loss_name, model(x), y).mean())
            res = metrics[name] if metrics is not None else compute_metrics(model, x, **metric_options(cfg))
            row.update({k: v for k, v in res.items() if k != "per_sample"})
        if name == "train" and with_flatness and any(v is not None for v in (mcfg.get("flatness") or {}).values()):
            from .flatness import extra_metrics

            g = torch.Generator().manual_seed(int(cfg["seed"]) * 1_000_003 + iteration)
            row.update(extra_metrics(model, loss_fn, data.train_x, data.train_y, mcfg["flatness"], g))
        rows.append(row)
    return rows
