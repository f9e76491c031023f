import numpy as np
import pytest
import torch

from sharpcomp.data.datasets import load_arrays, load_dataset
from sharpcomp.data.order import batch_indices, epoch_permutation, steps_per_epoch, train_sample_indices
from sharpcomp.data.sources import DataError


def test_fashion_mnist_as_spec(fmnist):
    assert fmnist.train_x.shape == (60_000, 1, 28, 28) and fmnist.test_x.shape == (10_000, 1, 28, 28)
    assert fmnist.train_x.dtype == torch.float32
    assert 0.0 <= fmnist.train_x.min() and fmnist.train_x.max() <= 1.0 and fmnist.train_x.max() > 0.99
    assert fmnist.num_classes == 10
    assert torch.bincount(fmnist.train_y).tolist() == [6000] * 10
    assert fmnist.source == "torchvision:fashion_mnist"  # the kind of source and the dataset, no local path


def test_cifar10_two_class(data_dir, cache_dir):
    ds = load_dataset("cifar10_2class", "cifar10", [0, 1], data_dir, cache_dir)
    assert ds.train_x.shape == (10_000, 3, 32, 32) and ds.test_x.shape == (2_000, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [5000, 5000]
    assert torch.bincount(ds.test_y).tolist() == [1000, 1000]
    assert ds.num_classes == 2 and 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    assert ds.source in ("image_folder:cifar10-jpeg", "torchvision:cifar10")  # recorded with the results
    # the cache holds the decoded arrays: a second load reads them back identically
    (trx, _, _, _), source = load_arrays("cifar10", data_dir, cache_dir)
    assert source == ds.source and trx.dtype == np.uint8 and trx.shape == (50_000, 3, 32, 32)


def test_missing_data_names_what_it_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPCOMP_OFFLINE", "1")
    empty = tmp_path / "nodata"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        load_arrays("fashion_mnist", empty, tmp_path / "cache")
    msg = str(err.value)
    assert str(empty) in msg and "train-images-idx3-ubyte" in msg and "\n" not in msg
    with pytest.raises(DataError, match="cifar10-jpeg"):
        load_arrays("cifar10", empty, tmp_path / "cache")


def test_batch_order_is_a_reshuffled_partition():
    n, b = 103, 10
    spe = steps_per_epoch(n, b)
    assert spe == 10  # the last incomplete batch is dropped
    epoch0 = torch.cat([batch_indices(5, i, n, b) for i in range(spe)])
    assert len(set(epoch0.tolist())) == spe * b
    epoch1 = torch.cat([batch_indices(5, spe + i, n, b) for i in range(spe)])
    assert not torch.equal(epoch0, epoch1)  # reshuffled every epoch
    assert torch.equal(batch_indices(5, 13, n, b), epoch_permutation(5, 1, n)[30:40])
    assert not torch.equal(epoch_permutation(5, 0, n), epoch_permutation(6, 0, n))


def test_train_sample_set_fixed_by_seed():
    a, b = train_sample_indices(1, 10_000, 100), train_sample_indices(1, 10_000, 100)
    assert torch.equal(a, b) and len(set(a.tolist())) == 100
    assert not torch.equal(a, train_sample_indices(2, 10_000, 100))
