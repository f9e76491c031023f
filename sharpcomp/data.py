"""Datasets as tensors, and the run's data order (SPEC, "Data and training").

- ``cifar10_2class``: CIFAR-10 labels 0 and 1 (airplane, automobile), 10,000 train / 2,000 test.
- ``fashion_mnist``: all 60,000 / 10,000 Fashion-MNIST images.

Pixels are divided by 255; no normalisation, no augmentation. The whole dataset is held as one
tensor on the training device, and minibatches are taken by index.

Sources, in order (the one used is recorded with the results as ``data_source``):
1. torchvision's original files, already on disk under the data folder or the cache folder;
2. torchvision's originals downloaded into the cache folder, where the network allows;
3. the CIFAR-10 image-folder copy (``<data folder>/cifar10-jpeg/{train,test}/<class>/*.jpg``).
Decoded uint8 arrays are cached in the cache folder (``$SHARPCOMP_CACHE``, default
``~/.cache/sharpcomp``), so the next run starts in seconds.

The data folder is ``data_dir`` (config), else ``$SHARPCOMP_DATA``, else ``../shared/data`` beside
the working directory or the checkout, when it exists.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("cifar10", "fashion_mnist")
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CACHE_VERSION = 1


class DataError(RuntimeError):
    """The dataset could not be found or read; the message names where it looked."""


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # float, (n, C, H, W), values in [0, 1]
    train_y: torch.Tensor  # long, (n,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def default_data_dir() -> Path | None:
    env = os.environ.get("SHARPCOMP_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def default_cache_dir() -> Path:
    env = os.environ.get("SHARPCOMP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sharpcomp"


# ---------------------------------------------------------------------------------------------
# raw arrays: (train_x uint8 (n,C,H,W), train_y int64, test_x, test_y), plus a source label


def _quiet():
    return contextlib.ExitStack() if os.environ.get("SHARPCOMP_VERBOSE") else contextlib.redirect_stdout(io.StringIO())


def _fmnist_from_torchvision(root: Path, download: bool):
    from torchvision.datasets import FashionMNIST

    with _quiet(), contextlib.redirect_stderr(io.StringIO()):
        tr = FashionMNIST(str(root), train=True, download=download)
        te = FashionMNIST(str(root), train=False, download=download)
    return (tr.data.unsqueeze(1).numpy(), tr.targets.numpy(), te.data.unsqueeze(1).numpy(), te.targets.numpy())


def _cifar_from_torchvision(root: Path, download: bool):
    from torchvision.datasets import CIFAR10

    with _quiet(), contextlib.redirect_stderr(io.StringIO()):
        tr = CIFAR10(str(root), train=True, download=download)
        te = CIFAR10(str(root), train=False, download=download)
    return (tr.data.transpose(0, 3, 1, 2), np.asarray(tr.targets),
            te.data.transpose(0, 3, 1, 2), np.asarray(te.targets))


def _cifar_from_jpeg(folder: Path):
    from PIL import Image

    out = []
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(CIFAR10_CLASSES):
            files = sorted((folder / split / cls).glob("*.jpg"))
            if not files:
                raise DataError(f"no JPEG files in {folder / split / cls}")
            for f in files:
                with Image.open(f) as im:
                    xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            ys.append(np.full(len(files), label, dtype=np.int64))
        out += [np.stack(xs).transpose(0, 3, 1, 2).copy(), np.concatenate(ys)]
    return tuple(out)


def _try_download(fn, root: Path, errors: list[str]):
    if os.environ.get("SHARPCOMP_OFFLINE"):
        errors.append("download skipped (SHARPCOMP_OFFLINE is set)")
        return None
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        root.mkdir(parents=True, exist_ok=True)
        return fn(root, True)
    except Exception as exc:  # no network, HTTP errors, broken archives
        errors.append(f"download into {root} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        return None
    finally:
        socket.setdefaulttimeout(old)


def _load_raw(dataset: str, data_dir: Path | None, cache_dir: Path):
    errors: list[str] = []
    roots = [r for r in (data_dir, cache_dir / "torchvision") if r is not None]
    if dataset == "fashion_mnist":
        for root in roots:
            if all((root / "FashionMNIST" / "raw" / f).exists() for f in FMNIST_FILES):
                return _fmnist_from_torchvision(root, False), f"torchvision FashionMNIST ({root})"
            errors.append(f"not in {root / 'FashionMNIST' / 'raw'} ({', '.join(FMNIST_FILES)})")
        arrays = _try_download(_fmnist_from_torchvision, cache_dir / "torchvision", errors)
        if arrays is not None:
            return arrays, "torchvision FashionMNIST (downloaded)"
    else:
        for root in roots:
            if (root / "cifar-10-batches-py" / "data_batch_1").exists():
                return _cifar_from_torchvision(root, False), f"torchvision CIFAR10 ({root})"
            errors.append(f"not in {root / 'cifar-10-batches-py'}")
        arrays = _try_download(_cifar_from_torchvision, cache_dir / "torchvision", errors)
        if arrays is not None:
            return arrays, "torchvision CIFAR10 (downloaded)"
        if data_dir is not None:
            folder = data_dir / "cifar10-jpeg"
            if (folder / "train").is_dir() and (folder / "test").is_dir():
                return _cifar_from_jpeg(folder), f"CIFAR-10 JPEG image folder ({folder})"
            errors.append(f"no image-folder copy at {folder}/{{train,test}}/<class>/*.jpg")
    where = "no data folder (set SHARPCOMP_DATA or data_dir=...)" if data_dir is None else f"data folder {data_dir}"
    raise DataError(f"{dataset} data not found; {where}: " + "; ".join(errors))


def load_arrays(dataset: str, data_dir: Path | None = None, cache_dir: Path | None = None):
    """uint8 images (n, C, H, W) and int64 labels for the train and test split, and the source.

    Decoded arrays are cached (``<cache_dir>/<dataset>-v1.npz``); the cache is keyed by dataset
    only, so the source recorded is the one that filled it.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache = cache_dir / f"{dataset}-v{CACHE_VERSION}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return (z["train_x"], z["train_y"], z["test_x"], z["test_y"]), str(z["source"])
        except Exception:
            pass  # damaged cache: rebuild it
    arrays, source = _load_raw(dataset, data_dir, cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, train_x=arrays[0], train_y=arrays[1], test_x=arrays[2], test_y=arrays[3], source=source)
        os.replace(tmp, cache)
    except OSError:
        pass  # an unwritable cache only costs time
    return arrays, source


