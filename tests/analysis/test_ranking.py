"""The ranking statistics against a hand-computed grid, scipy's Kendall tau and brute-force loops over pairs, and
planted measures: one equal to the target, random ones."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
from scipy.stats import kendalltau

from sharpcomp.analysis.ranking import ALL, Statistics, coefficients, pairs_of

# ---- a grid small enough to compute by hand ----------------------------------------------------------------
# two axes a, b at values 0/1, one run per configuration: runs (a, b) = (0,0), (1,0), (0,1), (1,1); the target
# g grows with the run's index; mu1 agrees on every single-axis pair and disagrees on the pair (1,0)-(0,1);
# mu2 ties on the pair (0,0)-(1,0).
CODES = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
G = np.array([0.1, 0.2, 0.3, 0.4])
MU = np.array([[1.0, 1.0], [3.0, 1.0], [2.0, 2.0], [5.0, 0.0]])


def h(p: float) -> float:
    """The entropy (nats) of a two-valued variable."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_the_hand_computed_grid():
    out = coefficients(MU, G, pairs_of(CODES))
    # sign products of the six pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3): mu1 +,+,+,-,+,+; mu2 0,+,-,+,-,-
    np.testing.assert_allclose(out[("kendall", ALL)], [4 / 6, -1 / 6])
    # psi_a: groups b=0 {(0,1)} and b=1 {(2,3)}; psi_b: groups a=0 {(0,2)} and a=1 {(1,3)}
    np.testing.assert_allclose(out[("granulated", 0)], [1.0, (0 - 1) / 2])
    np.testing.assert_allclose(out[("granulated", 1)], [1.0, (1 - 1) / 2])
    np.testing.assert_allclose(out[("granulated", ALL)], [1.0, -0.25])
    # environments: the four single-axis pairs; mu2's errors 1/2 (tie), 1, 0, 1
    np.testing.assert_allclose(out[("sign_error_mean", ALL)], [0.0, 2.5 / 4])
    np.testing.assert_allclose(out[("sign_error_max", ALL)], [0.0, 1.0])
    np.testing.assert_allclose(out[("sign_error_mean", 0)], [0.0, 0.75])
    np.testing.assert_allclose(out[("sign_error_mean", 1)], [0.0, 0.5])
    # CMI of mu1 (two axes: one conditioned on). Given a: the cells (0,0), (1,1) (2 ordered pairs each) hold
    # V_mu = V_g, I = H = log 2; the cells (0,1), (1,0) (4 each) have a constant V_mu, I = 0, and V_g at 3:1,
    # H = h(1/4). Given b: the cells (0,0), (1,1) again I = H = log 2; in (0,1), (1,0) V_g is constant: H = 0.
    k_a = (4 / 12 * math.log(2)) / (4 / 12 * math.log(2) + 8 / 12 * h(0.25))
    assert out[("cmi", (0,))][0] == pytest.approx(k_a, rel=1e-12)
    assert out[("cmi", (1,))][0] == pytest.approx(1.0, rel=1e-12)
    assert out[("cmi", ALL)][0] == pytest.approx(k_a, rel=1e-12)


def test_kendall_is_scipys_tau_b_without_ties_and_tau_a_with_them():
    rng = np.random.default_rng(0)
    n = 30
    codes = rng.integers(0, 3, size=(n, 2))
    x, y = rng.normal(size=n), rng.normal(size=n)
    tau = coefficients(x[:, None], y, pairs_of(codes))[("kendall", ALL)][0]
    assert tau == pytest.approx(kendalltau(x, y).statistic, rel=1e-12)
    xt, yt = rng.integers(0, 4, size=n).astype(float), rng.integers(0, 5, size=n).astype(float)
    n0 = n * (n - 1) / 2
    ties = lambda v: sum(c * (c - 1) / 2 for c in np.unique(v, return_counts=True)[1])  # noqa: E731
    expected = kendalltau(xt, yt).statistic * math.sqrt((n0 - ties(xt)) * (n0 - ties(yt))) / n0
    assert coefficients(xt[:, None], yt, pairs_of(codes))[("kendall", ALL)][0] == pytest.approx(expected, rel=1e-12)


# ---- brute force: every statistic by loops over the pairs of an incomplete grid with seeds --------------------


def _grid(seed: int, drop: int = 5):
    """Three axes (2, 3, 2 values), two seeds, ``drop`` runs removed at random; target and 3 measures random."""
    rng = np.random.default_rng(seed)
    codes = np.array([c for c in itertools.product(range(2), range(3), range(2)) for _ in range(2)])
    codes = np.delete(codes, rng.choice(len(codes), drop, replace=False), axis=0)
    n = len(codes)
    mu = np.column_stack([rng.normal(size=n), rng.integers(0, 3, size=n), rng.normal(size=n)])
    return codes, mu, np.round(rng.normal(size=n), 1), rng.integers(0, 3, size=n).astype(float)


