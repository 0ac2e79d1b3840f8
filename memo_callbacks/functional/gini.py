"""The Gini coefficient of non-negative values (Arpit et al. 2017, Figure 3), in O(N log N)."""

from __future__ import annotations

import torch
from torch import Tensor


def gini(values: Tensor) -> float:
    """Gini coefficient ``sum_i sum_j |g_i - g_j| / (2 N sum_i g_i)`` of non-negative values.

    0 means all values are equal, ``(N - 1) / N`` that a single value carries everything. Computed by sorting: for
    ascending ``g_(1) <= ... <= g_(N)``, ``sum_i sum_j |g_i - g_j| = 2 sum_k (2k - N - 1) g_(k)``, so the cost is
    O(N log N) instead of the O(N^2) double sum. Accumulated in float64.

    All-zero input (and a single value) has no inequality: the result is defined as 0.0.

    Args:
        values: ``[N]`` (or any shape, flattened) non-negative finite values, e.g. loss sensitivities ``g_bar_x``.

    Raises:
        ValueError: when ``values`` is empty, or has a NaN, an infinity or a negative entry.

    Example:
        >>> gini(torch.tensor([1.0, 1.0, 1.0]))
        0.0
        >>> gini(torch.tensor([0.0, 0.0, 0.0, 5.0]))
        0.75
    """
    if not isinstance(values, Tensor):
        raise TypeError(f"`values` must be a Tensor, got {type(values).__name__}")
    g = values.detach().flatten().to(torch.float64)
    n = g.numel()
    if n == 0:
        raise ValueError("`values` must hold at least one value, got an empty tensor")
    if not bool(torch.isfinite(g).all()):
        bad = g[~torch.isfinite(g)][0].item()
        raise ValueError(f"`values` must be finite, got {int((~torch.isfinite(g)).sum())} non-finite value(s) like {bad}")
    if bool((g < 0).any()):
        raise ValueError(f"`values` must be non-negative, got a minimum of {g.min().item()}")
    total = g.sum()
    if total == 0:
        return 0.0
    g = g.sort().values
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=g.device)
    return float(((2 * rank - n - 1) * g).sum() / (n * total))
