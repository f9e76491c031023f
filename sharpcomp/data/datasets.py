"""Datasets as tensors: loading, caching, subsets of classes (the run's data order: :mod:`sharpcomp.data.order`).

A data config (``conf/data/*.yaml``) names a dataset::

    name: cifar10_2class   # the label in run ids, folders and records
    dataset: cifar10       # fashion_mnist | mnist | cifar10 | cifar100 | svhn | image_folder
    classes: [0, 1]        # a subset of class indices, relabelled 0..k-1 in this order (null: all)
    root: null             # image_folder only: <root>/{train,test}/<class>/*.png|jpg
    normalize: false       # per-channel mean/std of the training set (the paper: pixels / 255 only)
    n_train: null          # keep the first n_train training images (after the class subset; null: all)

Pixels are divided by 255; no augmentation. The whole dataset is held as one tensor on the training
device, and minibatches are taken by index.

Sources, in order (recorded with the results as ``data_source``, e.g. ``torchvision:fashion_mnist`` or
``image_folder:cifar10-jpeg``: the kind of source and the dataset's own name, never a local path):
1. torchvision's original files, already on disk under the data folder or the cache folder, in
   torchvision's layout (``FashionMNIST/raw/``, ``MNIST/raw/``, ``cifar-10-batches-py/``,
   ``cifar-100-python/``, ``SVHN/{train,test}_32x32.mat``);
2. torchvision's originals downloaded into the cache folder, where the network allows;
3. for CIFAR-10, the image-folder copy (``<data folder>/cifar10-jpeg/{train,test}/<class>/*.jpg``).
Decoded uint8 arrays are cached in the cache folder (``$SHARPCOMP_CACHE``, default
``~/.cache/sharpcomp``), so the next run starts in seconds. A cache is checked before use (image
counts and shapes against the dataset's known sizes, or an image folder's file listing, and a CRC-32
of the arrays) and rebuilt, with a line, when it does not match.

The data folder is ``data_dir`` (config), else ``$SHARPCOMP_DATA``; without either, only the cache
folder is searched (and downloads go there). A relative ``root`` of an image folder is taken from the
working directory, else from the data folder.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sharpcomp.data.sources import KNOWN, DataError, folder_fingerprint, folder_listing, present, read_image_folder
from sharpcomp.data.sources import read_torchvision as _read_torchvision

DATASETS = (*KNOWN, "image_folder")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_JPEG = "cifar10-jpeg"
CACHE_VERSION = 2  # v2: checked caches, data_source without local paths
__all__ = ["DataError", "Dataset", "DATASETS", "KNOWN", "load_arrays", "load_dataset", "load_from_config",
           "check_data_config"]


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # float, (n, C, H, W), values in [0, 1] (unless normalised)
    train_y: torch.Tensor  # long, (n,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def default_data_dir() -> Path | None:
    """The data folder when the config names none: ``$SHARPCOMP_DATA``, or None (the cache folder alone)."""
    env = os.environ.get("SHARPCOMP_DATA")
    return Path(env) if env else None


def default_cache_dir() -> Path:
    env = os.environ.get("SHARPCOMP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sharpcomp"


def resolve_root(root, data_dir: Path | None = None) -> Path:
    """An image folder's path: absolute as given, else from the working directory, else the data folder."""
    if root is None or not str(root).strip() or str(root) == "???":
        raise DataError("data.root must name the image folder (<root>/{train,test}/<class>/*.png|jpg)")
    path = Path(str(root)).expanduser()
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    for cand in ([path] if path.is_absolute() else [Path.cwd() / path] + ([data_dir / path] if data_dir else [])):
        if cand.is_dir():
            return cand.resolve()
    raise DataError(f"image folder {root} not found" + ("" if path.is_absolute() or not data_dir
                                                       else f" (nor under the data folder {data_dir})"))


# keys added to the data configs after runs were recorded, with the value that changes nothing
IDENTITY_DEFAULTS = {"normalize": False, "root": None, "n_train": None}


def identity_view(data_cfg: Mapping) -> dict:
    """The data config less keys at their defaults (``IDENTITY_DEFAULTS``), so a run's identity hash is
    the one it had before those keys existed."""
    return {k: v for k, v in data_cfg.items() if not (k in IDENTITY_DEFAULTS and v == IDENTITY_DEFAULTS[k])}


def check_data_config(data_cfg: Mapping, data_dir=None) -> None:
    """Raise DataError with one line for a data config no run can use (before any loading)."""
    name, dataset = data_cfg.get("name"), data_cfg.get("dataset", data_cfg.get("name"))
    if not isinstance(name, str) or not name:
        raise DataError(f"data.name must be a non-empty string, got {name!r}")
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    if not isinstance(data_cfg.get("normalize", False), bool):
        raise DataError(f"data.normalize must be true or false, got {data_cfg.get('normalize')!r}")
    check_classes(data_cfg.get("classes"), dataset, KNOWN[dataset].classes if dataset in KNOWN else None)
    n_train = data_cfg.get("n_train")
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1):
        raise DataError(f"data.n_train must be a positive integer or null, got {n_train!r}")
    if dataset == "image_folder":
        resolve_root(data_cfg.get("root"), data_dir)


