"""Exact cross-rank sums: state is sums and counts, reduced with ``sum`` on every rank, divided once at the end."""

from __future__ import annotations

import torch
from torch import Tensor


def all_reduce_sum(trainer, tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks through the Trainer's strategy (a no-op on one process).

    Must be called on every rank (it is a collective). Works for any dtype: integer and bool tensors are summed
    exactly (as int64), floating tensors in float64, then cast back to the input's dtype (bool becomes int64).
    """
    if trainer is None or trainer.world_size == 1:
        return tensor.long() if tensor.dtype == torch.bool else tensor
    device = trainer.strategy.root_device
    # A copy: the collective reduces in place, and the caller's tensor must stay this rank's own.
    work = tensor.to(device, torch.float64 if tensor.is_floating_point() else torch.int64, copy=True)
    out = trainer.strategy.reduce(work, reduce_op="sum")
    dtype = torch.int64 if tensor.dtype == torch.bool else tensor.dtype
    return out.to(tensor.device, dtype)


def rank_shard(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's disjoint share of ``indices`` (strided, no padding): every element on exactly one rank."""
    return indices[rank::world_size]
