"""A Lightning callback built on :class:`~sharpcomp.tracking.tracker.Tracker` (the optional ``lightning`` extra).

::

    from sharpcomp.tracking.lightning import SharpcompCallback
    trainer = lightning.Trainer(max_steps=5000, callbacks=[
        SharpcompCallback("runs/mine", F.cross_entropy, every=100, measures={"hessian_max": {}})])
    trainer.fit(module, train_loader, ckpt_path="last")   # a rerun resumes the Trainer and the records

* **When**: after each optimizer step (``on_train_batch_end``, once per ``trainer.global_step``, so gradient
  accumulation counts one step), the tracker's checkpoints at 0, every ``every`` steps and at the last step
  (``max_steps``, else the Trainer's estimate of its steps).
* **On what**: the LightningModule itself (its ``forward``), or the submodule ``model`` names; on a fixed
  sample set, ``train_samples`` when given, else the first ``samples`` points of the train dataloader
  (taken once, the global random streams put back, so the training sees the same batches; the set is kept
  in the Trainer's checkpoints, so a resumed fit measures the same points). ``test_samples``: for the
  test columns and sample sets.
* **Where**: the run folder (as ``sharpcomp train`` writes it), and the train row's numbers on each of the
  Trainer's own loggers (``sharpcomp/<column>``, at the Trainer's step).
* **Resume**: a fit resumed from a Trainer checkpoint follows it (``at_iteration``: the Trainer's step):
  records past that step are dropped and computed again. Lightning saves its checkpoint after this
  callback's step (checkpoint callbacks run last), so every row up to the Trainer's checkpoint is kept.

Only the global rank zero records (one writer per folder). Every other setting is the tracker's
(``tracker_options``: ``measures``, ``metrics``, ``eval_every``, ``seed``, ``data``, ``model_name``,
``fatal``, ``progress``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

try:
    from lightning.pytorch import Callback
except ImportError as exc:  # the optional extra
    raise ImportError("sharpcomp.tracking.lightning needs Lightning: pip install 'sharpcomp[lightning]'") from exc

from sharpcomp.settings import ConfigError
from sharpcomp.tracking.tracker import Tracker
from sharpcomp.tracking.untouched import random_streams, set_random_streams


class SharpcompCallback(Callback):
    """sharpcomp's measures and records in a Lightning fit (module docstring)."""

    def __init__(self, folder: str | Path, loss_fn: str | Callable, *, every: int, train_samples=None,
                 test_samples=None, samples: int = 1000, model: str | None = None, steps: int | None = None,
                 **tracker_options):
        self.folder, self.loss_fn, self.every = Path(folder), loss_fn, every
        self.train_samples, self.test_samples, self.samples = train_samples, test_samples, int(samples)
        self.model, self.steps, self.options = model, steps, tracker_options
        self.tracker: Tracker | None = None
        self._step, self._loss_sum, self._losses = None, 0.0, 0

    # ---- Lightning's hooks -----------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self.train_samples is None:
            self.train_samples = first_samples(trainer.train_dataloader, self.samples)
        module = pl_module if self.model is None else pl_module.get_submodule(self.model)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        options = {"lr": _lr(optimizer), "batch_size": _batch_size(trainer), "steps_per_epoch": _batches(trainer),
                   **self.options}
        self.tracker = Tracker(self.folder, module, self.loss_fn, train_samples=self.train_samples,
                               test_samples=self.test_samples, steps=self.steps or _steps(trainer), every=self.every,
                               at_iteration=int(trainer.global_step), rate_from=optimizer, **options)
        self._step = int(trainer.global_step)
        for report in self.tracker.reports:  # the checkpoint recorded on opening (iteration 0, or a rewind's)
            _log(trainer, report)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.tracker is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            self._loss_sum, self._losses = self._loss_sum + loss.detach().double(), self._losses + 1
        step = int(trainer.global_step)
        if step == self._step:
            return  # gradient accumulation: the optimizer has not stepped yet
        mean = self._loss_sum / self._losses if self._losses else None
        self._loss_sum, self._losses = 0.0, 0
        for it in range(self._step + 1, step + 1):  # one optimizer step per batch unless something skipped one
            report = self.tracker.step(it, loss=mean if it == step else None)
            if report is not None:
                _log(trainer, report)
        self._step = step

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.tracker is not None and not isinstance(exception, KeyboardInterrupt):
            self.tracker.run.fail()
        self._close()

    def _close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    # ---- the Trainer's checkpoints ---------------------------------------------------------------

    def state_dict(self) -> dict:
        """The measured sample set, so that a resumed fit measures the same points."""
        if self.train_samples is None:
            return {}
        return {"train_samples": [t.detach().cpu() for t in self.train_samples]}

    def load_state_dict(self, state_dict: dict) -> None:
        if "train_samples" in state_dict:
            self.train_samples = tuple(state_dict["train_samples"])


def _log(trainer, report) -> None:
    """The checkpoint's numbers on each of the Trainer's loggers, as ``sharpcomp/<column>``."""
    for logger in trainer.loggers:
        logger.log_metrics({f"sharpcomp/{k}": v for k, v in report.scalars().items()}, step=report.iteration)


def first_samples(loader, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (inputs, labels) of a dataloader's batches; the global random streams are put back,
    so the training draws what it would have drawn. ConfigError (one line) for batches of another form."""
    if loader is None:
        raise ConfigError("the Trainer has no train dataloader to take the measured samples from; give train_samples")
    streams = random_streams()
    xs, ys, have = [], [], 0
    try:
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not all(torch.is_tensor(t) for t in batch[:2]):
                raise ConfigError("the train dataloader's batches are not (inputs, labels, ...) tensors; give "
                                  "train_samples=(inputs, labels)")
            xs.append(batch[0][: n - have])
            ys.append(batch[1][: n - have])
            have += len(xs[-1])
            if have >= n:
                break
    finally:
        set_random_streams(streams)
    if not xs:
        raise ConfigError("the train dataloader gave no batches to take the measured samples from")
    return torch.cat(xs), torch.cat(ys)


def _steps(trainer) -> int:
    return int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else \
        int(trainer.estimated_stepping_batches)


def _batch_size(trainer) -> int:
    loader = trainer.train_dataloader
    size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return int(size) if size else 1


def _batches(trainer) -> int | None:
    n = trainer.num_training_batches
    return int(n) if isinstance(n, int) and n > 0 else None


def _lr(optimizer) -> float | None:
    return None if optimizer is None else optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