def known_shape(data_cfg: Mapping) -> tuple[tuple[int, ...] | None, int | None]:
    """(one sample's shape, number of classes) of a data config, known before loading for the
    torchvision datasets (after a class subset); (None, None) for an image folder."""
    known = KNOWN.get(data_cfg.get("dataset", data_cfg.get("name")))
    if known is None:
        return None, None
    classes = data_cfg.get("classes")
    return tuple(known.shape), len(classes) if classes else known.classes


def check_classes(classes, dataset: str, num_classes: int | None) -> list[int] | None:
    """The class subset as a list of ints; DataError for indices that are not distinct, in range, >= 2."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise DataError(f"data.classes must be a list of class indices, e.g. [3,5], got {classes!r}")
    classes = list(classes)
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer))]
    if bad:
        raise DataError(f"data.classes must be class indices (integers), got {bad[0]!r}")
    out = [c for c in classes if c < 0 or (num_classes is not None and c >= num_classes)]
    if out:
        have = f"{dataset} has classes 0..{num_classes - 1}" if num_classes else "indices start at 0"
        raise DataError(f"class index {out[0]} out of range: {have}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise DataError(f"data.classes must be at least 2 distinct class indices, got {classes}")
    return [int(c) for c in classes]


# ---------------------------------------------------------------------------------------------
# raw arrays: (train_x uint8 (n,C,H,W), train_y int64, test_x, test_y), plus a source label


def _try_download(dataset: str, root: Path, errors: list[str]):
    if os.environ.get("SHARPCOMP_OFFLINE"):
        errors.append("download skipped (SHARPCOMP_OFFLINE is set)")
        return None
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _read_torchvision(dataset, root, True)
    except Exception as exc:  # no network, HTTP errors, broken archives
        errors.append(f"download into {root} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        return None
    finally:
        socket.setdefaulttimeout(old)


def _load_raw(dataset: str, data_dir: Path | None, cache_dir: Path):
    errors: list[str] = []
    roots = [r for r in (data_dir, cache_dir / "torchvision") if r is not None]
    for root in roots:
        if present(dataset, root):
            return _read_torchvision(dataset, root, False), f"torchvision:{dataset}"
        errors.append(f"not in {root} ({', '.join(KNOWN[dataset].files)})")
    arrays = _try_download(dataset, cache_dir / "torchvision", errors)
    if arrays is not None:
        return arrays, f"torchvision:{dataset}"
    if dataset == "cifar10" and data_dir is not None:
        folder = data_dir / CIFAR10_JPEG
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            classes, files = folder_listing(folder)
            if tuple(classes) != CIFAR10_CLASSES:
                raise DataError(f"{folder} does not hold CIFAR-10's ten class folders ({', '.join(CIFAR10_CLASSES)})")
            return read_image_folder(folder, files), f"image_folder:{CIFAR10_JPEG}"
        errors.append(f"no image-folder copy at {folder}/{{train,test}}/<class>/*.jpg")
    where = "no data folder (set SHARPCOMP_DATA or data_dir=...)" if data_dir is None else f"data folder {data_dir}"
    raise DataError(f"{dataset} data not found; {where}: " + "; ".join(errors))


# ---------------------------------------------------------------------------------------------
# the decoded-array cache, checked before use


def _checksum(arrays) -> str:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
    return f"{crc:08x}"


def _cache_problem(z, dataset: str, fingerprint: str) -> str | None:
    """Why a cached npz does not hold this dataset, or None."""
    if not {"train_x", "train_y", "test_x", "test_y", "source", "checksum", "fingerprint"} <= set(z.files):
        return "is incomplete"
    arrays = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
    if any(a.dtype != t for a, t in zip(arrays, (np.uint8, np.int64) * 2)):
        return "has the wrong types"
    if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]) or arrays[0].ndim != 4:
        return "has images and labels that do not match"
    known = KNOWN.get(dataset)
    if known is not None:
        got = (len(arrays[0]), len(arrays[2]), *arrays[0].shape[1:])
        if got != (*known.sizes, *known.shape) or arrays[2].shape[1:] != arrays[0].shape[1:]:
            return (f"holds {got[0]} train / {got[1]} test images of shape {tuple(got[2:])}, "
                    f"{dataset} has {known.sizes[0]} / {known.sizes[1]} of shape {known.shape}")
        if min(arrays[1].min(), arrays[3].min()) < 0 or max(arrays[1].max(), arrays[3].max()) >= known.classes:
            return f"holds labels outside {dataset}'s 0..{known.classes - 1}"
    elif str(z["fingerprint"]) != fingerprint:
        return "was made from other files (the image folder changed)"
    if str(z["checksum"]) != _checksum(arrays):
        return "fails its checksum"
    return None


def _read_cache(cache: Path, dataset: str, fingerprint: str):
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            problem = _cache_problem(z, dataset, fingerprint)
            if problem is None:
                return (z["train_x"], z["train_y"], z["test_x"], z["test_y"]), str(z["source"])
    except Exception as exc:  # not an npz, truncated
        problem = f"cannot be read ({type(exc).__name__})"
    print(f"sharpcomp: data cache {cache} {problem}; rebuilding it", file=sys.stderr, flush=True)
    return None


def _write_cache(cache: Path, arrays, source: str, fingerprint: str) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, train_x=arrays[0], train_y=arrays[1], test_x=arrays[2], test_y=arrays[3], source=source,
                 checksum=_checksum(arrays), fingerprint=fingerprint)
        os.replace(tmp, cache)
    except OSError:
        pass  # an unwritable cache only costs time


def load_arrays(dataset: str, data_dir: Path | None = None, cache_dir: Path | None = None, root=None):
    """uint8 images (n, C, H, W) and int64 labels for the train and test split, and the source.

    Decoded arrays are cached (``<cache_dir>/<dataset>-v2.npz``; an image folder's cache file also
    names its folder). The cache is keyed by dataset, so the source recorded is the one that filled it.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    fingerprint, files = "", None
    if dataset == "image_folder":
        folder = resolve_root(root, data_dir)
        _, files = folder_listing(folder)
        fingerprint = folder_fingerprint(folder, files)
        key = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
        cache = cache_dir / f"image_folder-{folder.name}-{key}-v{CACHE_VERSION}.npz"
    else:
        cache = cache_dir / f"{dataset}-v{CACHE_VERSION}.npz"
    cached = _read_cache(cache, dataset, fingerprint)
    if cached is not None:
        return cached
    if dataset == "image_folder":
        arrays, source = read_image_folder(folder, files), f"image_folder:{folder.name}"
    else:
        arrays, source = _load_raw(dataset, data_dir, cache_dir)
    _write_cache(cache, arrays, source, fingerprint)
    return arrays, source


