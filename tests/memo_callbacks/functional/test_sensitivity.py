import pytest
import torch
from torch import nn

from memo_callbacks.functional import input_gradient_sensitivity, per_example_norm


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    x = torch.randn(9, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=g)
    return model, x, y


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_matches_per_example_loop(norm):
    model, x, y = make()
    out = input_gradient_sensitivity(model, x, y, norm=norm)
    expected = []
    for i in range(len(x)):  # one example at a time: no batch involved at all
        xi = x[i : i + 1].clone().requires_grad_()
        (gi,) = torch.autograd.grad(nn.functional.cross_entropy(model(xi), y[i : i + 1]), xi)
        gi = gi.flatten()
        expected.append({"l1": gi.abs().sum(), "l2": gi.norm(), "linf": gi.abs().max()}[norm])
    torch.testing.assert_close(out, torch.stack(expected))
    assert out.dtype == torch.float64 and not out.requires_grad


def test_leaves_parameter_grads_and_mode_alone():
    model, x, y = make(1)
    model.eval()
    input_gradient_sensitivity(model, x, y, loss_fn=lambda o, t: nn.functional.nll_loss(o.log_softmax(-1), t, reduction="none"))
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    with torch.no_grad():  # works inside no_grad too (e.g. in a validation loop)
        assert input_gradient_sensitivity(model, x, y).shape == (9,)


def test_per_example_norm_shapes():
    g = torch.tensor([[[3.0, -4.0]], [[0.0, 1.0]]])
    torch.testing.assert_close(per_example_norm(g, "l1"), torch.tensor([7.0, 1.0]))
    torch.testing.assert_close(per_example_norm(g, "l2"), torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(per_example_norm(g, "linf"), torch.tensor([4.0, 1.0]))


def test_errors():
    model, x, y = make()
    with pytest.raises(ValueError, match=r"`norm` must be one of \('l1', 'l2', 'linf'\), got 'l0'"):
        input_gradient_sensitivity(model, x, y, norm="l0")
    with pytest.raises(TypeError, match="`x` must be a floating-point tensor, got dtype torch.int64"):
        input_gradient_sensitivity(model, x.long(), y)
    with pytest.raises(ValueError, match="`y` must have one target per input"):
        input_gradient_sensitivity(model, x, y[:3])
    with pytest.raises(ValueError, match=r"`loss_fn` must return one loss per example, shape \[9\], got \(\)"):
        input_gradient_sensitivity(model, x, y, loss_fn=nn.functional.cross_entropy)
