"""Datasets beyond the study's two: MNIST, CIFAR-100 and SVHN read from tiny files in their
real on-disk formats, CIFAR-10 subsets from the shared JPEG copy, any image folder; the checked
decoded-array cache, damaged files and ``data_source``."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sharpcomp.data import datasets as data_mod
from sharpcomp.data.datasets import CACHE_VERSION, check_data_config, load_arrays, load_dataset, load_from_config
from sharpcomp.data.sources import DataError

OFFLINE = {"SHARPCOMP_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("SHARPCOMP_OFFLINE", "1")


@pytest.fixture
def no_md5(monkeypatch):
    """Tiny files cannot have the originals' MD5 checksums, which torchvision checks for CIFAR and SVHN."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(svhn, "check_integrity", lambda *a, **k: True)


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(head + array.tobytes())


def make_idx_dataset(root, folder, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), (np.arange(n_test) + 3) % 10)
    for name, a in zip(("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"), arrays):
        write_idx(root / folder / "raw" / name, a)
    return arrays


def test_mnist_from_idx_files(tmp_path):
    trx, try_, tex, tey = make_idx_dataset(tmp_path / "data", "MNIST")
    (a, b, c, d), source = load_arrays("mnist", tmp_path / "data", tmp_path / "cache")
    assert source == "torchvision:mnist"
    assert a.shape == (12, 1, 28, 28) and a.dtype == np.uint8 and np.array_equal(a[:, 0], trx)
    assert np.array_equal(b, try_) and np.array_equal(c[:, 0], tex) and np.array_equal(d, tey)
    ds = load_dataset("mnist", "mnist", [3, 1], tmp_path / "data", tmp_path / "cache")
    assert ds.num_classes == 2 and ds.train_y.tolist() == [1, 0, 1] and ds.test_y.tolist() == [0]
    assert torch.equal(ds.train_x[0, 0] * 255, torch.from_numpy(trx[1]).float())


def test_truncated_idx_file_is_named_as_damaged(tmp_path, capsys):
    make_idx_dataset(tmp_path / "data", "FashionMNIST")
    images = tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DataError) as err:
        load_arrays("fashion_mnist", tmp_path / "data", tmp_path / "cache")
    msg = str(err.value)
    assert f"data file {images} is damaged" in msg and "truncated" in msg and "\n" not in msg


def _cifar_pickles(root, folder, files, label_key, n, classes):
    rng = np.random.default_rng(1)
    out = {}
    for name in files:
        x = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        y = list(rng.integers(0, classes, n))
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": x, label_key: y}, f)
        out[name] = (x, np.array(y))
    return out


