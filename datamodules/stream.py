"""Freshly sampled training data, reproducible by seed.

The authors' "epoch" is a number of freshly sampled batches, not a pass over a dataset. Here a
training sample is a pure function of (seed, global index): the sampler hands out the indices of
epoch e, the dataset draws sample i from ``sample_rng(seed, i)``. Workers, ranks and resumed runs
therefore see exactly the stream an uninterrupted single-process run would.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


class StreamSampler(Sampler[int]):
    """Global sample indices of one epoch, this rank's share of them."""

    def __init__(self, samples_per_epoch: int, rank: int = 0, world_size: int = 1) -> None:
        self.samples_per_epoch = samples_per_epoch
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.samples_per_epoch * self.world_size
        stop = start + self.samples_per_epoch * self.world_size
        return iter(range(start + self.rank, stop, self.world_size))

    def __len__(self) -> int:
        return self.samples_per_epoch
