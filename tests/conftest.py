"""Shared fixtures: the train config composed once (as the CLI does), shrunk for tests, with outputs
isolated in tmp_path; the datasets loaded once for the whole test run into one cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.data.datasets import Dataset, default_data_dir, load_dataset
from sharpcomp.settings import compose

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="package")
def data_dir() -> Path:
    d = default_data_dir()
    if d is None or not d.is_dir():
        pytest.skip("dataset folder not found (set SHARPCOMP_DATA; `make test` sets it where the data is)")
    return d


@pytest.fixture(scope="package")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-array cache for the whole test run (SHARPCOMP_CACHE when set)."""
    env = os.environ.get("SHARPCOMP_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("sharpcomp-cache")


@pytest.fixture(scope="package")
def fmnist(data_dir, cache_dir) -> Dataset:
    return load_dataset("fashion_mnist", "fashion_mnist", None, data_dir, cache_dir)


@pytest.fixture(scope="package")
def fmnist_small(fmnist) -> Dataset:
    """1,000 train / 300 test Fashion-MNIST images: real data, small enough for many short runs."""
    return Dataset("fashion_mnist", fmnist.train_x[:1000].clone(), fmnist.train_y[:1000].clone(),
                   fmnist.test_x[:300].clone(), fmnist.test_y[:300].clone(), 10, fmnist.source)


def random_images(n_train: int, n_test: int, side: int = 28, name: str = "fashion_mnist",
                  device: torch.device | None = None) -> Dataset:
    """Fashion-MNIST-shaped random images (1 x side x side) and labels of 10 classes, seed 0: a stand-in
    dataset where the values do not matter."""
    g, device = torch.Generator().manual_seed(0), device or torch.device("cpu")
    xs = [torch.rand(n, 1, side, side, generator=g).to(device) for n in (n_train, n_test)]
    ys = [torch.randint(0, 10, (n,), generator=g).to(device) for n in (n_train, n_test)]
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], 10, "random")


def compose_train(overrides: list[str] | None = None):
    """The train config with ``overrides``, composed as the command line composes it."""
    return compose(overrides or [])


SHRINK = ["data=fashion_mnist", "model=mlp4", "model.width=0.2", "steps=12", "log_every=4", "metrics.n=8",
          "progress=false", "batch=16"]


@pytest.fixture
def cfg_small(tmp_path, data_dir, cache_dir):
    """The train config, shrunk: mlp4 at 1/5 width on Fashion-MNIST, 12 steps, checkpoints every 4."""
    cfg = compose_train(SHRINK)
    OmegaConf.set_struct(cfg, False)
    cfg.data_dir, cfg.cache_dir = str(data_dir), str(cache_dir)
    return cfg


@pytest.fixture(scope="module")
def one_thread():
    """Tiny float64 problems: one intra-op thread avoids oversubscription on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# CLI arguments of a tiny real run (mlp4 at 1/20 width on Fashion-MNIST, 4 steps)
TINY = ["data=fashion_mnist", "model=mlp4", "model.width=0.05", "steps=4", "log_every=2", "metrics.n=4",
        "progress=false"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, data_dir, cache_dir):
    """Run the CLI inside tmp_path, with the test run's data and cache folders."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHARPCOMP_DATA", str(data_dir))
    monkeypatch.setenv("SHARPCOMP_CACHE", str(cache_dir))
    return tmp_path


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory, data_dir, cache_dir) -> Path:
    """A finished run of ``TINY`` (checkpoints at 0, 2, 4), trained once by a real ``sharpcomp train``
    process (no environment change leaks into the tests); copy it before changing it."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("tiny-run")
    env = {**os.environ, "SHARPCOMP_DATA": str(data_dir), "SHARPCOMP_CACHE": str(cache_dir)}
    res = subprocess.run([sys.executable, "-m", "sharpcomp.cli", "train", *TINY, "hydra.run.dir=R"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return root / "R"