def test_cifar100_from_pickles(tmp_path, no_md5):
    root = tmp_path / "data"
    batches = _cifar_pickles(root, "cifar-100-python", ("train", "test"), "fine_labels", 5, 100)
    with open(root / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    (a, b, c, d), source = load_arrays("cifar100", root, tmp_path / "cache")
    assert source == "torchvision:cifar100" and a.shape == (5, 3, 32, 32)
    assert np.array_equal(a, batches["train"][0].reshape(5, 3, 32, 32)) and np.array_equal(b, batches["train"][1])
    assert np.array_equal(c, batches["test"][0].reshape(5, 3, 32, 32)) and np.array_equal(d, batches["test"][1])
    assert load_dataset("c", "cifar100", None, root, tmp_path / "cache").num_classes == 100


def test_cifar_file_not_the_original_is_named(tmp_path):
    root = tmp_path / "data"
    _cifar_pickles(root, "cifar-100-python", ("train", "test"), "fine_labels", 5, 100)
    with pytest.raises(DataError, match=r"cifar-100-python/train is damaged: its MD5 checksum differs"):
        load_arrays("cifar100", root, tmp_path / "cache")


def test_svhn_from_mat_files(tmp_path, no_md5):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    (tmp_path / "data" / "SVHN").mkdir(parents=True)
    want = {}
    for split, n in (("train", 7), ("test", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)  # SVHN's layout: H, W, C, N
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # digit 0 is label 10
        y[0] = 10
        savemat(tmp_path / "data" / "SVHN" / f"{split}_32x32.mat", {"X": x, "y": y})
        want[split] = (x.transpose(3, 2, 0, 1), np.where(y[:, 0] == 10, 0, y[:, 0]))
    (a, b, c, d), source = load_arrays("svhn", tmp_path / "data", tmp_path / "cache")
    assert source == "torchvision:svhn" and a.shape == (7, 3, 32, 32) and b[0] == 0
    assert np.array_equal(a, want["train"][0]) and np.array_equal(b, want["train"][1])
    assert np.array_equal(c, want["test"][0]) and np.array_equal(d, want["test"][1])
    assert a[2, 1, 5, 7] == want["train"][0][2, 1, 5, 7]


# ---------------------------------------------------------------------------------------------
# image folders


def make_folder(root, classes=("bee", "ant", "cat"), per_class=(3, 2), size=(5, 4), mode="RGB", ext="png"):
    """<root>/{train,test}/<class>/NN.png, every pixel of image k of class c equal to 40 * label + k."""
    labels = {c: i for i, c in enumerate(sorted(classes))}
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                value = 40 * labels[c] + k
                Image.new(mode, size, value if mode == "L" else (value, value + 1, value + 2)).save(
                    root / split / c / f"{k:02d}.{ext}")
    return labels


def test_image_folder_loads_with_the_right_labels(tmp_path, capsys):
    root = tmp_path / "pets"
    make_folder(root)
    cfg = {"name": "pets", "dataset": "image_folder", "root": str(root)}
    ds = load_from_config(cfg, None, tmp_path / "cache")
    assert ds.source == "image_folder:pets" and ds.num_classes == 3 and ds.input_shape == (3, 4, 5)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and ds.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    pixels = (ds.train_x * 255).round()
    for i, y in enumerate(ds.train_y.tolist()):  # ant = 0, bee = 1, cat = 2: sorted folder names
        value = 40 * y + i % 3
        assert pixels[i, :, 0, 0].tolist() == [value, value + 1, value + 2]
    sub = load_from_config({**cfg, "classes": [2, 0]}, None, tmp_path / "cache")
    assert sub.num_classes == 2 and sub.train_y.tolist() == [1, 1, 1, 0, 0, 0]
    assert torch.equal(sub.train_x[:3], ds.train_x[:3])
    assert "rebuilding" not in capsys.readouterr().err  # second and third loads: the cache
    (root / "train" / "bee" / "02.png").unlink()  # the folder changed: the cache is rebuilt
    again = load_from_config(cfg, None, tmp_path / "cache")
    assert len(again.train_y) == 8 and "was made from other files" in capsys.readouterr().err


def test_grey_image_folder_stays_one_channel_and_normalises(tmp_path):
    make_folder(tmp_path / "digits", ("zero", "one"), mode="L", ext="jpg", size=(6, 6))
    cfg = {"name": "digits", "dataset": "image_folder", "root": str(tmp_path / "digits")}
    ds = load_from_config(cfg, None, tmp_path / "cache")
    assert ds.input_shape == (1, 6, 6) and ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    norm = load_from_config({**cfg, "normalize": True}, None, tmp_path / "cache")
    mean, std = ds.train_x.double().mean(), ds.train_x.double().std()
    assert norm.train_x.double().mean().item() == pytest.approx(0, abs=1e-6)
    assert norm.train_x.double().std().item() == pytest.approx(1, rel=1e-5)
    assert torch.allclose(norm.test_x.double(), (ds.test_x.double() - mean) / std, atol=1e-5)


@pytest.mark.parametrize("damage,message", [
    (lambda r: [p.rmdir() for p in (r / "train").iterdir()], "has no class folders"),
    (lambda r: (r / "test" / "ant").rename(r / "test" / "dog"), "only in train: ['ant']; only in test: ['dog']"),
    (lambda r: (r / "train" / "ant" / "00.png").write_bytes(b"not a png"), "cannot read image"),
    (lambda r: Image.new("RGB", (9, 9)).save(r / "test" / "cat" / "09.png"), "differ in size"),
    (lambda r: [p.unlink() for p in (r / "test" / "cat").iterdir()], "Found no valid file for the classes cat"),
    (lambda r: (r / "test").rename(r / "val"), "has no 'test' folder"),
])
def test_bad_image_folders_are_one_line_errors(tmp_path, damage, message):
    root = tmp_path / "pets"
    make_folder(root)
    if "class folders" in message:
        for c in (root / "train").iterdir():
            for p in c.iterdir():
                p.unlink()
    damage(root)
    with pytest.raises(DataError) as err:
        load_from_config({"name": "pets", "dataset": "image_folder", "root": str(root)}, None, tmp_path / "cache")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_class_index_out_of_range(tmp_path):
    make_folder(tmp_path / "pets")
    cfg = {"name": "pets", "dataset": "image_folder", "root": str(tmp_path / "pets"), "classes": [0, 3]}
    with pytest.raises(DataError, match="class index 3 out of range: image_folder has classes 0..2"):
        load_from_config(cfg, None, tmp_path / "cache")
    with pytest.raises(DataError, match="class index 12 out of range: cifar10 has classes 0..9"):
        check_data_config({"name": "c", "dataset": "cifar10", "classes": [3, 12]})
    with pytest.raises(DataError, match="image folder nowhere not found"):
        check_data_config({"name": "c", "dataset": "image_folder", "root": "nowhere"}, tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        check_data_config({"name": "c", "dataset": "imagenet"})


# ---------------------------------------------------------------------------------------------
# CIFAR-10 from the shared JPEG copy


@pytest.fixture(scope="module")
def cifar_arrays(data_dir, cache_dir):
    return load_arrays("cifar10", data_dir, cache_dir)


def test_cifar10_all_classes_and_subsets_from_the_jpeg_copy(cifar_arrays, data_dir, cache_dir):
    (trx, try_, tex, tey), source = cifar_arrays
    assert source in ("image_folder:cifar10-jpeg", "torchvision:cifar10") and "/" not in source
    full = load_dataset("cifar10", "cifar10", None, data_dir, cache_dir)
    assert full.num_classes == 10 and torch.bincount(full.train_y).tolist() == [5000] * 10
    assert torch.bincount(full.test_y).tolist() == [1000] * 10
    sub = load_dataset("cats_dogs", "cifar10", [5, 3], data_dir, cache_dir)  # dog = 0, cat = 1
    assert sub.num_classes == 2 and len(sub.train_y) == 10_000 and len(sub.test_y) == 2_000
    assert torch.equal((sub.train_x[sub.train_y == 0] * 255).round().to(torch.uint8),
                       torch.from_numpy(trx[try_ == 5]))
    assert torch.equal((sub.test_x[sub.test_y == 1] * 255).round().to(torch.uint8), torch.from_numpy(tex[tey == 3]))


def test_cifar10_labels_follow_the_class_folders(cifar_arrays, data_dir):
    (trx, try_, _, _), source = cifar_arrays
    if source != "image_folder:cifar10-jpeg":
        pytest.skip("CIFAR-10 came from torchvision's originals here")
    first_cat = sorted((data_dir / "cifar10-jpeg" / "train" / "cat").glob("*.jpg"))[0]
    with Image.open(first_cat) as im:
        cat = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(trx[np.flatnonzero(try_ == 3)[0]], cat)


# ---------------------------------------------------------------------------------------------
# the checked cache


def test_a_cache_with_the_wrong_counts_is_rebuilt(data_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    small = (rng.integers(0, 256, (100, 1, 28, 28), dtype=np.uint8), np.arange(100) % 10,
             rng.integers(0, 256, (50, 1, 28, 28), dtype=np.uint8), np.arange(50) % 10)
    np.savez(cache / f"fashion_mnist-v{CACHE_VERSION}.npz", train_x=small[0], train_y=small[1], test_x=small[2],
             test_y=small[3], source="torchvision:fashion_mnist", checksum=data_mod._checksum(small), fingerprint="")
    (trx, _, tex, _), source = load_arrays("fashion_mnist", data_dir, cache)
    assert trx.shape == (60_000, 1, 28, 28) and tex.shape == (10_000, 1, 28, 28)
    err = capsys.readouterr().err
    assert "holds 100 train / 50 test images" in err and "rebuilding it" in err and len(err.strip().splitlines()) == 1
    (trx2, *_), _ = load_arrays("fashion_mnist", data_dir, cache)  # the rebuilt cache is used as it is
    assert np.array_equal(trx, trx2) and capsys.readouterr().err == ""


def test_a_cache_failing_its_checksum_is_rebuilt(tmp_path, capsys):
    folder = tmp_path / "pets"
    make_folder(folder)
    (a, b, c, d), _ = load_arrays("image_folder", None, tmp_path / "cache", root=folder)
    cache = next((tmp_path / "cache").glob("image_folder-pets-*.npz"))
    with np.load(cache) as z:
        saved = {k: z[k] for k in z.files}
    saved["train_x"] = saved["train_x"].copy()
    saved["train_x"][0, 0, 0, 0] ^= 1  # one flipped bit
    np.savez(cache, **saved)
    (a2, *_), _ = load_arrays("image_folder", None, tmp_path / "cache", root=folder)
    assert np.array_equal(a, a2) and "fails its checksum; rebuilding it" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# data_source


def test_records_name_the_source_kind_and_dataset_not_a_path(cfg_small, tmp_path):
    from sharpcomp.engine.train import train
    from sharpcomp.results.records import read_metrics

    train(cfg_small, tmp_path / "run")  # loads the data itself, as a command does
    sources = set(read_metrics(tmp_path / "run").data_source)
    assert sources == {"torchvision:fashion_mnist"}


# ---------------------------------------------------------------------------------------------
# the command line: one line, exit 2, no traceback


def _cli_error(argv, capsys) -> tuple[int, str]:
    from sharpcomp.cli import main

    try:
        rc = main(argv)
    except SystemExit as ex:
        rc = ex.code
    return rc, capsys.readouterr().err.strip()


TINY_RUN = ["steps=2", "log_every=2", "metrics.n=2", "progress=false", "model=mlp4", "model.width=0.05"]


@pytest.mark.parametrize("args,message", [
    (["data=image_folder"], "data.root must name the image folder"),
    (["data=image_folder", "data.root=nowhere"], "image folder nowhere not found"),
    (["data=cifar10", "data.classes=[3,12]"], "class index 12 out of range: cifar10 has classes 0..9"),
    (["data=fashion_mnist", "data.normalize=maybe"], "data.normalize must be true or false"),
    (["data=fashion_mnist", "model=custom"], "needs model._target_"),
])
def test_cli_bad_data_settings_before_any_work(args, message, in_tmp, capsys):
    rc, err = _cli_error(["train", *TINY_RUN[:4], *args], capsys)
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (in_tmp / "outputs").exists()


def test_cli_bad_image_folder_and_damaged_file(in_tmp, capsys, monkeypatch):
    root = in_tmp / "pets"
    make_folder(root)
    (root / "test" / "cat" / "01.png").write_bytes(b"\x89PNG garbage")
    rc, err = _cli_error(["train", *TINY_RUN, "data=image_folder", "data.root=pets"], capsys)
    assert rc == 2 and f"cannot read image {root / 'test' / 'cat' / '01.png'}" in err and len(err.splitlines()) == 1

    make_idx_dataset(in_tmp / "data", "FashionMNIST")
    labels = in_tmp / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-2])
    monkeypatch.setenv("SHARPCOMP_DATA", str(in_tmp / "data"))
    monkeypatch.setenv("SHARPCOMP_CACHE", str(in_tmp / "cache"))
    rc, err = _cli_error(["train", *TINY_RUN, "data=fashion_mnist", "batch=4"], capsys)
    assert rc == 2 and f"data file {labels} is damaged" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("dataset,file", [("mnist", "MNIST/raw/train-images-idx3-ubyte"),
                                          ("cifar100", "cifar-100-python/train"),
                                          ("svhn", "SVHN/train_32x32.mat")])
def test_missing_dataset_names_where_it_looked(dataset, file, tmp_path):
    (tmp_path / "nodata").mkdir()
    with pytest.raises(DataError) as err:
        load_arrays(dataset, tmp_path / "nodata", tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"{dataset} data not found") and file in msg and str(tmp_path / "nodata") in msg
    assert "download skipped (SHARPCOMP_OFFLINE is set)" in msg and "\n" not in msg


def test_image_folder_trains_through_the_command_line(in_tmp, capsys):
    from sharpcomp.cli import main
    from sharpcomp.results.records import read_metrics

    make_folder(in_tmp / "pets", per_class=(6, 2), size=(10, 7))  # 7 x 10 images: vgg10 takes any size
    args = ["train", "data=image_folder", "data.root=pets", "data.name=pets", "model=vgg10", "model.width=0.25",
            "model.outputs=classes", "steps=4", "log_every=2", "metrics.n=4", "progress=false", "batch=6"]
    assert main(args) == 0
    rows = read_metrics(next((in_tmp / "outputs" / "runs").rglob("metrics.parquet")))
    assert (rows.data == "pets").all() and (rows.data_source == "image_folder:pets").all()
    assert (rows.outputs == 3).all() and sorted(rows.iteration) == [0, 2, 4] and (rows.status == "finished").all()


def test_own_data_config_through_the_searchpath(tmp_path):
    from tests.conftest import compose_train

    make_folder(tmp_path / "pets")
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "pets.yaml").write_text(
        f"defaults: [image_folder, _self_]\nname: pets\nroot: {tmp_path / 'pets'}\n")
    cfg = compose_train([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=pets", "data.classes=[2,1]"])
    assert (cfg.data.name, cfg.data.dataset, cfg.data.root) == ("pets", "image_folder", str(tmp_path / "pets"))
    assert cfg.steps == 10_000  # scale=quick reads the image_folder defaults
    ds = load_from_config(dict(cfg.data), None, tmp_path / "cache")
    assert ds.num_classes == 2 and ds.train_y.tolist() == [1, 1, 1, 0, 0, 0]


def test_n_train_keeps_the_first_training_images(tmp_path):
    root = tmp_path / "pets"
    make_folder(root)
    cfg = {"name": "pets", "dataset": "image_folder", "root": str(root)}
    full = load_from_config(cfg, None, tmp_path / "cache")
    few = load_from_config({**cfg, "n_train": 4}, None, tmp_path / "cache")
    assert torch.equal(few.train_x, full.train_x[:4]) and few.train_y.tolist() == full.train_y[:4].tolist()
    assert torch.equal(few.test_x, full.test_x)  # the test set is whole
    sub = load_from_config({**cfg, "classes": [2, 0], "n_train": 4}, None, tmp_path / "cache")
    assert sub.train_y.tolist() == [1, 1, 1, 0]  # after the class subset
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(DataError, match="data.n_train must be a positive integer or null"):
            check_data_config({**cfg, "n_train": bad})
    assert data_mod.identity_view({**cfg, "n_train": None}) == cfg  # null changes no run id
    assert data_mod.identity_view({**cfg, "n_train": 4})["n_train"] == 4
