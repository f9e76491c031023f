"""What a measure is computed from at one checkpoint.

The network, its loss, the training points to draw from and the random generator every draw comes from.

A measure's ``compute(sample, settings)`` asks :class:`Sample` for its points; the draws happen in the
order the measures ask, from one generator, so a checkpoint's numbers depend only on its seed and on the
measures switched on:

* :meth:`Sample.subset`: ``n`` points drawn at random (a new subset at every checkpoint);
* :meth:`Sample.fixed`: the same ``n`` points at every checkpoint (the first ``n`` of one permutation drawn
  from a constant seed), so that a curve over training follows one matrix's evolution;
* :meth:`Sample.batches`: ``count`` disjoint random minibatches of ``size``; measures that pass the same
  ``share`` name and sizes get the same minibatches (the worst-case sharpness variants compare on them).

:class:`WholeSample` gives every measure all of its points instead (``sharpcomp reparam``, which
compares a network before and after a change on the same few points).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.param_space import Batch, LossFn

FIXED_SUBSET_SEED = 0


def fixed_subset(n_total: int, n: int) -> Tensor:
    """The indices of the same ``n`` training points at every checkpoint."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(FIXED_SUBSET_SEED))
    return perm[: min(int(n), n_total)]


def disjoint_batches(x: Tensor, y: Tensor, count: int, size: int, generator: torch.Generator | None) -> list[Batch]:
    """``count`` disjoint random minibatches of ``size`` (as many as fit, at least one)."""
    n = x.shape[0]
    size = max(1, min(int(size), n))
    count = max(1, min(int(count), n // size))
    idx = torch.randperm(n, generator=generator)[: count * size].view(count, size)
    return [(x[i], y[i]) for i in idx]


@dataclass
class Sample:
    """The network, its loss and the training points a checkpoint's measures draw from.

    ``batch_size``: the run's minibatch size (the default of measures defined over minibatches of
    training); ``generator``: where every random choice comes from (None: torch's global generator);
    ``shared``: what one measure leaves for the next at the same checkpoint (the study's S for the
    network-wide bounds, the minibatches of the worst-case variants); ``initial``: a function returning the
    network at initialisation (the training engine rebuilds it from the run's seed), for measures relative to
    it, or None where it is not known.
    """

    model: nn.Module
    loss_fn: LossFn
    x: Tensor
    y: Tensor
    generator: torch.Generator | None = None
    batch_size: int | None = None
    shared: dict = field(default_factory=dict, repr=False)
    initial: Callable[[], nn.Module] | None = field(default=None, repr=False)

    def subset(self, n: int | None) -> Batch:
        """``n`` points drawn at random (all of them, in a random order, for None)."""
        perm = torch.randperm(self.x.shape[0], generator=self.generator)
        idx = perm if n is None else perm[: min(int(n), self.x.shape[0])]
        return self.x[idx], self.y[idx]

    def fixed(self, n: int) -> Batch:
        """The same ``n`` points at every checkpoint."""
        idx = fixed_subset(self.x.shape[0], n)
        return self.x[idx], self.y[idx]

    def batches(self, count: int, size: int | None, share: str | None = None) -> list[Batch]:
        """``count`` disjoint random minibatches of ``size`` (None: the run's batch size)."""
        size = int(size if size is not None else (self.batch_size or self.x.shape[0]))
        if share is None:
            return disjoint_batches(self.x, self.y, count, size, self.generator)
        key = (share, int(count), size)
        if key not in self.shared:
            self.shared[key] = disjoint_batches(self.x, self.y, count, size, self.generator)
        return self.shared[key]


class WholeSample(Sample):
    """A sample whose measures all use every point.

    Subsets are the whole sample, and minibatches are the whole sample as one batch (``count`` 1) or up to
    five interleaved parts of it.
    """

    def subset(self, n: int | None) -> Batch:
        """Every point."""
        return self.x, self.y

    def fixed(self, n: int) -> Batch:
        """Every point."""
        return self.x, self.y

    def batches(self, count: int, size: int | None, share: str | None = None) -> list[Batch]:
        """The whole sample as one batch (``count`` 1), else up to five interleaved parts of it."""
        if int(count) == 1:
            return [(self.x, self.y)]
        k = max(2, min(5, self.x.shape[0]))
        return [(self.x[i::k], self.y[i::k]) for i in range(k) if len(self.x[i::k])]
