"""The vectorised ensemble of Figure 1 against plain sequential single-model training."""

import math

import pytest
import torch
from torch import nn

from memo_callbacks.functional.ensemble import (
    binomial_reference,
    init_mlp_params,
    member_orders,
    misclassification_rate,
    train_ensemble,
)


def _data(n=90, d=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 3, d // 3, generator=g), torch.randint(0, k, (n,), generator=g)


def _sequential_reference(x, y, hidden, k, lr, batch_size, epochs, seed, member, init="default"):
    """One plain model: nn.Sequential + torch.optim.SGD, its init and data order taken from the ensemble's seeds."""
    widths = [x[0].numel(), *hidden, k]
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(nn.Flatten(), *layers).double()
    params = init_mlp_params(widths[0], hidden, k, member + 1, seed, init, dtype=torch.float64).member(member)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, (w, b) in zip(linears, params):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = x.shape[0]
    for epoch in range(epochs):
        order = member_orders(n, member + 1, epoch, seed)[member]
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx].double()), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        logits = model(x.double())
    return logits.argmax(1) == y, nn.functional.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("init", ["default", "glorot_uniform"])
def test_members_match_sequential_training(init):
    x, y = _data()
    kw = dict(hidden=(16, 8), lr=0.3, batch_size=16, epochs=3, seed=5)
    run = train_ensemble(x.double(), y, num_members=4, num_classes=4, init=init, **kw)
    for member in (0, 3):
        correct, loss = _sequential_reference(x, y, kw["hidden"], 4, kw["lr"], kw["batch_size"], kw["epochs"],
                                              kw["seed"], member, init)
        assert torch.equal(run.correct[member], correct)
        torch.testing.assert_close(run.loss[member].double(), loss, rtol=1e-5, atol=1e-6)
    # the training moved the members far from their initialisation: the check is not vacuous
    untrained = train_ensemble(x.double(), y, num_members=4, num_classes=4, init=init, **(kw | {"epochs": 0}))
    assert (run.loss - untrained.loss).abs().mean() > 0.1
    assert run.loss.mean() < untrained.loss.mean()


def test_float32_members_match_sequential_training_to_float_tolerance():
    x, y = _data(n=70)
    run = train_ensemble(x, y, num_members=3, hidden=(10,), lr=0.1, batch_size=32, epochs=2, seed=1)
    _, loss = _sequential_reference(x, y, (10,), 4, 0.1, 32, 2, 1, member=2)
    torch.testing.assert_close(run.loss[2].double(), loss, rtol=1e-4, atol=1e-5)


def test_member_is_independent_of_ensemble_size_and_seeds_differ():
    x, y = _data()
    small = train_ensemble(x, y, num_members=2, hidden=(8,), lr=0.2, batch_size=10, seed=3)
    large = train_ensemble(x, y, num_members=5, hidden=(8,), lr=0.2, batch_size=10, seed=3)
    torch.testing.assert_close(small.loss, large.loss[:2])
    # members differ from one another, and another seed gives other members
    assert not torch.allclose(large.loss[0], large.loss[1])
    other = train_ensemble(x, y, num_members=2, hidden=(8,), lr=0.2, batch_size=10, seed=4)
    assert not torch.allclose(other.loss[0], small.loss[0])
    orders = member_orders(90, 3, 0, seed=3)
    assert all(sorted(o.tolist()) == list(range(90)) for o in orders)
    assert not torch.equal(orders[0], orders[1])
    assert not torch.equal(member_orders(90, 1, 1, seed=3)[0], orders[0])  # a new order every epoch


def test_global_rng_untouched():
    x, y = _data()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train_ensemble(x, y, num_members=2, hidden=(4,), batch_size=30)
    assert torch.equal(torch.rand(3), expected)


def test_drop_last_and_zero_epochs():
    x, y = _data(n=50)
    run = train_ensemble(x, y, num_members=2, hidden=(4,), epochs=0)
    # no training: the result is the initialisation's
    p = init_mlp_params(12, (4,), 4, 2, 0)
    from memo_callbacks.functional.ensemble import mlp_forward

    logits = mlp_forward(p, x.flatten(1))
    assert torch.equal(run.correct, logits.argmax(-1) == y)
    dropped = train_ensemble(x, y, num_members=2, hidden=(4,), batch_size=20, drop_last=True, lr=0.5)
    kept = train_ensemble(x, y, num_members=2, hidden=(4,), batch_size=20, drop_last=False, lr=0.5)
    assert not torch.allclose(dropped.loss, kept.loss)


