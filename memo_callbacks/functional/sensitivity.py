"""The cheap proxy of loss sensitivity: the norm of each example's own input gradient, ``||d loss(x) / dx||``.

This is *not* the paper's loss sensitivity (see :mod:`memo_callbacks.functional.unrolled`): it has no cross-example
terms, so it says how steep an example's own loss is at the current parameters, not how much the example shaped
the loss of the others through the SGD updates it took part in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["l1", "l2", "linf"]
NORMS: tuple[str, ...] = ("l1", "l2", "linf")

#: A loss that returns one value per example: ``loss_fn(logits [B, C], targets [B]) -> [B]``.
PerExampleLoss = Callable[[Tensor, Tensor], Tensor]


def per_example_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``[B]`` cross-entropy of each example (the default per-example loss)."""
    return F.cross_entropy(logits, targets, reduction="none")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}")


def per_example_norm(grad: Tensor, norm: Norm = "l1", start_dim: int = 1) -> Tensor:
    """Norm of each example's gradient: ``grad`` is ``[..., *input_shape]``, flattened from ``start_dim``.

    ``"l1"`` is the sum of absolute values (the paper's norm; the authors' code takes the *mean* of ``|.|`` over
    pixels, i.e. ``l1 / num_pixels``, a constant factor that changes neither a Gini coefficient nor a ranking).
    """
    check_norm(norm)
    flat = grad.flatten(start_dim)  # [..., D]
    if norm == "l1":
        return flat.abs().sum(-1)
    if norm == "l2":
        return flat.pow(2).sum(-1).sqrt()
    return flat.abs().amax(-1)


def input_gradient_sensitivity(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: Norm = "l1",
    loss_fn: PerExampleLoss = per_example_cross_entropy,
) -> Tensor:
    """The proxy ``||d loss(x_i) / d x_i||`` for every example of a batch, from one backward pass.

    The per-example losses are summed (not averaged) before the backward pass, so each row of the input gradient is
    exactly its own example's loss gradient, provided the model treats the examples of a batch independently.
    Train-mode BatchNorm does not (batch statistics couple the examples): put the model in the mode you want
    (``model.eval()`` for the per-example value) before calling; the mode is left as it is. Parameter gradients are
    not touched (``torch.autograd.grad`` on the input only).

    Args:
        model: maps ``x`` to logits.
        x: ``[B, ...]`` inputs.
        y: ``[B]`` targets.
        norm: ``"l1"`` (sum of absolute values), ``"l2"`` or ``"linf"``.
        loss_fn: per-example loss ``(logits, y) -> [B]``.

    Returns:
        ``[B]`` the norms, detached, in ``x``'s dtype.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> input_gradient_sensitivity(model, torch.randn(4, 3), torch.tensor([0, 1, 1, 0])).shape
        torch.Size([4])
    """
    check_norm(norm)
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got dtype {x.dtype}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"`y` must have one target per input, got {tuple(y.shape)} for inputs {tuple(x.shape)}")
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        losses = loss_fn(model(leaf), y)
        if losses.shape != (x.shape[0],):
            raise ValueError(f"`loss_fn` must return one loss per example, shape [{x.shape[0]}], got {tuple(losses.shape)}")
        (grad,) = torch.autograd.grad(losses.sum(), leaf)
    return per_example_norm(grad, norm).detach()
