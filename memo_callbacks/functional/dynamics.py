"""Per-example learning dynamics: which training examples are fitted, when they were first learned, split by noise.

The state of one epoch is three dense ``[N]`` sufficient statistics addressed by dataset index (how many times an
example was seen and found correct, the sum of its losses, how many times it was seen), so that partial statistics
from several processes add up exactly (:func:`dynamics_update` then a sum across ranks, then
:func:`dynamics_compute`). A history is an ``[R, N]`` int8 tensor of recorded epochs (rows) with the codes
``1`` (correct), ``0`` (wrong) and ``-1`` (not observed that epoch).

Example:
    >>> import torch
    >>> correct = torch.tensor([[0, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.int8)  # 3 epochs x 3 examples
    >>> first_learned_epoch(correct).tolist(), learned_for_good_epoch(correct).tolist()
    ([1, 0, -1], [1, -1, -1])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: Codes of a correctness history.
CORRECT, WRONG, UNOBSERVED = 1, 0, -1

#: ``loss_fn(logits [B, K], targets [B]) -> [B]`` per-example losses.
PerExampleLoss = Callable[[Tensor, Tensor], Tensor]


def per_example_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``[B]`` cross-entropy of each example (``reduction="none"``), computed in float32 at least."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def example_outcomes(logits: Tensor, targets: Tensor, loss_fn: PerExampleLoss | None = None) -> tuple[Tensor, Tensor]:
    """Whether each example is fitted (``argmax == target``) and its loss.

    Args:
        logits: ``[B, K]`` model outputs.
        targets: ``[B]`` the labels trained on (the corrupted ones for noisy examples).
        loss_fn: per-example loss; cross-entropy by default.

    Returns:
        ``([B] bool, [B] float)``: correctness and loss; a row whose logits are not all finite is not correct and
        its loss is NaN (never a large number that looks like a result).

    Raises:
        ValueError: when the shapes do not match.
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"`logits` must be [B, K] and `targets` [B], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    loss = (loss_fn or per_example_cross_entropy)(logits, targets)
    if loss.shape != targets.shape:
        raise ValueError(f"`loss_fn` must return one loss per example, shape {tuple(targets.shape)}, got {tuple(loss.shape)}")
    # A row with a NaN or infinite logit (a diverged model) is not fitted, whatever its argmax, and has no loss.
    finite = torch.isfinite(logits).all(dim=1)
    loss = torch.where(finite, loss.detach(), torch.full_like(loss.detach(), float("nan")))
    return (logits.argmax(dim=1) == targets) & finite, loss


def dynamics_update(stats: Tensor, index: Tensor, correct: Tensor, loss: Tensor) -> None:
    """Add one batch of outcomes to an epoch's sufficient statistics, in place.

    Args:
        stats: ``[3, N]`` float64: rows are the number of correct observations, the sum of losses and the number of
            observations of every example. Repeated indices (a padded distributed sampler) all count.
        index: ``[B]`` dataset indices of the batch.
        correct: ``[B]`` bool.
        loss: ``[B]`` losses.
    """
    if stats.ndim != 2 or stats.shape[0] != 3:
        raise ValueError(f"`stats` must be [3, N], got {tuple(stats.shape)}")
    if not (index.shape == correct.shape == loss.shape) or index.ndim != 1:
        raise ValueError(
            f"`index`, `correct` and `loss` must be [B] each, got {tuple(index.shape)}, {tuple(correct.shape)}, "
            f"{tuple(loss.shape)}"
        )
    n = stats.shape[1]
    # Checked on the CPU only: on an accelerator it would cost a host sync every step, and `index_add_` asserts
    # the range on the device anyway.
    if index.numel() and index.device.type == "cpu" and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"dataset indices must be in [0, {n}), got values in [{int(index.min())}, {int(index.max())}]")
    values = torch.stack([correct.to(stats.dtype), loss.to(stats.dtype), torch.ones_like(loss, dtype=stats.dtype)])
    stats.index_add_(1, index.to(stats.device), values.to(stats.device))  # [3, B] summed into [3, N]


