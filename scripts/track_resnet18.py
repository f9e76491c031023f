"""A worked example: sharpcomp's measures inside a training loop of one's own (README, "Measure inside your own
training").

A torchvision ResNet-18, adapted to 32x32 CIFAR-10 images (a 3x3 first convolution of stride 1, no max-pooling),
trained by the user's own loop: an ``ImageFolder`` of the CIFAR-10 JPEG copy with random crops and flips in a
``DataLoader``, SGD with momentum and weight decay, a cosine learning-rate schedule. A ``sharpcomp.Tracker``
records, every ``--every`` steps, the study's S (``sharpness``) and the network-wide NMLS (``nmls``) on ``--n``
fixed training points, lambda_max (``hessian_max``, Lanczos) and the average sharpness (``average``: the loss
under Gaussian weight noise), the losses and accuracies on ``--samples`` fixed training and test images, into a run
folder ``sharpcomp figures`` then draws. A rerun of the same command resumes where it stopped (network,
optimizer and schedule come back from the tracker's resume point).

    python scripts/track_resnet18.py --steps 120 --every 40 --batch 8 --samples 128 --n 8 \
        --hessian-n 32 --lanczos 10 --draws 4                               # a reduced run on a CPU
    python scripts/track_resnet18.py                                        # 100 epochs at batch 128 (a GPU)

The data: ``<data>/cifar10-jpeg/{train,test}/<class>/*.jpg`` (``--data``, default ``$SHARPCOMP_DATA``). At the
end it prints what the tracker cost: each checkpoint's seconds against the loop's own seconds since the one
before. The numbers of a run are in ``docs/benchmarks/tracker.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

import sharpcomp
from sharpcomp.cli import main as sharpcomp_main


def resnet18_32x32(classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with the stem of the CIFAR variants: a 3x3 convolution, stride 1, no max-pool."""
    model = torchvision.models.resnet18(num_classes=classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def fixed_images(folder: Path, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of an image folder drawn once by ``seed``, without augmentation: what the tracker measures."""
    data = torchvision.datasets.ImageFolder(folder, transform=transforms.ToTensor())
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    xs, ys = zip(*(data[int(i)] for i in idx))
    return torch.stack(xs), torch.tensor(ys)


def batches(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=39_000, help="SGD steps (default: 100 epochs at batch 128)")
    p.add_argument("--every", type=int, default=1_000, help="steps between checkpoints")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--n", type=int, default=32, help="training points of S and NMLS")
    p.add_argument("--samples", type=int, default=1000, help="fixed train and test images (losses, accuracies)")
    p.add_argument("--hessian-n", type=int, default=128, help="training points of lambda_max")
    p.add_argument("--lanczos", type=int, default=20, help="Lanczos iterations of lambda_max at most")
    p.add_argument("--draws", type=int, default=16, help="weight-noise draws of the average sharpness")
    p.add_argument("--out", type=Path, default=Path("outputs/tracked/resnet18-cifar10"))
    p.add_argument("--data", type=Path, default=Path(os.environ.get("SHARPCOMP_DATA", "data")))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


def main() -> int:
    args = parse()
    root = args.data / "cifar10-jpeg"
    if not root.is_dir():
        print(f"track_resnet18: error: no CIFAR-10 image folder at {root} (--data)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = resnet18_32x32().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor()])
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root / "train", transform=augment),
                                         batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    train_x, train_y = fixed_images(root / "train", args.samples, seed=1)
    test_x, test_y = fixed_images(root / "test", args.samples, seed=2)
    measures = {"hessian_max": {"n": args.hessian_n, "max_iter": args.lanczos, "tol": 0.01},
                "average": {"draws": args.draws, "batch_size": args.hessian_n}}

    started = time.perf_counter()  # the tracker's first checkpoint (iteration 0) is part of this call
    tracker = sharpcomp.Tracker(
        args.out, model, "ce", train_samples=(train_x, train_y), test_samples=(test_x, test_y), steps=args.steps,
        every=args.every, batch_size=args.batch, optimizer=opt, extra_state={"schedule": schedule},
        measures=measures, metrics={"n": args.n, "sample_sets": ["train", "test"]}, data="cifar10",
        model_name="resnet18", steps_per_epoch=len(loader))
    with tracker:
        data = batches(loader)
        for it in range(tracker.start, args.steps):
            x, y = next(data)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            tracker.step(it + 1, loss=loss.detach())
    print(cost_summary(tracker.reports, time.perf_counter() - started))
    return sharpcomp_main(["figures", str(args.out), "--out", f"{args.out}-figures"])


def cost_summary(reports, seconds: float) -> str:
    """What the tracker cost this loop: its seconds against the loop's own, per checkpoint and in all."""
    lines = ["checkpoint  tracker s  loop s since the last  tracker / loop  by part (s)"]
    for r in reports:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items())
        lines.append(f"{r.iteration:>10d}  {r.total:9.1f}  {r.loop_seconds:21.1f}  {r.cost:14.2f}  {parts}")
    tracked = sum(r.total for r in reports)
    lines.append(f"this call: {seconds:.0f} s, of which the tracker {tracked:.0f} s ({tracked / seconds:.0%})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
