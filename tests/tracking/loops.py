"""Training loops of a user's own that reproduce ``sharpcomp train``: a plain PyTorch loop and a Lightning fit.

Both train the network ``sharpcomp train`` builds for a config (same seed, same initial weights), with plain
SGD on the minibatches of ``sharpcomp.data.order.batch_indices`` (the data order of ``sharpcomp train``),
and track it with the same measures at the same cadence. Run as a module (``python -m tests.tracking.loops
plain|lightning FOLDER [--kill-at K]``) they are the scripts the kill tests stop with SIGKILL and run again.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch

from sharpcomp.data.datasets import Dataset
from sharpcomp.data.order import batch_indices, steps_per_epoch
from sharpcomp.engine.setup import build
from sharpcomp.losses import make_loss
from sharpcomp.settings import Settings, settings
from sharpcomp.tracking.tracker import Tracker
from tests.conftest import compose_train, random_images

# mlp4 at 1/5 width on Fashion-MNIST-shaped random images: 14 steps, a checkpoint every 4 (and the end one at
# 14, off the schedule), every sample set, whole-set evaluation and the flatness measures at every 2nd one
OVERRIDES = ["data=fashion_mnist", "model=mlp4", "model.width=0.2", "steps=14", "log_every=4", "eval_every=2",
             "batch=16", "seed=3", "metrics.n=8", "progress=false", "loss=ce",
             "metrics.sample_sets=[train,test,misclassified]", "metrics.flatness_every=2",
             "metrics.flatness.grad_norm={n: 64}", "metrics.flatness.hessian_max={n: 48, max_iter: 30}",
             "metrics.flatness.average={draws: 6, batch_size: 48}"]


KILLER = ["+metrics.flatness.killer={_target_: tests.own_measures.KILLER}"]


def config(extra: list[str] | None = None) -> Settings:
    return settings(compose_train(OVERRIDES + list(extra or [])))


def data() -> Dataset:
    return random_images(240, 60)


def tracker_options(s: Settings, d: Dataset) -> dict:
    """The tracker's arguments that make it record what ``sharpcomp train`` records for ``s``."""
    return dict(train_samples=(d.train_x, d.train_y), test_samples=(d.test_x, d.test_y), steps=s.steps,
                every=s.log_every, eval_every=s.eval_every, batch_size=s.batch, seed=s.seed,
                measures={k: v for k, v in s.metrics.flatness.items() if v is not None},
                metrics={"n": s.metrics.n, "sample_sets": list(s.metrics.sample_sets),
                         "flatness_every": s.metrics.flatness_every},
                steps_per_epoch=steps_per_epoch(len(d.train_x), s.batch), progress=False)


def _kill_if(kill_at: int | None, it: int) -> None:
    if kill_at is not None and it == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def plain_loop(folder: Path, s: Settings, d: Dataset, kill_at: int | None = None, **options) -> Tracker:
    """The user's loop: build, SGD on train's minibatches, ``tracker.step`` after each update."""
    model = build(s, d, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=s.lr)
    loss_fn = make_loss(s.loss, d.num_classes)
    with Tracker(folder, model, s.loss, optimizer=opt, **{**tracker_options(s, d), **options}) as tracker:
        for it in range(tracker.start, s.steps):
            idx = batch_indices(s.seed, it, len(d.train_x), s.batch)
            loss = loss_fn(model(d.train_x[idx]), d.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _kill_if(kill_at, it + 1)
            tracker.step(it + 1, loss=loss.detach())
    return tracker


# ---- Lightning -----------------------------------------------------------------------------------------


def lightning_fit(folder: Path, s: Settings, d: Dataset, ckpt_dir: Path | None = None, kill_at: int | None = None,
                  resume: bool = False, logger=False, ckpt_every: int | None = None) -> None:
    """The same training as a Lightning fit: a LightningModule around the network, the batches in train's
    order, the tracker as a callback (checkpoints every ``log_every``); with ``ckpt_dir``, the Trainer's own
    checkpoints every ``ckpt_every`` steps (default ``log_every``), and ``resume`` from the last of them."""
    # lazy: the kill tests run this module without Lightning's import cost for the plain loop
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sharpcomp.tracking.lightning import SharpcompCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = build(s, d, torch.device("cpu"))
            self.loss_fn = make_loss(s.loss, d.num_classes)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            _kill_if(kill_at, self.global_step + 1)
            x, y = batch
            return self.loss_fn(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=s.lr)

    class Order(torch.utils.data.Sampler):
        """Train's minibatches, one per step."""

        def __len__(self):
            return s.steps

        def __iter__(self):
            return iter(batch_indices(s.seed, it, len(d.train_x), s.batch).tolist() for it in range(s.steps))

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(d.train_x, d.train_y), batch_sampler=Order())
    options = {k: v for k, v in tracker_options(s, d).items() if k not in ("steps", "every")}
    callbacks = [SharpcompCallback(folder, s.loss, every=s.log_every, steps=s.steps, **options)]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=ckpt_every or s.log_every,
                                         save_top_k=-1, save_last=True))
    trainer = L.Trainer(max_steps=s.steps, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        enable_checkpointing=ckpt_dir is not None, num_sanity_val_steps=0)
    trainer.fit(Module(), loader, ckpt_path="last" if resume else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("loop", choices=("plain", "lightning"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--ckpt-every", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--killer", action="store_true", help="with the measure that kills (tests.own_measures)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s, d = config(KILLER if args.killer else []), data()
    if args.loop == "plain":
        plain_loop(args.folder, s, d, kill_at=args.kill_at)
    else:
        lightning_fit(args.folder, s, d, args.ckpt, kill_at=args.kill_at, resume=args.resume,
                      ckpt_every=args.ckpt_every)


if __name__ == "__main__":
    main()
