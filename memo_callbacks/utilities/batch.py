"""Reading inputs, labels, dataset indices and noise flags out of whatever a dataloader yields."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from torch import Tensor


class ParsedBatch(NamedTuple):
    """A batch as the callbacks see it. ``index`` and ``noisy`` are None when the batch does not carry them."""

    x: Tensor
    y: Tensor
    index: Tensor | None = None
    noisy: Tensor | None = None


#: A user function that turns one of their batches into a :class:`ParsedBatch`.
BatchAdapter = Callable[[Any], ParsedBatch]

_X_KEYS = ("x", "input", "inputs", "image", "images", "data")
_Y_KEYS = ("y", "target", "targets", "label", "labels")
_INDEX_KEYS = ("index", "indices", "idx")
_NOISY_KEYS = ("noisy", "is_noisy", "corrupted")


def _first(batch: Mapping, keys: Sequence[str]) -> Any:
    for k in keys:
        if k in batch:
            return batch[k]
    return None


def unpack_batch(batch: Any, adapter: BatchAdapter | None = None) -> ParsedBatch:
    """Read ``(x, y[, index[, noisy]])`` from a batch.

    Understands tuples and lists of 2 to 4 tensors (``(x, y)``, ``(x, y, index)``, ``(x, y, index, noisy)``, which
    includes :class:`datamodules.NoisyBatch`) and dicts with keys among ``x/input/inputs/image/images/data``,
    ``y/target/targets/label/labels``, ``index/indices/idx`` and ``noisy/is_noisy/corrupted``. Anything else needs an
    ``adapter``.

    Raises:
        TypeError: when the batch has none of these forms; the message says how to pass an adapter.
    """
    if adapter is not None:
        parsed = adapter(batch)
        if not isinstance(parsed, ParsedBatch):
            raise TypeError(f"`batch_adapter` must return a ParsedBatch, got {type(parsed).__name__}")
        return parsed
    if isinstance(batch, Mapping):
        x, y = _first(batch, _X_KEYS), _first(batch, _Y_KEYS)
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            return ParsedBatch(x, y, _first(batch, _INDEX_KEYS), _first(batch, _NOISY_KEYS))
    elif isinstance(batch, (tuple, list)) and 2 <= len(batch) <= 4 and all(isinstance(t, Tensor) for t in batch):
        return ParsedBatch(*batch)
    raise TypeError(
        f"cannot read inputs and labels from a batch of type {type(batch).__name__} "
        f"({_describe(batch)}); expected (x, y), (x, y, index), (x, y, index, noisy) or a dict with 'x' and 'y'. "
        "Pass `batch_adapter=lambda batch: ParsedBatch(x, y, index, noisy)` to the callback for other formats."
    )


def _describe(batch: Any) -> str:
    if isinstance(batch, Mapping):
        return f"keys {sorted(map(str, batch))}"
    if isinstance(batch, (tuple, list)):
        return f"{len(batch)} items of types {[type(t).__name__ for t in batch]}"
    return repr(batch)[:80]