def _normalize(train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    """Per-channel standardisation by the training set's mean and standard deviation, in place."""
    dims = [0, *range(2, train_x.dim())]
    mean = train_x.double().mean(dim=dims, keepdim=True)
    std = train_x.double().std(dim=dims, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for x in (train_x, test_x):
        x.sub_(mean.to(x.dtype)).div_(std.to(x.dtype))


def load_dataset(name: str, dataset: str, classes=None, data_dir=None, cache_dir=None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *, root=None,
                 normalize: bool = False, n_train: int | None = None) -> Dataset:
    """Load a dataset onto ``device``, keeping only ``classes`` (relabelled 0..k-1) when given and only
    the first ``n_train`` training images (after the class subset) when given."""
    (trx, try_, tex, tey), source = load_arrays(dataset, data_dir, cache_dir, root)
    num_classes = KNOWN[dataset].classes if dataset in KNOWN else int(max(try_.max(), tey.max()) + 1)
    classes = check_classes(classes, dataset, num_classes)
    if classes is not None:
        remap = np.full(num_classes, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        keep_tr, keep_te = np.isin(try_, classes), np.isin(tey, classes)
        trx, try_, tex, tey = trx[keep_tr], remap[try_[keep_tr]], tex[keep_te], remap[tey[keep_te]]
        num_classes = len(classes)
    if n_train is not None:
        trx, try_ = trx[: int(n_train)], try_[: int(n_train)]

    def to_x(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype).div_(255.0)

    def to_y(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=torch.long)

    train_x, test_x = to_x(trx), to_x(tex)
    if normalize:
        _normalize(train_x, test_x)
    return Dataset(name, train_x, to_y(try_), test_x, to_y(tey), num_classes, source)


def load_from_config(data_cfg: Mapping, data_dir=None, cache_dir=None, device: torch.device | str = "cpu") -> Dataset:
    """The dataset a data config (``conf/data/*.yaml``, a plain mapping) describes, on ``device``."""
    check_data_config(data_cfg, data_dir)
    return load_dataset(data_cfg["name"], data_cfg.get("dataset", data_cfg["name"]), data_cfg.get("classes"),
                        data_dir, cache_dir, device=device, root=data_cfg.get("root"),
                        normalize=bool(data_cfg.get("normalize", False)), n_train=data_cfg.get("n_train"))
