"""Long metric work is not silent: a warning with the number of backward passes and the time they take
(projected from those measured) for a large N, a progress bar over the passes, and a line saying why
log_volume is -inf."""

from __future__ import annotations

import math
import re
import time
import warnings

import pytest
import torch

from sharpcomp.measures.study import metrics
from sharpcomp.measures.study.metrics import compute_metrics
from tests.problems import MLP_N_OUTPUTS


def test_large_n_warns_with_the_cost(monkeypatch):
    monkeypatch.setattr(metrics, "LARGE_OUTPUTS", 4)
    monkeypatch.setattr(metrics, "ESTIMATE_AFTER", 0.0, raising=False)
    with pytest.warns(RuntimeWarning, match=r"N = 5 outputs of the network: 15 backward passes over 3 samples, "
                                             r"about [0-9.e+-]+ s \(projected from the first \d+;"):
        model, _, x, _ = MLP_N_OUTPUTS.variant(outputs=5).make()
        compute_metrics(model, x, chunk_size=1, log_volume_rank=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _, x, _ = MLP_N_OUTPUTS.variant(outputs=4).make()
        compute_metrics(model, x, log_volume_rank=2)  # N at the threshold: no warning


def test_progress_counts_every_backward_pass(monkeypatch):
    seen = []

    class Bar:
        def __init__(self, total, **kw):
            seen.append(["total", total, kw["delay"]])

        def update(self, k):
            seen.append(k)

        def close(self):
            seen.append("closed")

    monkeypatch.setattr(metrics, "tqdm", Bar)
    model, _, x, _ = MLP_N_OUTPUTS.variant(outputs=3, n=5).make()
    compute_metrics(model, x, chunk_size=2)
    assert seen[0] == ["total", 9, metrics.PROGRESS_AFTER] and sum(seen[1:-1]) == 9 and seen[-1] == "closed"


def test_minus_infinite_log_volume_says_why():
    x = torch.rand(4, 6, dtype=torch.float64)
    net = MLP_N_OUTPUTS.variant(outputs=8).model(torch.float64)
    ranks = [int(torch.linalg.matrix_rank(torch.autograd.functional.jacobian(lambda v: net(v[None])[0], xi)))
             for xi in x]  # brute force: rank of J_i (8 x 6): at most M = 6, and the active hidden units
    text = f"{min(ranks)}" if min(ranks) == max(ranks) else f"{min(ranks)}..{max(ranks)}"
    with pytest.warns(RuntimeWarning) as caught:
        res = compute_metrics(net, x, dtype=torch.float64)
    assert res["log_volume"] == -math.inf
    assert str(caught[0].message) == (
        f"log_volume = -inf: 4 of 4 samples have a zero eigenvalue among the 8 kept (K_i = J_i J_i^T of rank "
        f"{text}; N = 8 outputs > M = 6 inputs); log_volume_rank={min(ranks)} keeps only non-zero eigenvalues")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rank it suggests: finite, no warning
        assert math.isfinite(compute_metrics(net, x, dtype=torch.float64, log_volume_rank=min(ranks))["log_volume"])


@pytest.mark.parametrize("outputs, n, chunk", [(400, 50, None), (300, 120, 40)])
def test_the_time_warned_is_the_time_it_takes(monkeypatch, outputs, n, chunk):
    """The time in the warning is projected from backward passes measured during the call, so it is the
    time the call takes, within a factor 3 on a shared CPU (a projection from a single sample's forward
    pass once warned of 208 s for a call of 29 s)."""
    monkeypatch.setattr(metrics, "LARGE_OUTPUTS", 16)
    monkeypatch.setattr(metrics, "ESTIMATE_AFTER", 0.0, raising=False)
    model, _, x, _ = MLP_N_OUTPUTS.variant(outputs=outputs, n=n).make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compute_metrics(model, x[:2], log_volume_rank=2)  # warm-up: first calls pay for loading kernels
    with pytest.warns(RuntimeWarning, match=r"about \d+") as caught:
        t0 = time.perf_counter()
        compute_metrics(model, x, chunk_size=chunk, log_volume_rank=2)
        took = time.perf_counter() - t0
    (warned,) = [w for w in caught if "backward passes" in str(w.message)]
    seconds = float(re.search(r"about ([0-9.e+-]+) s", str(warned.message))[1])
    assert took / 3 <= max(seconds, 0.5) and seconds <= 3 * max(took, 0.5), (seconds, took)
