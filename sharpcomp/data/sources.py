"""Reading datasets from disk into uint8 arrays: torchvision's own files, and image folders.

Each reader returns ``(train_x, train_y, test_x, test_y)``: uint8 images (n, C, H, W) and int64 labels.
A damaged file (truncated, or not the original) raises DataError naming it.

- ``KNOWN``: the torchvision datasets, with their sizes (also used to check the decoded-array cache)
  and the files, relative to a root folder, where torchvision looks for them.
- ``read_image_folder``: ``<root>/{train,test}/<class>/*.png|jpg|...``; class folders sorted by name are
  labels 0..k-1 (torchvision's ``ImageFolder`` convention); grey images stay one channel.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


class DataError(RuntimeError):
    """The dataset could not be found or read; the message is one line that names where it looked."""


@dataclass(frozen=True)
class Known:
    torchvision: str  # the torchvision.datasets class
    sizes: tuple[int, int]  # train and test images
    shape: tuple[int, int, int]  # one image (C, H, W)
    classes: int
    files: tuple[str, ...]  # where torchvision looks, relative to its root folder


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
KNOWN = {
    "fashion_mnist": Known("FashionMNIST", (60_000, 10_000), (1, 28, 28), 10,
                           tuple(f"FashionMNIST/raw/{f}" for f in IDX_FILES)),
    "mnist": Known("MNIST", (60_000, 10_000), (1, 28, 28), 10, tuple(f"MNIST/raw/{f}" for f in IDX_FILES)),
    "cifar10": Known("CIFAR10", (50_000, 10_000), (3, 32, 32), 10,
                     tuple(f"cifar-10-batches-py/{f}" for f in
                           ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                            "test_batch"))),
    "cifar100": Known("CIFAR100", (50_000, 10_000), (3, 32, 32), 100,
                      ("cifar-100-python/train", "cifar-100-python/test")),
    "svhn": Known("SVHN", (73_257, 26_032), (3, 32, 32), 10, ("SVHN/train_32x32.mat", "SVHN/test_32x32.mat")),
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _quiet():
    if os.environ.get("SHARPCOMP_VERBOSE"):
        return contextlib.ExitStack()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


# ---------------------------------------------------------------------------------------------
# torchvision's files


def present(dataset: str, root: Path) -> bool:
    return all((root / f).exists() for f in KNOWN[dataset].files)


def idx_problem(path: Path) -> str | None:
    """Why an IDX file (MNIST's format) is damaged, or None: its header gives the size it must have."""
    data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 3:
        return "it does not start with an IDX header of unsigned bytes"
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        return "its header is cut short"
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    want = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != want:
        return f"it holds {len(data):,} bytes, its header promises {want:,} (truncated?)"
    return None


def _damaged(dataset: str, root: Path) -> DataError | None:
    """Name the first damaged file of a torchvision dataset (wrong size, or not the original's MD5)."""
    # lazy: torchvision takes about a second to import; the config checks read this module without it
    from torchvision.datasets.utils import check_integrity

    md5 = {}
    if dataset in ("cifar10", "cifar100"):
        cls = _tv_class(dataset)
        md5 = {f"{cls.base_folder}/{name}": digest for name, digest in cls.train_list + cls.test_list}
    elif dataset == "svhn":
        splits = _tv_class("svhn").split_list
        md5 = {f"SVHN/{name}": digest for _, name, digest in (splits["train"], splits["test"])}
    for rel in KNOWN[dataset].files:
        path = root / rel
        problem = idx_problem(path) if "idx" in rel else (
            None if check_integrity(str(path), md5.get(rel)) else "its MD5 checksum differs from the original's")
        if problem:
            return DataError(f"data file {path} is damaged: {problem}; replace it (or delete it to download again)")
    return None


def _tv_class(dataset: str):
    # lazy: torchvision takes about a second to import; the config checks read this module without it
    import torchvision.datasets as tvd

    return getattr(tvd, KNOWN[dataset].torchvision)


def read_torchvision(dataset: str, root: Path, download: bool):
    """The arrays of a torchvision dataset under ``root`` (its own layout), downloading there if asked."""
    cls = _tv_class(dataset)
    try:
        with _quiet():
            if dataset == "svhn":
                tr, te = (cls(str(root / "SVHN"), split=s, download=download) for s in ("train", "test"))
                return tr.data, tr.labels.astype(np.int64), te.data, te.labels.astype(np.int64)
            tr, te = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
    except Exception as exc:
        if download:
            raise
        raise _damaged(dataset, root) or DataError(
            f"cannot read {dataset} in {root}: {type(exc).__name__}: {_first_line(exc)}") from None
    if dataset in ("mnist", "fashion_mnist"):
        return tr.data.unsqueeze(1).numpy(), tr.targets.numpy(), te.data.unsqueeze(1).numpy(), te.targets.numpy()
    return (tr.data.transpose(0, 3, 1, 2), np.asarray(tr.targets, dtype=np.int64),
            te.data.transpose(0, 3, 1, 2), np.asarray(te.targets, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# image folders


def folder_listing(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names (sorted) and, per split, the (image path, label) pairs; DataError for a bad layout."""
    # lazy: torchvision takes about a second to import; the config checks read this module without it
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    layout = f"{root}/{{train,test}}/<class>/*.png|jpg"
    classes = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"image folder {root} has no '{split}' folder (expected {layout})")
        try:
            classes[split], _ = find_classes(str(root / split))
        except FileNotFoundError:
            raise DataError(f"image folder {root / split} has no class folders (expected {layout})") from None
    if classes["train"] != classes["test"]:
        only_tr = sorted(set(classes["train"]) - set(classes["test"]))
        only_te = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataError(f"image folder {root}: train and test classes differ (only in train: {only_tr or 'none'}; "
                        f"only in test: {only_te or 'none'})")
    names = classes["train"]
    index = {c: i for i, c in enumerate(names)}
    files = {}
    for split in ("train", "test"):
        try:
            files[split] = make_dataset(str(root / split), index, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as exc:
            raise DataError(f"image folder {root / split}: {str(exc).splitlines()[0]}") from None
    return names, files


def folder_fingerprint(root: Path, files: dict[str, list[tuple[str, int]]]) -> str:
    """A digest of every image's path, label, size and modification time: changes when the folder does."""
    h = hashlib.sha1()
    for split in ("train", "test"):
        for path, label in files[split]:
            st = os.stat(path)
            h.update(f"{os.path.relpath(path, root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            a = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # not an image, truncated, unsupported
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {_first_line(exc)}") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _stack(images: list[np.ndarray], paths: list[str], channels: int) -> np.ndarray:
    first = images[0].shape[1:]
    for a, p in zip(images, paths):
        if a.shape[1:] != first:
            raise DataError(f"images differ in size: {paths[0]} is {first[1]}x{first[0]}, {p} is "
                            f"{a.shape[2]}x{a.shape[1]} (resize them to one size)")
    return np.stack([np.repeat(a, channels // a.shape[0], axis=0) for a in images])


def read_image_folder(root: Path, files: dict[str, list[tuple[str, int]]] | None = None):
    """The arrays of an image folder; grey images stay one channel unless some image has colour."""
    if files is None:
        _, files = folder_listing(root)
    decoded = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for split in ("train", "test"):
            decoded[split] = list(pool.map(_decode, [p for p, _ in files[split]], chunksize=256))
    channels = max(a.shape[0] for split in decoded.values() for a in split)
    out = []
    for split in ("train", "test"):
        paths = [p for p, _ in files[split]]
        out += [_stack(decoded[split], paths, channels), np.array([y for _, y in files[split]], dtype=np.int64)]
    return tuple(out)
