"""Pieces the callbacks share: batch unpacking, state preservation, exact cross-rank sums, TensorBoard access and
index-carrying datasets."""

from memo_callbacks.utilities.batch import BatchAdapter, ParsedBatch, unpack_batch
from memo_callbacks.utilities.distributed import all_reduce_sum, rank_shard
from memo_callbacks.utilities.files import callback_dir, check_plain_name, unclaimed_path
from memo_callbacks.utilities.state import preserved_state
from memo_callbacks.utilities.tensorboard import (
    add_epoch_layout,
    epoch_tag,
    find_tensorboard,
    log_epoch_histogram,
    log_epoch_scalars,
)
from memo_callbacks.utilities.with_index import WithIndex, find_noisy_mask

__all__ = [
    "BatchAdapter",
    "ParsedBatch",
    "WithIndex",
    "add_epoch_layout",
    "all_reduce_sum",
    "callback_dir",
    "check_plain_name",
    "epoch_tag",
    "find_noisy_mask",
    "find_tensorboard",
    "log_epoch_histogram",
    "log_epoch_scalars",
    "preserved_state",
    "rank_shard",
    "unclaimed_path",
    "unpack_batch",
]