def brute(codes, mu, g, w, size):
    """Every coefficient by loops, weights by copies: run r taken w_r times, pairs only between distinct runs."""
    copies = [r for r in range(len(g)) for _ in range(int(w[r]))]
    sgn = lambda v: int(v > 0) - int(v < 0)  # noqa: E731
    pairs = [(r, s) for x, r in enumerate(copies) for s in copies[x + 1:] if r != s]
    out = {}
    for k in range(mu.shape[1]):
        s = {(r, t): sgn(mu[r, k] - mu[t, k]) * sgn(g[r] - g[t]) for r, t in pairs}
        out[("kendall", ALL, k)] = np.mean([s[p] for p in pairs])
        single = [(r, t) for r, t in pairs if (codes[r] != codes[t]).sum() == 1]
        groups, envs = defaultdict(list), defaultdict(list)
        for r, t in single:
            a = int(np.nonzero(codes[r] != codes[t])[0][0])
            rest = tuple(np.delete(codes[r], a))
            groups[(a, rest)].append(s[(r, t)])
            envs[(a, rest, min(codes[r][a], codes[t][a]), max(codes[r][a], codes[t][a]))].append((1 - s[(r, t)]) / 2)
        psi = {a: np.mean([np.mean(v) for key, v in groups.items() if key[0] == a]) for a in range(codes.shape[1])}
        out.update({("granulated", a, k): v for a, v in psi.items()})
        out[("granulated", ALL, k)] = np.mean(list(psi.values()))
        errs = {key: np.mean(v) for key, v in envs.items()}
        out[("sign_error_mean", ALL, k)] = np.mean(list(errs.values()))
        out[("sign_error_max", ALL, k)] = max(errs.values())
        for a in range(codes.shape[1]):
            mine = [e for key, e in errs.items() if key[0] == a]
            out[("sign_error_mean", a, k)], out[("sign_error_max", a, k)] = np.mean(mine), max(mine)
        cmis = [brute_cmi(codes, mu[:, k], g, pairs, subset) for subset in itertools.combinations(range(3), size)]
        out[("cmi", ALL, k)] = min(cmis)
    return out


def brute_cmi(codes, m, g, pairs, subset):
    """I(V_mu; V_g | U_S) / H(V_g | U_S) from counts of the ordered pairs, by dictionaries."""
    count = defaultdict(float)
    for r, t in pairs + [(t, r) for r, t in pairs]:
        u = (tuple(codes[r][list(subset)]), tuple(codes[t][list(subset)]))
        count[(u, np.sign(g[r] - g[t]), np.sign(m[r] - m[t]))] += 1
    total = sum(count.values())
    cells = {u for u, _, _ in count}
    info = ent = 0.0
    for u in cells:
        n_u = sum(v for (c, _, _), v in count.items() if c == u)
        pg = defaultdict(float)
        pm = defaultdict(float)
        for (c, a, b), v in count.items():
            if c == u:
                pg[a] += v / n_u
                pm[b] += v / n_u
        for (c, a, b), v in count.items():
            if c == u:
                info += n_u / total * (v / n_u) * math.log((v / n_u) / (pg[a] * pm[b]))
        ent -= n_u / total * sum(p * math.log(p) for p in pg.values())
    return info / ent


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("weighted", [False, True])
def test_every_statistic_matches_loops_over_the_pairs(seed, weighted):
    codes, mu, g, w = _grid(seed)
    w = w if weighted else np.ones(len(g))
    stats = Statistics(mu, g, pairs_of(codes, size=2))(w)
    want = brute(codes, mu, g, w, 2)
    for (name, axis, k), value in want.items():
        assert stats[(name, axis)][k] == pytest.approx(value, rel=1e-12, abs=1e-14), (name, axis, k)


def test_one_statistics_object_serves_every_weighting():
    codes, mu, g, w = _grid(3)
    stats = Statistics(mu, g, pairs_of(codes))
    for key, value in coefficients(mu, g, pairs_of(codes), w).items():
        np.testing.assert_array_equal(stats(w)[key], value)


# ---- planted measures ---------------------------------------------------------------------------------------


def _full_grid(seed: int):
    """Three axes at 3, 2, 2 values, two seeds each: 24 runs, a target that depends on the axes and noise."""
    rng = np.random.default_rng(seed)
    codes = np.array([c for c in itertools.product(range(3), range(2), range(2)) for _ in range(2)])
    g = codes @ np.array([0.3, -0.2, 0.1]) + rng.normal(0, 0.05, len(codes))
    return codes, g, rng


def test_a_measure_equal_to_the_target_ranks_perfectly():
    codes, g, _ = _full_grid(0)
    out = coefficients(np.column_stack([g, 3 * g + 1]), g, pairs_of(codes))
    for key in [("kendall", ALL), ("granulated", ALL), ("cmi", ALL), *[("granulated", a) for a in range(3)]]:
        np.testing.assert_allclose(out[key], 1.0, rtol=1e-12)
    for key in [("sign_error_mean", ALL), ("sign_error_max", ALL), ("sign_error_max", 1)]:
        np.testing.assert_array_equal(out[key], 0.0)


def test_random_measures_rank_near_zero_and_chance():
    codes, g, rng = _full_grid(1)
    mu = rng.normal(size=(len(g), 400))  # 400 measures that know nothing of the runs
    out = coefficients(mu, g, pairs_of(codes))
    tau, psi = out[("kendall", ALL)], out[("granulated", ALL)]
    # tau of independent orders: mean 0, variance 2 (2n + 5) / (9 n (n - 1))
    n = len(g)
    assert abs(tau.mean()) < 4 * math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)) / len(tau))
    assert tau.std() == pytest.approx(math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))), rel=0.15)
    assert abs(psi.mean()) < 0.03 and abs(out[("sign_error_mean", ALL)].mean() - 0.5) < 0.015
    # the plug-in estimate of a mutual information is biased upwards on a finite grid: small, not zero
    assert 0 < out[("cmi", ALL)].mean() < 0.1
