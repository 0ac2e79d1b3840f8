"""Finding the TensorBoard writer among the Trainer's loggers, and writing epoch-level measurements against the epoch.

Lightning logs what a callback reports with ``pl_module.log(..., on_epoch=True)`` at the *global step*, so the
curves of two runs with different batch sizes (or an epoch-level measure next to the paper's figures, drawn against
the epoch) cannot be compared on TensorBoard's x axis. :func:`log_epoch_scalars` writes the same values a second time
under ``by_epoch/<tag>`` with ``step = epoch``, and :func:`add_epoch_layout` adds a "Custom Scalars" dashboard that
groups them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

#: The section under which :func:`log_epoch_scalars` writes: ``by_epoch/csr/val`` holds ``csr/val`` against the epoch.
EPOCH_PREFIX = "by_epoch"

_layouts: weakref.WeakKeyDictionary[Any, dict[str, dict[str, list[str]]]] = weakref.WeakKeyDictionary()
_layouts_lock = threading.Lock()


def find_tensorboard(trainer) -> Any | None:
    """The ``SummaryWriter`` of the Trainer's first TensorBoard logger, or None if it has none."""
    from pytorch_lightning.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def epoch_tag(tag: str) -> str:
    """The tag under which ``tag`` is written against the epoch: ``"csr/val"`` -> ``"by_epoch/csr/val"``."""
    return f"{EPOCH_PREFIX}/{tag}"


def log_epoch_scalars(trainer, metrics: Mapping[str, float | Tensor], epoch: int) -> dict[str, float]:
    """Write each scalar of ``metrics`` to TensorBoard as ``by_epoch/<tag>`` at ``step=epoch``.

    Only the global-zero process writes (the callbacks call this after their cross-rank reductions, so every rank
    holds the same values); without a TensorBoard logger nothing is written. Values are written as given, NaN
    included, so the epoch axis holds exactly what the step axis holds.

    Args:
        trainer: the Trainer whose TensorBoard logger is written to.
        metrics: tag -> value (a python number or a one-element tensor).
        epoch: the x coordinate, normally ``trainer.current_epoch``.

    Returns:
        What was written: ``{"by_epoch/<tag>": value}`` (empty on other ranks or without a TensorBoard logger).

    Example:
        >>> log_epoch_scalars(trainer, {"csr/val": 0.12}, epoch=trainer.current_epoch)  # doctest: +SKIP
        {'by_epoch/csr/val': 0.12}
    """
    if not trainer.is_global_zero:
        return {}
    writer = find_tensorboard(trainer)
    if writer is None:
        return {}
    written: dict[str, float] = {}
    for tag, value in metrics.items():
        value = float(value.item() if isinstance(value, Tensor) else value)
        writer.add_scalar(epoch_tag(tag), value, global_step=int(epoch))
        written[epoch_tag(tag)] = value
    return written


def log_epoch_histogram(trainer, tag: str, values: Tensor, epoch: int) -> bool:
    """Write a histogram of ``values`` to TensorBoard as ``by_epoch/<tag>`` at ``step=epoch`` (global zero only).

    Non-finite values are dropped; an empty tensor writes nothing. Returns whether a histogram was written.
    """
    if not trainer.is_global_zero:
        return False
    writer = find_tensorboard(trainer)
    if writer is None:
        return False
    values = values.detach().flatten().double().cpu()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return False
    writer.add_histogram(epoch_tag(tag), values, global_step=int(epoch))
    return True


def add_epoch_layout(trainer, category: str, charts: Mapping[str, Sequence[str]]) -> None:
    """Add charts of ``by_epoch`` tags to TensorBoard's "Custom Scalars" dashboard (global zero only).

    ``charts`` maps a chart title to the tags drawn in it (without the ``by_epoch/`` prefix, e.g.
    ``{"CSR": ["csr/val", "csr/train_clean"]}``); each tag becomes a regex matching exactly ``by_epoch/<tag>``.
    TensorBoard reads one layout per run, the last written, so the categories added by every callback of the run are
    merged and the merged layout is written again: several callbacks can each add their own category.
    """
    if not trainer.is_global_zero:
        return
    writer = find_tensorboard(trainer)
    if writer is None:
        return
    import re

    with _layouts_lock:
        layout = _layouts.setdefault(writer, {})
        merged = layout.setdefault(category, {})
        changed = False
        for title, tags in charts.items():
            regexes = [f"^{re.escape(epoch_tag(t))}$" for t in tags]
            if merged.get(title) != regexes:
                merged[title], changed = regexes, True
        if changed:
            writer.add_custom_scalars(
                {cat: {title: ["Multiline", regs] for title, regs in chs.items()} for cat, chs in layout.items()}
            )