def load_dataset(name: str, dataset: str, classes=None, data_dir=None, cache_dir=None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Dataset:
    """Load a dataset onto ``device``, keeping only ``classes`` (relabelled 0..k-1) when given."""
    (trx, try_, tex, tey), source = load_arrays(dataset, data_dir, cache_dir)
    num_classes = int(max(try_.max(), tey.max()) + 1)
    if classes is not None:
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad or len(set(classes)) != len(classes) or len(classes) < 2:
            raise DataError(f"classes must be >= 2 distinct labels in 0..{num_classes - 1}, got {classes}")
        remap = np.full(num_classes, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        keep_tr, keep_te = np.isin(try_, classes), np.isin(tey, classes)
        trx, try_, tex, tey = trx[keep_tr], remap[try_[keep_tr]], tex[keep_te], remap[tey[keep_te]]
        num_classes = len(classes)

    def to_x(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype).div_(255.0)

    def to_y(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=torch.long)

    return Dataset(name, to_x(trx), to_y(try_), to_x(tex), to_y(tey), num_classes, source)


# ---------------------------------------------------------------------------------------------
# the run's data order and its fixed metric sample set: functions of the seed alone, so a resumed
# run, or an ensemble training many runs in lockstep, sees exactly the same batches.


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the training set in one epoch (reshuffled every epoch)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=g)


def steps_per_epoch(n: int, batch: int) -> int:
    """Full batches per epoch; the last incomplete batch of an epoch is dropped."""
    return n // batch


def batch_indices(seed: int, iteration: int, n: int, batch: int) -> torch.Tensor:
    """Indices of the minibatch used at ``iteration`` (0-based)."""
    epoch, k = divmod(int(iteration), steps_per_epoch(n, batch))
    return epoch_permutation(seed, epoch, n)[k * batch:(k + 1) * batch]


def train_sample_indices(seed: int, n_train: int, n: int) -> torch.Tensor:
    """The fixed ``train`` metric sample set: n training points drawn once per run from its seed."""
    g = torch.Generator().manual_seed(int(seed) + 7_777_777)
    return torch.randperm(n_train, generator=g)[: min(n, n_train)].sort().values
