"""Pieces the callbacks share: batch unpacking, state preservation, exact cross-rank sums, TensorBoard access."""

from memo_callbacks.utilities.batch import BatchAdapter, ParsedBatch, unpack_batch
from memo_callbacks.utilities.distributed import all_reduce_sum, rank_shard
from memo_callbacks.utilities.files import callback_dir, check_plain_name, unclaimed_path
from memo_callbacks.utilities.state import preserved_state
from memo_callbacks.utilities.tensorboard import find_tensorboard

__all__ = [
    "BatchAdapter",
    "ParsedBatch",
    "all_reduce_sum",
    "callback_dir",
    "check_plain_name",
    "find_tensorboard",
    "preserved_state",
    "rank_shard",
    "unclaimed_path",
    "unpack_batch",
]
