"""Feldman-Zhang memorization and C-scores: the estimator against a per-example loop, the subset ensemble against
independent single-model runs, and the scores on digits with known random labels."""

import math

import pytest
import torch
from torch import nn

from memo_callbacks.functional import (
    consistency_scores,
    init_mlp_params,
    member_orders,
    memorization_from_runs,
    memorization_scores,
    mlp_forward,
    random_subsets,
    train_ensemble,
)
from memo_callbacks.functional.ensemble import member_seed


def _data(n=60, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _loop_reference(correct, members):
    """Per example, in plain python: the two proportions, their difference and the binomial standard errors."""
    e, n = correct.shape
    rows = []
    for i in range(n):
        ins = [bool(correct[k, i]) for k in range(e) if members[k, i]]
        outs = [bool(correct[k, i]) for k in range(e) if not members[k, i]]
        p_in = sum(ins) / len(ins) if ins else math.nan
        p_out = sum(outs) / len(outs) if outs else math.nan
        if ins and outs:
            mem = p_in - p_out
            mem_se = math.sqrt(p_in * (1 - p_in) / len(ins) + p_out * (1 - p_out) / len(outs))
        else:
            mem = mem_se = math.nan
        c_se = math.sqrt(p_out * (1 - p_out) / len(outs)) if outs else math.nan
        rows.append((mem, mem_se, p_out, c_se, len(ins), len(outs), p_in))
    return [torch.tensor(col, dtype=torch.float64) for col in zip(*rows)]


def test_estimator_matches_per_example_loop():
    g = torch.Generator().manual_seed(1)
    correct = torch.rand(13, 40, generator=g) < 0.6
    members = torch.rand(13, 40, generator=g) < 0.5
    members[:, 0] = True  # never held out: mem and C-score undefined
    members[:, 1] = False  # never trained on: mem undefined, C-score defined
    correct[:, 2] = True  # always right: zero plug-in error
    s = memorization_from_runs(correct, members)
    mem, mem_se, cscore, c_se, n_in, n_out, p_in = _loop_reference(correct, members)
    for got, want in ((s.mem, mem), (s.mem_stderr, mem_se), (s.cscore, cscore), (s.cscore_stderr, c_se),
                      (s.in_accuracy, p_in), (s.out_accuracy, cscore)):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-12, atol=1e-12)
    assert s.in_counts.tolist() == n_in.long().tolist() and s.out_counts.tolist() == n_out.long().tolist()
    assert s.mem[:2].isnan().all() and s.mem_stderr[:2].isnan().all()
    assert s.cscore[0].isnan() and not s.cscore[1].isnan() and not s.cscore_stderr[1].isnan()
    assert s.mem_stderr[2] == 0 and s.cscore[2] == 1
    assert not s.mem[3:].isnan().any()