def test_misclassification_rate_and_binomial_reference():
    correct = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert misclassification_rate(correct).tolist() == [0.0, 0.75, 0.75]
    # quantiles of Binomial(E, p) / E against an explicit pmf with math.comb
    e, p, n = 10, 0.3, 7
    pmf = [math.comb(e, k) * p**k * (1 - p) ** (e - k) for k in range(e + 1)]
    cdf = [sum(pmf[: k + 1]) for k in range(e + 1)]
    expected = [next(k for k in range(e + 1) if cdf[k] >= (i + 0.5) / n) / e for i in range(n)]
    assert binomial_reference(e, p, n).tolist() == pytest.approx(expected)
    assert binomial_reference(e, 0.0, 3).tolist() == [0.0] * 3
    assert binomial_reference(e, 1.0, 3).tolist() == [1.0] * 3
    sim = binomial_reference(100, 0.4, 2000, method="simulate", generator=torch.Generator().manual_seed(0))
    assert torch.all(sim[1:] >= sim[:-1])
    assert abs(sim.mean().item() - 0.4) < 0.01
    assert abs(sim.std().item() - math.sqrt(0.4 * 0.6 / 100)) < 0.005


def test_errors():
    x, y = _data()
    for seed in (0.0, "0", None, True, torch.tensor(0)):
        with pytest.raises(TypeError, match=r"`seed` must be an int \(a python or numpy integer, not a bool\)"):
            train_ensemble(x, y, num_members=2, seed=seed)
    with pytest.raises(TypeError, match=r"`seed` must be an int"):
        member_orders(10, 2, 0, seed=1.5)
    with pytest.raises(ValueError, match=r"`num_members` must be a positive integer, got 0"):
        train_ensemble(x, y, num_members=0)
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer, got 0"):
        train_ensemble(x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"`lr` must be > 0, got -1"):
        train_ensemble(x, y, lr=-1)
    with pytest.raises(ValueError, match=r"`epochs` must be a non-negative integer, got -1"):
        train_ensemble(x, y, epochs=-1)
    with pytest.raises(ValueError, match=r"`x` must be \[N, \.\.\.\] and `y` \[N\], got \(90, 1, 3, 4\) and \(89,\)"):
        train_ensemble(x, y[:-1])
    with pytest.raises(ValueError, match="`x` must be a floating tensor"):
        train_ensemble(x.long(), y)
    with pytest.raises(ValueError, match="`y` must hold integer labels"):
        train_ensemble(x, y.float())
    with pytest.raises(ValueError, match=r"`num_classes` must exceed the largest label 3, got 3"):
        train_ensemble(x, y, num_classes=3)
    with pytest.raises(ValueError, match=r"`hidden` widths must be positive integers, got \(0,\)"):
        train_ensemble(x, y, hidden=(0,))
    with pytest.raises(ValueError, match="`init` must be 'default' or 'glorot_uniform', got 'he'"):
        train_ensemble(x, y, init="he")
    with pytest.raises(ValueError, match="`batch_size` must be at most the 90 examples with drop_last=True"):
        train_ensemble(x, y, batch_size=100, drop_last=True)
    with pytest.raises(ValueError, match=r"`correct` must be \[runs, N\]"):
        misclassification_rate(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`p` must be in \[0, 1\], got 1.5"):
        binomial_reference(10, 1.5, 3)
    with pytest.raises(ValueError, match="`generator` must be a torch.Generator with method='simulate'"):
        binomial_reference(10, 0.5, 3, method="simulate")
    with pytest.raises(ValueError, match="`method` must be 'quantile' or 'simulate', got 'exact'"):
        binomial_reference(10, 0.5, 3, method="exact")
    with pytest.raises(ValueError, match="`num_runs` must be a positive integer, got 0"):
        binomial_reference(0, 0.5, 3)
