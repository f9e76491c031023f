"""Matrix-free estimators against the exact engine: over many seeds the estimates scatter around the
exact values as their reported standard errors say (z-scores), power iteration converges to MLS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharpcomp.measures.study import estimators
from sharpcomp.measures.study.estimators import choose, estimate_metrics
from sharpcomp.measures.study.metrics import compute_metrics
from tests.problems import TANH_MLP_WIDE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_estimates_agree_with_the_exact_engine_within_their_standard_errors():
    model, _, x, _ = TANH_MLP_WIDE.make()
    exact = compute_metrics(model, x, dtype=torch.float64)
    z = {k: [] for k in ("sharpness", "G", "local_dim")}
    for seed in range(40):
        est = estimate_metrics(model, x, probes=16, power_iters=2, generator=torch.Generator().manual_seed(seed))
        for k in z:
            z[k].append((est[k] - exact[k]) / est[f"{k}_se"])
    for k, values in z.items():
        values = np.array(values)
        # z ~ N(0, 1): mean within ~4 standard errors of 0, mean square near 1, few beyond 3
        assert abs(values.mean()) < 4 / np.sqrt(len(values)) + 0.15, (k, values.mean())
        assert 0.4 < np.mean(values ** 2) < 2.2, (k, np.mean(values ** 2))
        assert np.mean(np.abs(values) > 3) <= 0.05, k


def test_standard_errors_shrink_like_one_over_sqrt_probes():
    model, _, x, _ = TANH_MLP_WIDE.make()
    se = [np.mean([estimate_metrics(model, x, probes=p, power_iters=1,
                                    generator=torch.Generator().manual_seed(s))["G_se"] for s in range(6)])
          for p in (8, 64)]
    assert se[1] / se[0] == pytest.approx(np.sqrt(8 / 64), rel=0.35)


def test_power_iteration_converges_to_mls_from_below():
    model, _, x, _ = TANH_MLP_WIDE.make()
    exact = compute_metrics(model, x, dtype=torch.float64)["mls"]
    rough = estimate_metrics(model, x, probes=2, power_iters=1)
    assert rough["mls"] <= exact * (1 + 1e-12)
    est = estimate_metrics(model, x, probes=2, power_iters=300)
    assert est["mls"] == pytest.approx(exact, rel=1e-8) and est["mls_err"] < 1e-5


def test_choose_and_bad_input(monkeypatch):
    model, _, x, _ = TANH_MLP_WIDE.make()
    assert choose(model, x) == "exact"
    monkeypatch.setattr(estimators, "EXACT_MAX_ENTRIES", 10)
    assert choose(model, x) == "estimate"
    with pytest.raises(ValueError, match="at least 2 probes"):
        estimate_metrics(model, x, probes=1)
