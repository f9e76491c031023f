"""The run's data order and its fixed metric sample set.

Both are functions of the seed alone, so a resumed run, or an ensemble training many runs in lockstep,
sees exactly the same batches.
"""

from __future__ import annotations

import torch


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the training set in one epoch (reshuffled every epoch)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=g)


def steps_per_epoch(n: int, batch: int) -> int:
    """Full batches per epoch; the last incomplete batch of an epoch is dropped."""
    return n // batch


def batch_indices(seed: int, iteration: int, n: int, batch: int) -> torch.Tensor:
    """Indices of the minibatch used at ``iteration`` (0-based)."""
    epoch, k = divmod(int(iteration), steps_per_epoch(n, batch))
    return epoch_permutation(seed, epoch, n)[k * batch:(k + 1) * batch]


def train_sample_indices(seed: int, n_train: int, n: int) -> torch.Tensor:
    """The fixed ``train`` metric sample set: n training points drawn once per run from its seed."""
    g = torch.Generator().manual_seed(int(seed) + 7_777_777)
    return torch.randperm(n_train, generator=g)[: min(n, n_train)].sort().values
