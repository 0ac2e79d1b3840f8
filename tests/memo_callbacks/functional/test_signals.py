"""Signals of memorization vs slow per-example references; noise detection vs scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memo_callbacks.functional import signals as S


def _history(t: int, n: int, seed: int = 0, unobserved: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(0, 2, (t, n), generator=g).to(torch.int8)
    if unobserved:
        h[torch.rand(t, n, generator=g) < 0.2] = -1
    return h


def _slow_forgetting(h: torch.Tensor) -> list[int]:
    out = []
    for i in range(h.shape[1]):
        seq = [int(v) for v in h[:, i] if int(v) >= 0]
        out.append(sum(1 for a, b in zip(seq, seq[1:]) if a == 1 and b == 0))
    return out


@pytest.mark.parametrize("unobserved", [False, True])
def test_forgetting_events_vs_loop(unobserved):
    h = _history(9, 300, unobserved=unobserved)
    assert S.forgetting_events(h).tolist() == _slow_forgetting(h)
    if not unobserved:
        assert S.forgetting_events(h == 1).tolist() == _slow_forgetting(h)


def test_never_learned_unforgettable_forgetting_score():
    h = _history(6, 200, seed=1, unobserved=True)
    h[:, :5] = 0  # never learned
    h[:, 5:10] = 1  # unforgettable
    slow = _slow_forgetting(h)
    never = [all(int(v) != 1 for v in h[:, i]) for i in range(h.shape[1])]
    assert S.never_learned(h).tolist() == never
    assert S.unforgettable(h).tolist() == [(not nv) and f == 0 for nv, f in zip(never, slow)]
    top = max(f for f, nv in zip(slow, never) if not nv)
    assert S.forgetting_score(h).tolist() == [top + 1.0 if nv else float(f) for f, nv in zip(slow, never)]
    inf = S.forgetting_score(h, "inf")
    assert torch.isinf(inf[:5]).all() and inf[5:10].eq(0).all()
    with pytest.raises(ValueError, match="never_learned_value"):
        S.forgetting_score(h, "max")
    with pytest.raises(TypeError, match="dtype"):
        S.forgetting_events(h.float())
    with pytest.raises(ValueError, match=r"\[T, N\]"):
        S.forgetting_events(h[0])


def test_margins_probability_aum_vs_loop():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 50, 7, generator=g)  # 4 epochs
    y = torch.randint(0, 7, (50,), generator=g)
    m = torch.stack([S.margins(z, y) for z in logits])
    for t in range(4):
        for i in range(50):
            z = logits[t, i].tolist()
            other = max(v for k, v in enumerate(z) if k != int(y[i]))
            assert m[t, i].item() == pytest.approx(z[int(y[i])] - other, abs=1e-6)
            assert S.assigned_probability(logits[t], y)[i].item() == pytest.approx(
                math.exp(z[int(y[i])]) / sum(math.exp(v) for v in z), rel=1e-5)
    m[1, 3] = float("nan")
    aum = S.area_under_margin(m)
    assert aum[3].item() == pytest.approx(float(m[[0, 2, 3], 3].double().mean()), abs=1e-9)
    assert aum[4].item() == pytest.approx(float(m[:, 4].double().mean()), abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 classes"):
        S.margins(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


def test_threshold_samples_and_cutoff():
    y = torch.arange(1000) % 10
    new, thr = S.threshold_sample_labels(y, 10, torch.Generator().manual_seed(0))
    assert int(thr.sum()) == 1000 // 11
    assert new[thr].eq(10).all() and new[~thr].equal(y[~thr])
    aum = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert S.aum_threshold(aum, thr) == pytest.approx(float(np.percentile(aum[thr].numpy(), 99)), rel=1e-6)
    assert S.aum_threshold(aum, thr, 50) == pytest.approx(float(np.percentile(aum[thr].numpy(), 50)), rel=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        S.threshold_sample_labels(y, 1)
    with pytest.raises(ValueError, match="labels"):
        S.threshold_sample_labels(y, 5)
    with pytest.raises(ValueError, match="percentile"):
        S.aum_threshold(aum, thr, 101)


def test_el2n_vs_loop_and_seed_average():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 20, 5, generator=g)
    y = torch.randint(0, 5, (20,), generator=g)
    got = S.el2n(logits, y)
    for i in range(20):
        ref = 0.0
        for s in range(3):
            p = logits[s, i].softmax(0)
            ref += math.sqrt(sum((float(p[k]) - (1.0 if k == int(y[i]) else 0.0)) ** 2 for k in range(5))) / 3
        assert got[i].item() == pytest.approx(ref, rel=1e-5)
    assert S.el2n(logits[0], y).allclose(S.el2n(logits[:1], y))


def test_grand_vs_per_example_backward():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 3)) for _ in range(2)]
    models[0].train()
    x, y = torch.randn(13, 6), torch.randint(0, 3, (13,))
    got = S.grand(models, x, y, batch_size=5)
    assert models[0].training  # restored
    ref = torch.zeros(13)
    for m in models:
        m.eval()
        for i in range(13):
            m.zero_grad()
            F.cross_entropy(m(x[i : i + 1]), y[i : i + 1]).backward()
            ref[i] += torch.cat([p.grad.flatten() for p in m.parameters()]).norm() / 2
    assert got.allclose(ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="models"):
        S.grand([], x, y)
    with pytest.raises(ValueError, match="batch_size"):
        S.grand(models[0], x, y, batch_size=0)


def test_data_map_vs_loop():
    g = torch.Generator().manual_seed(4)
    prob = torch.rand(5, 40, generator=g)
    h = _history(5, 40, seed=5)
    prob[2, 7] = float("nan")
    h[2, 7] = -1
    dm = S.data_map(prob, h)
    for i in range(40):
        vals = [float(prob[t, i]) for t in range(5) if not math.isnan(float(prob[t, i]))]
        assert dm.confidence[i].item() == pytest.approx(np.mean(vals))
        assert dm.variability[i].item() == pytest.approx(np.std(vals))
        obs = [int(h[t, i]) for t in range(5) if int(h[t, i]) >= 0]
        assert dm.correctness[i].item() == pytest.approx(sum(obs) / len(obs))
    assert S.data_map(prob).correctness[0].item() == pytest.approx(float((prob[:, 0] > 0.5).double().mean()))
    with pytest.raises(ValueError, match="correct"):
        S.data_map(prob, h[:, :3])


@pytest.mark.parametrize("ties", [False, True])
def test_noise_detection_vs_sklearn(ties):
    from sklearn.metrics import average_precision_score, roc_auc_score

    g = torch.Generator().manual_seed(6)
    noisy = torch.rand(500, generator=g) < 0.3
    scores = torch.randn(500, generator=g) + noisy.double()
    if ties:
        scores = scores.round()
    for sign in (1.0, -1.0):
        got = S.noise_detection(scores, noisy, sign)
        assert got.auroc == pytest.approx(roc_auc_score(noisy.numpy(), sign * scores.numpy()), abs=1e-12)
        assert got.average_precision == pytest.approx(
            average_precision_score(noisy.numpy(), sign * scores.numpy()), abs=1e-12)
    assert S.noise_detection(torch.tensor([float("inf"), 0.0, float("nan")]), torch.tensor([True, False, True])) == (1.0, 1.0)
    with pytest.raises(ValueError, match="both clean and noisy"):
        S.noise_detection(scores, torch.zeros(500, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        S.noise_detection(scores, noisy.long())
    with pytest.raises(ValueError, match="sign"):
        S.noise_detection(scores, noisy, 2.0)