def _nn_reference(x, y, subset, hidden, k, lr, batch_size, epochs, seed, member):
    """One plain model trained on ``x[subset]`` alone: nn.Sequential + SGD, with the ensemble member's init and its
    data order over the subset's positions; returns its logits on all examples."""
    widths = [x.shape[1], *hidden, k]
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers).double()
    params = init_mlp_params(widths[0], hidden, k, member + 1, seed, dtype=torch.float64).member(member)
    with torch.no_grad():
        for lin, (w, b) in zip([m for m in model if isinstance(m, nn.Linear)], params):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xs, ys = x[subset].double(), y[subset]
    for epoch in range(epochs):
        order = member_orders(len(subset), member + 1, epoch, seed)[member]
        for start in range(0, len(subset), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    with torch.no_grad():
        return model(x.double())


def test_subset_members_match_independent_runs():
    x, y = _data()
    members = random_subsets(60, 4, 0.6, seed=2)
    kw = dict(hidden=(12,), num_classes=3, lr=0.3, batch_size=10, epochs=3, seed=7)
    run = train_ensemble(x.double(), y, num_members=4, members=members, **kw)
    assert torch.equal(run.members, members)
    for member in (0, 3):
        subset = members[member].nonzero().flatten()
        logits = _nn_reference(x, y, subset, kw["hidden"], 3, kw["lr"], kw["batch_size"], kw["epochs"], kw["seed"], member)
        assert torch.equal(run.correct[member], logits.argmax(1) == y)
        member_logits = mlp_forward(run.params, x.double())[member]  # float64 parameters: [N, K]
        torch.testing.assert_close(member_logits, logits, rtol=1e-10, atol=1e-12)
        # the losses are stored in float32
        torch.testing.assert_close(run.loss[member].double(), nn.functional.cross_entropy(logits, y, reduction="none"),
                                   rtol=1e-6, atol=1e-7)
        # the same member of a full-data ensemble on the subset alone: the same parameters
        alone = train_ensemble(x[subset].double(), y[subset], num_members=member + 1, **kw)
        for (w, b), (w2, b2) in zip(run.params.member(member), alone.params.member(member)):
            torch.testing.assert_close(w, w2, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(b, b2, rtol=1e-12, atol=1e-12)
    # the held-out part matters: training on a different subset gives a different model
    other = train_ensemble(x.double(), y, num_members=4, members=members.roll(1, dims=0), **kw)
    assert not torch.allclose(other.loss[0], run.loss[0])


def test_all_true_members_is_the_full_data_ensemble():
    x, y = _data()
    full = train_ensemble(x, y, num_members=3, hidden=(8,), lr=0.2, batch_size=16, epochs=2, seed=1)
    masked = train_ensemble(x, y, num_members=3, hidden=(8,), lr=0.2, batch_size=16, epochs=2, seed=1,
                            members=torch.ones(3, 60, dtype=torch.bool))
    assert torch.equal(full.loss, masked.loss) and torch.equal(full.correct, masked.correct)
    assert full.members.all()


def test_subsets_exact_size_seeded_and_independent_of_the_number_of_models():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    for n, ratio in ((60, 0.7), (61, 0.5), (7, 0.5), (1000, 0.123)):
        s = random_subsets(n, 9, ratio, seed=3)
        assert s.dtype == torch.bool and s.shape == (9, n)
        assert (s.sum(1) == round(ratio * n)).all()
    assert torch.equal(torch.rand(2), expected)  # the global RNG was not touched
    a = random_subsets(60, 5, 0.7, seed=3)
    assert torch.equal(a, random_subsets(60, 5, 0.7, seed=3))
    assert torch.equal(a, random_subsets(60, 12, 0.7, seed=3)[:5])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, random_subsets(60, 5, 0.7, seed=4))
    # over many models every example is held in about ratio of the time
    many = random_subsets(50, 400, 0.7, seed=0).double().mean(0)
    assert (many - 0.7).abs().max() < 0.1


def test_memorization_scores_composes_subsets_ensemble_and_estimator():
    x, y = _data()
    kw = dict(hidden=(8,), lr=0.2, batch_size=16, epochs=2, seed=5)
    s = memorization_scores(x, y, num_models=6, subset_ratio=0.5, **kw)
    members = random_subsets(60, 6, 0.5, seed=5)
    assert torch.equal(s.members, members)
    run = train_ensemble(x, y, num_members=6, members=members, **kw)
    assert torch.equal(s.correct, run.correct)
    ref = memorization_from_runs(run.correct, members)
    torch.testing.assert_close(s.mem, ref.mem, equal_nan=True)
    assert ((s.in_counts + s.out_counts) == 6).all() and s.in_counts.sum() == 6 * 30


def test_consistency_scores_average_the_ratios():
    x, y = _data(n=40)
    kw = dict(hidden=(8,), lr=0.2, batch_size=8, epochs=2)
    c = consistency_scores(x, y, subset_ratios=(0.25, 0.75), num_models=5, seed=2, **kw)
    assert c.per_ratio.shape == (2, 40) and c.ratios.tolist() == [0.25, 0.75]
    for r, ratio in enumerate((0.25, 0.75)):
        s = memorization_scores(x, y, num_models=5, subset_ratio=ratio, seed=member_seed(2, r, "ratio"), **kw)
        torch.testing.assert_close(c.per_ratio[r], s.cscore, equal_nan=True)
        assert torch.equal(c.out_counts[r], s.out_counts)
    for i in range(40):
        vals, errs = c.per_ratio[:, i].tolist(), c.per_ratio_stderr[:, i].tolist()
        want = sum(vals) / 2
        want_se = math.sqrt(sum(e * e for e in errs)) / 2
        assert (math.isnan(want) and math.isnan(c.cscore[i])) or c.cscore[i].item() == pytest.approx(want)
        assert (math.isnan(want_se) and math.isnan(c.cscore_stderr[i])) or c.cscore_stderr[i].item() == pytest.approx(want_se)


def test_random_labels_are_memorized_and_inconsistent_on_digits():
    """Digits with 40% random labels: a model fits a noisy label only if it trained on it, so noisy examples have
    a much higher mem and a much lower C-score than clean ones (chance agreement of a held-out model with a random
    label is about 1/10)."""
    from sklearn.metrics import roc_auc_score

    from datamodules import NoisyDigits

    dm = NoisyDigits(noise="random_labels", noise_fraction=0.4, seed=0)
    dm.setup("fit")
    s = memorization_scores(dm.train_x, dm.train_y, num_models=32, subset_ratio=0.7, hidden=(64, 64), epochs=30,
                            lr=0.5, batch_size=32, seed=0)
    noisy = dm.noisy_mask
    assert not s.mem.isnan().any()  # 32 models at 0.7: every example held both in and out
    assert s.mem[noisy].mean() > s.mem[~noisy].mean() + 0.1  # measured: 0.38 vs 0.20
    assert s.cscore[noisy].mean() < s.cscore[~noisy].mean() - 0.4  # measured: 0.12 vs 0.67
    assert roc_auc_score(noisy.numpy(), s.mem.numpy()) > 0.65  # measured: 0.71
    assert roc_auc_score(noisy.numpy(), -s.cscore.numpy()) > 0.85  # measured: 0.93
    assert 0 < s.mem_stderr.mean() < 0.2


def test_errors():
    x, y = _data()
    ok = torch.ones(2, 60, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"`members` must be a bool tensor of shape \(2, 60\) \[num_members, N\], "
                                         r"got \(2, 59\)"):
        train_ensemble(x, y, num_members=2, members=ok[:, :59])
    with pytest.raises(ValueError, match=r"`members` must be a bool tensor .* got \(2, 60\) of torch.int64"):
        train_ensemble(x, y, num_members=2, members=ok.long())
    uneven = ok.clone()
    uneven[0, 0] = False
    with pytest.raises(ValueError, match="`members` rows must all hold the same number of examples, got sizes from "
                                         "59 to 60"):
        train_ensemble(x, y, num_members=2, members=uneven)
    with pytest.raises(ValueError, match="`members` rows must hold at least one example, got 0"):
        train_ensemble(x, y, num_members=2, members=~ok)
    half = random_subsets(60, 2, 0.5, seed=0)
    with pytest.raises(ValueError, match="`batch_size` must be at most the 30 examples with drop_last=True, got 40"):
        train_ensemble(x, y, num_members=2, members=half, batch_size=40, drop_last=True)
    with pytest.raises(ValueError, match=r"`correct` must be a bool tensor \[runs, N\] with at least one run, got "
                                         r"\(60,\)"):
        memorization_from_runs(ok[0], ok[0])
    with pytest.raises(ValueError, match=r"`members` must be a bool tensor \[runs, N\] .* of torch.float32"):
        memorization_from_runs(ok, ok.float())
    with pytest.raises(ValueError, match=r"`correct` must be a bool tensor .* got \(0, 60\)"):
        memorization_from_runs(ok[:0], ok[:0])
    with pytest.raises(ValueError, match=r"`correct` and `members` must have the same shape, got \(2, 60\) and "
                                         r"\(2, 59\)"):
        memorization_from_runs(ok, ok[:, :59])
    for bad in (0.0, 1.0, 1.5, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"`subset_ratio` must be in \(0, 1\), got"):
            memorization_scores(x, y, num_models=2, subset_ratio=bad)
    with pytest.raises(ValueError, match="`subset_ratio` 0.1 gives subsets of 0 of the 4 examples; each model must "
                                         "train on at least one and hold out at least one"):
        random_subsets(4, 2, 0.1, seed=0)
    with pytest.raises(ValueError, match="`subset_ratio` 0.9 gives subsets of 4 of the 4 examples"):
        memorization_scores(x[:4], y[:4], num_models=2, subset_ratio=0.9)
    with pytest.raises(ValueError, match="`num_models` must be a positive integer, got 0"):
        memorization_scores(x, y, num_models=0)
    with pytest.raises(ValueError, match="`num_models` must be a positive integer, got 0"):
        random_subsets(60, 0, 0.5, seed=0)
    with pytest.raises(ValueError, match="`num_examples` must be a positive integer, got 0"):
        random_subsets(0, 2, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"`x` must be \[N, \.\.\.\] and `y` \[N\], got \(60, 6\) and \(59,\)"):
        memorization_scores(x, y[:59], num_models=2)
    with pytest.raises(ValueError, match=r"`subset_ratios` must hold at least one ratio, got \(\)"):
        consistency_scores(x, y, subset_ratios=())
    with pytest.raises(ValueError, match=r"`subset_ratio` must be in \(0, 1\), got 1.2"):
        consistency_scores(x, y, subset_ratios=(0.5, 1.2))