def dynamics_compute(stats: Tensor, loss_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """One epoch's row of the history from its (rank-summed) sufficient statistics.

    An example seen several times in the epoch counts as correct only if it was correct every time; its loss is
    the mean of its losses. An example never seen is ``-1`` with a NaN loss.

    Returns:
        ``([N] int8, [N] loss_dtype)``: correctness codes and mean losses.
    """
    n_correct, loss_sum, count = stats
    seen = count > 0
    correct = torch.where(seen, (n_correct == count).to(torch.int8), torch.full_like(count, UNOBSERVED, dtype=torch.int8))
    loss = torch.where(seen, loss_sum / count.clamp_min(1), torch.full_like(loss_sum, float("nan")))
    return correct.to(torch.int8), loss.to(loss_dtype)


def _epoch_values(correct: Tensor, epochs: Tensor | None) -> Tensor:
    if correct.ndim != 2:
        raise ValueError(f"`correct` must be an [epochs, N] history, got shape {tuple(correct.shape)}")
    if epochs is None:
        return torch.arange(correct.shape[0], device=correct.device)
    if epochs.shape != (correct.shape[0],):
        raise ValueError(f"`epochs` must have one entry per history row ({correct.shape[0]}), got {tuple(epochs.shape)}")
    return epochs.to(correct.device, torch.long)


def first_learned_epoch(correct: Tensor, epochs: Tensor | None = None) -> Tensor:
    """``[N]`` the first epoch at which each example was fitted, ``-1`` if never.

    Args:
        correct: ``[R, N]`` history (bool, or int8 codes with ``-1`` for not observed).
        epochs: ``[R]`` the epoch number of each row; ``0 .. R-1`` by default.
    """
    epochs = _epoch_values(correct, epochs)
    hit = correct == CORRECT  # [R, N]
    if correct.shape[0] == 0:
        return torch.full((correct.shape[1],), -1, dtype=torch.long, device=correct.device)
    first_row = hit.to(torch.uint8).argmax(dim=0)  # argmax returns the first maximal row
    return torch.where(hit.any(dim=0), epochs[first_row], torch.full_like(first_row, -1))


def learned_for_good_epoch(correct: Tensor, epochs: Tensor | None = None) -> Tensor:
    """``[N]`` the epoch from which each example is fitted at every later observation, ``-1`` if it is not.

    The epoch is the first of the final run of correct observations (unobserved epochs neither break nor start a
    run); an example whose last observation is wrong, or that was never observed, gets ``-1``.
    """
    epochs = _epoch_values(correct, epochs)
    r, n = correct.shape
    if r == 0:
        return torch.full((n,), -1, dtype=torch.long, device=correct.device)
    wrong = correct == WRONG  # bool input: False is wrong
    hit = correct == CORRECT
    rows = torch.arange(r, device=correct.device).unsqueeze(1)  # [R, 1]
    last_wrong = torch.where(wrong, rows, torch.full_like(rows, -1)).amax(dim=0)  # [N]
    # first correct row after the last wrong one
    after = hit & (rows > last_wrong)
    first_row = after.to(torch.uint8).argmax(dim=0)
    return torch.where(after.any(dim=0), epochs[first_row], torch.full_like(first_row, -1))


def clean_noisy_means(values: Tensor, noisy: Tensor | None = None, valid: Tensor | None = None) -> dict[str, float]:
    """Mean of ``values`` over all, clean and noisy examples (NaN for an empty group).

    Args:
        values: ``[N]`` per-example values (bool fitted flags give fractions).
        noisy: ``[N]`` bool noise mask; without it only ``"all"`` is returned.
        valid: ``[N]`` bool, the examples to include (e.g. those observed this epoch); all by default.
    """
    values = values.double()
    valid = torch.ones_like(values, dtype=torch.bool) if valid is None else valid.to(values.device, torch.bool)
    if noisy is not None and noisy.shape != values.shape:
        raise ValueError(f"`noisy` must have the shape of `values` {tuple(values.shape)}, got {tuple(noisy.shape)}")
    groups = {"all": valid}
    if noisy is not None:
        noisy = noisy.to(values.device, torch.bool)
        groups |= {"clean": valid & ~noisy, "noisy": valid & noisy}
    out = {}
    for name, mask in groups.items():
        count = int(mask.sum())
        out[name] = float(values[mask].sum() / count) if count else float("nan")
    return out
