"""A user's own network, as a study would bring it: a small residual CNN with BatchNorm.

Built by sharpcomp through ``model=custom model._target_=tests.nets.SmallResNet``; it takes the
data's ``num_outputs`` and ``input_shape`` by name, and its own ``width`` and ``depth``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    def __init__(self, num_outputs: int = 10, input_shape=(1, 28, 28), width: int = 4, depth: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_outputs)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


def not_a_module(num_outputs: int = 10):
    """A callable that returns something other than an nn.Module."""
    return {"outputs": num_outputs}
