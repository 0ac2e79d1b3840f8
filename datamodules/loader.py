"""A dataloader for datasets held as one tensor: batches are made by indexing, not by per-example transforms.

Lightning passes any iterable through untouched (it only rewires :class:`torch.utils.data.DataLoader`), so this
loader shards itself across DDP ranks, and exposes a ``sampler`` with ``set_epoch`` that the Trainer calls each
epoch, exactly as it does for a :class:`~torch.utils.data.DistributedSampler`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from datamodules.checks import check_bool, check_int, check_seed
from datamodules.noise import generator_from_seed


class NoisyBatch(NamedTuple):
    """One batch of a noisy dataset. A plain tuple, so ``x, y, index, noisy = batch`` works.

    Attributes:
        x: ``[B, C, H, W]`` inputs in model units (normalised when the datamodule normalises).
        y: ``[B]`` labels as trained on (corrupted where ``noisy``).
        index: ``[B]`` the examples' indices in the training (or validation) set.
        noisy: ``[B]`` bool, True where the example was corrupted.
    """

    x: Tensor
    y: Tensor
    index: Tensor
    noisy: Tensor


class IndexSampler:
    """The order of one rank's examples in one epoch: a seeded permutation, identical on every rank, then sharded.

    With ``pad=True`` every rank gets ``ceil(N / world_size)`` indices (the first ones repeated), as
    :class:`~torch.utils.data.DistributedSampler` does, so that all ranks run the same number of steps; with
    ``pad=False`` the shards are disjoint and cover the data exactly once (use it for evaluation).
    """

    def __init__(
        self, num_examples: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        num_examples = check_int(num_examples, "num_examples", minimum=0)
        check_bool(shuffle, "shuffle")
        check_bool(pad, "pad")
        seed = check_seed(seed)
        world_size = check_int(world_size, "world_size", minimum=1)
        rank = check_int(rank, "rank", minimum=0)
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size={world_size}), got {rank}")
        self.num_examples = num_examples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.num_examples / self.world_size)
        return len(range(self.rank, self.num_examples, self.world_size))

    def indices(self) -> Tensor:
        if self.shuffle:
            order = torch.randperm(self.num_examples, generator=generator_from_seed(self.seed, "order", self.epoch))
        else:
            order = torch.arange(self.num_examples)
        if self.pad and self.world_size > 1:
            total = len(self) * self.world_size
            order = torch.cat([order, order[: total - self.num_examples]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class TensorBatchLoader:
    """Yields :class:`NoisyBatch` es from tensors held in memory (CPU or GPU).

    Args:
        x: ``[N, ...]`` inputs.
        y: ``[N]`` labels.
        noisy: ``[N]`` bool corruption mask.
        batch_size: examples per batch.
        sampler: the :class:`IndexSampler` that orders and shards the examples.
        drop_last: drop the last incomplete batch.
    """

    #: Lightning's evaluation loop reads ``batch_sampler`` of any loader with a ``sampler`` (to warn about shuffled
    #: validation data); None sends it to ``sampler``, as for a :class:`~torch.utils.data.DataLoader` without one.
    batch_sampler = None

    def __init__(
        self, x: Tensor, y: Tensor, noisy: Tensor, batch_size: int, sampler: IndexSampler, drop_last: bool = False
    ) -> None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        check_bool(drop_last, "drop_last")
        if not isinstance(sampler, IndexSampler):
            raise TypeError(f"`sampler` must be an IndexSampler, got {type(sampler).__name__}")
        for name, t in (("x", x), ("y", y), ("noisy", noisy)):
            if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[0] != sampler.num_examples:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"`{name}` must be a tensor with the sampler's {sampler.num_examples} rows, got {got}")
        self.x, self.y, self.noisy = x, y, noisy
        self.batch_size = batch_size
        self.sampler = sampler
        self.drop_last = drop_last
        self._resume: tuple[int, int] | None = None  # (epoch, batches already done in it)

    def resume_at(self, batches_done: int, epoch: int | None = None) -> None:
        """Make passes over ``epoch`` (default: the sampler's current one) start after its first ``batches_done``
        batches, until one such pass has run to its end or another epoch is iterated: how a run resumed from a
        mid-epoch checkpoint sees exactly the batches it had not trained on yet."""
        if batches_done < 0:
            raise ValueError(f"`batches_done` must be >= 0, got {batches_done}")
        self._resume = (self.sampler.epoch if epoch is None else epoch, batches_done) if batches_done else None

    @property
    def dataset_size(self) -> int:
        return self.x.shape[0]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[NoisyBatch]:
        return self._batches()

    def _first_batch(self) -> int:
        """Where this pass starts: after the batches a mid-epoch checkpoint had done, in the epoch it was taken."""
        if self._resume is None:
            return 0
        epoch, done = self._resume
        if epoch == self.sampler.epoch:
            return done
        if self.sampler.epoch > epoch:
            self._resume = None  # a later epoch starts from its first batch
        return 0

    def _batches(self) -> Iterator[NoisyBatch]:
        # A generator: nothing below runs before the first `next`. Lightning creates a restored loader's iterator
        # before it calls `sampler.set_epoch` for the resumed epoch, so the epoch (the order, and whether the
        # resume point applies) must be read here, when the first batch is drawn, not in `__iter__`.
        first = self._first_batch()
        order = self.sampler.indices().to(self.x.device)
        stop = len(self) * self.batch_size
        for start in range(first * self.batch_size, min(stop, order.numel()), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield NoisyBatch(self.x[idx], self.y[idx], idx, self.noisy[idx])
        if first:
            self._resume = None  # the resumed epoch has been completed
