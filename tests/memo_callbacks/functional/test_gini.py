import numpy as np
import pytest
import torch

from memo_callbacks.functional import gini


def gini_quadratic(values):
    """The definition, literally: sum_i sum_j |g_i - g_j| / (2 N sum_i g_i)."""
    g = np.asarray(values, dtype=np.float64)
    return np.abs(g[:, None] - g[None, :]).sum() / (2 * len(g) * g.sum())


@pytest.mark.parametrize("seed", range(5))
def test_matches_double_sum(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 300, (1,), generator=g))
    values = torch.rand(n, generator=g) ** (seed + 1)  # more and more unequal
    values[torch.rand(n, generator=g) < 0.2] = 0.0  # ties and zeros
    assert gini(values) == pytest.approx(gini_quadratic(values.numpy()), rel=1e-12)


def test_known_values():
    assert gini(torch.full((10,), 3.0)) == 0.0
    for n in (1, 2, 7, 1000):
        one = torch.zeros(n)
        one[n // 2] = 2.5
        assert gini(one) == pytest.approx((n - 1) / n, abs=1e-12)
    assert gini(torch.zeros(5)) == 0.0  # documented: no inequality
    assert gini(torch.tensor([1.0, 3.0])) == pytest.approx(0.25)
    # Scale invariant, order invariant, any shape.
    v = torch.rand(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert gini(v) == pytest.approx(gini(7 * v.flatten().flip(0)), rel=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="`values` must hold at least one value"):
        gini(torch.tensor([]))
    with pytest.raises(ValueError, match="`values` must be finite.*nan"):
        gini(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="`values` must be finite.*inf"):
        gini(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="`values` must be non-negative, got a minimum of -1"):
        gini(torch.tensor([1.0, -1.0]))
    with pytest.raises(TypeError, match="`values` must be a Tensor, got list"):
        gini([1.0, 2.0])
