"""Giving a plain ``(x, y)`` dataset the dataset index (and noise flag) per example that the callbacks address."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


class WithIndex(Dataset):
    """Wrap a map-style dataset of ``(x, y)`` items so that item ``i`` is ``(x, y, i)`` or ``(x, y, i, noisy[i])``.

    :class:`~memo_callbacks.ExampleDynamics` and :class:`~memo_callbacks.LossSensitivity` address every per-example
    value by the example's dataset index, so their training batches must carry it; a plain
    ``torch.utils.data.DataLoader`` over ``WithIndex(dataset)`` yields ``[x, y, index]`` batches (``[x, y, index,
    noisy]`` with ``noisy``), which :func:`~memo_callbacks.utilities.unpack_batch` reads. The index is the position
    in the wrapped dataset, so a ``Subset`` or a shuffled or distributed sampler keeps it right.

    With ``noisy`` (one flag per example: which ones had their label or input corrupted) the callbacks split their
    measures into clean and noisy parts: ``ExampleDynamics`` reads the flags from the batches and
    ``LossSensitivity`` reads ``noisy_mask`` from the training dataloader's dataset (this wrapper) when there is no
    datamodule with one.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``) whose items are ``(x, y)`` pairs.
        noisy: ``[len(dataset)]`` booleans (or 0/1), or None when the data has no noise flags.

    Raises:
        TypeError: if ``dataset`` is not map-style, or ``noisy`` is not a sequence or tensor of booleans.
        ValueError: if ``noisy`` does not have one flag per example.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = WithIndex(TensorDataset(torch.randn(6, 4), torch.arange(6) % 2), noisy=[0, 0, 1, 0, 1, 0])
        >>> x, y, index, noisy = next(iter(DataLoader(data, batch_size=3)))
        >>> index.tolist(), noisy.tolist()
        ([0, 1, 2], [False, False, True])
    """

    def __init__(self, dataset: Any, noisy: Sequence[bool] | Tensor | None = None) -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                f"`dataset` must be a map-style dataset (with __getitem__ and __len__), got {type(dataset).__name__}"
            )
        n = len(dataset)
        mask = None
        if noisy is not None:
            try:
                mask = torch.as_tensor(noisy)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"`noisy` must be a sequence or tensor of booleans or None, got {noisy!r:.80}") from None
            if mask.dtype != torch.bool:
                if mask.is_floating_point() or mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
                    raise TypeError(f"`noisy` must hold booleans (or 0/1 integers), got values {mask.unique().tolist()[:5]}")
                mask = mask.bool()
            if mask.shape != (n,):
                raise ValueError(
                    f"`noisy` must have one flag per example of `dataset`, shape ({n},), got {tuple(mask.shape)}"
                )
            mask = mask.cpu().clone()
        self.dataset = dataset
        #: ``[N]`` bool noise flags, or None (read by the callbacks when there is no datamodule ``noisy_mask``).
        self.noisy_mask: Tensor | None = mask

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            got = f"{len(item)} items" if isinstance(item, (tuple, list)) else type(item).__name__
            raise TypeError(f"WithIndex needs dataset items that are (x, y) pairs, got {got} at index {index}")
        x, y = item
        index = int(index)
        if index < 0:  # dataset[-1]: report the position, as a sampler would
            index += len(self.dataset)
        if self.noisy_mask is None:
            return x, y, index
        return x, y, index, bool(self.noisy_mask[index])


def find_noisy_mask(trainer: Any) -> Tensor | None:
    """``[N]`` bool: ``trainer.datamodule.noisy_mask``, else the ``noisy_mask`` of the training dataloader's dataset
    (a :class:`WithIndex`), else None."""
    dm = getattr(trainer, "datamodule", None)
    mask = getattr(dm, "noisy_mask", None) if dm is not None else None
    if isinstance(mask, Tensor):
        return mask
    try:
        loader = trainer.train_dataloader
    except (AttributeError, RuntimeError):
        return None
    mask = getattr(getattr(loader, "dataset", None), "noisy_mask", None)
    return mask if isinstance(mask, Tensor) else None
