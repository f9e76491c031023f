"""tests/problems.py itself: every named problem builds, fresh and the same on every call, in float32 and
float64 (one problem in two precisions), and its variants route their changes where they belong."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests import problems
from tests.problems import PROBLEMS, Problem

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("problem", PROBLEMS.values(), ids=str)
def test_every_problem_builds_fresh_and_the_same_in_both_precisions(problem):
    assert PROBLEMS[problem.name] is problem and hash(problem) == hash(dataclasses.replace(problem))
    first, again = problem.make(), problem.make()
    assert first.model is not again.model and first.loss_fn is problem.loss_fn
    assert len(first.x) == problem.n and tuple(first.x.shape[1:]) == problem.shape and len(first.y) == problem.n
    assert _same(first.x, again.x) and _same(first.y, again.y)
    for (k, v), w in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert _same(v, w), k
    with torch.no_grad():
        out = first.model(first.x)
    assert out.shape == (problem.n, problem.outputs) and math.isfinite(float(first.loss_fn(out, first.y)))
    for dtype in (torch.float32, torch.float64):
        case = problem.make(dtype)
        assert case.x.dtype == dtype and all(p.dtype == dtype for p in case.model.parameters())
        assert _same(case.x, first.x.to(dtype))  # the same numbers, cast
        assert all(_same(p, q.to(dtype)) for p, q in zip(case.model.parameters(), first.model.parameters()))
        assert problem.model(dtype).training == case.model.training == first.model.training
    # the network alone draws what make() draws before the data
    torch.manual_seed(123)
    assert all(_same(p, q) for p, q in zip(problem.model().parameters(), first.model.parameters()))


def test_variants_and_members():
    v = problems.MLP_EVAL.variant(shape=(1, 6, 6), widths=(24, 24), n=10, generator=4)
    assert isinstance(v, Problem) and v.name == "mlp_eval[shape=(1, 6, 6),widths=(24, 24),n=10,generator=4]"
    assert dict(v.net_args)["widths"] == (24, 24) and dict(v.data_args)["generator"] == 4 and v.n == 10
    assert problems.MLP_EVAL.n == 5  # frozen: the original is untouched
    model, _, x, _ = v.make()
    assert model.fc1.in_features == 36 and x.shape == (10, 1, 6, 6)
    assert problems.RESIDUAL.variant("one_block", depth=1).name == "one_block"
    with pytest.raises(TypeError, match="no field or builder argument 'depth'"):
        problems.MLP_EVAL.variant(depth=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        problems.MLP_EVAL.n = 3
    a, b = problems.RESIDUAL_MLP.members(2)
    assert not torch.equal(a.fc1.weight, b.fc1.weight)
    assert torch.equal(a.fc1.weight, problems.RESIDUAL_MLP.model().fc1.weight)
