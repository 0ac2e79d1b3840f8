"""Per-example dynamics maths against explicit python loops."""

import math

import pytest
import torch

from memo_callbacks.functional.dynamics import (
    clean_noisy_means,
    dynamics_compute,
    dynamics_update,
    example_outcomes,
    first_learned_epoch,
    learned_for_good_epoch,
)


def _random_history(r=7, n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (r, n), generator=g).to(torch.int8)


def _first_ref(correct, epochs):
    out = []
    for i in range(correct.shape[1]):
        out.append(next((int(epochs[t]) for t in range(correct.shape[0]) if correct[t, i] == 1), -1))
    return out


def _for_good_ref(correct, epochs):
    out = []
    for i in range(correct.shape[1]):
        col = [int(v) for v in correct[:, i]]
        start = -1
        for t, v in enumerate(col):
            if v == 0:
                start = -1
            elif v == 1 and start == -1:
                start = int(epochs[t])
        out.append(start)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_first_learned_and_for_good_against_loops(seed):
    correct = _random_history(seed=seed)
    epochs = torch.tensor([0, 2, 4, 6, 8, 10, 12])
    assert first_learned_epoch(correct, epochs).tolist() == _first_ref(correct, epochs)
    assert learned_for_good_epoch(correct, epochs).tolist() == _for_good_ref(correct, epochs)
    plain = torch.arange(7)
    assert first_learned_epoch(correct).tolist() == _first_ref(correct, plain)
    # bool histories (no unobserved code) work too
    as_bool = correct == 1
    assert learned_for_good_epoch(as_bool).tolist() == _for_good_ref(as_bool.to(torch.int8), plain)


def test_hand_computed_cases():
    correct = torch.tensor([[1, 0, -1, 1, 0], [0, 1, 1, -1, 0], [1, 1, -1, 1, -1]], dtype=torch.int8)
    assert first_learned_epoch(correct).tolist() == [0, 1, 1, 0, -1]
    assert learned_for_good_epoch(correct).tolist() == [2, 1, 1, 0, -1]
    empty = torch.empty(0, 3, dtype=torch.int8)
    assert first_learned_epoch(empty).tolist() == [-1] * 3 == learned_for_good_epoch(empty).tolist()


def test_update_and_compute_against_loop():
    g = torch.Generator().manual_seed(0)
    n = 10
    stats = torch.zeros(3, n, dtype=torch.float64)
    seen: dict[int, list[tuple[bool, float]]] = {}
    for _ in range(4):
        index = torch.randint(0, n, (6,), generator=g)  # repeats, as from a padded sampler
        correct = torch.rand(6, generator=g) > 0.3
        loss = torch.rand(6, generator=g)
        dynamics_update(stats, index, correct, loss)
        for i, c, l in zip(index.tolist(), correct.tolist(), loss.tolist()):
            seen.setdefault(i, []).append((c, l))
    row, loss_row = dynamics_compute(stats)
    for i in range(n):
        if i not in seen:
            assert row[i] == -1 and math.isnan(loss_row[i])
        else:
            assert row[i] == int(all(c for c, _ in seen[i]))
            assert loss_row[i].item() == pytest.approx(sum(l for _, l in seen[i]) / len(seen[i]), rel=1e-6)
    assert dynamics_compute(stats, torch.float16)[1].dtype == torch.float16


def test_example_outcomes_and_means():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    correct, loss = example_outcomes(logits, torch.tensor([0, 0, 0]))
    assert correct.tolist() == [True, False, True]
    torch.testing.assert_close(loss, -torch.log_softmax(logits, 1)[:, 0])
    values = torch.tensor([1.0, 0.0, 1.0, 1.0])
    noisy = torch.tensor([False, True, True, False])
    assert clean_noisy_means(values, noisy) == {"all": 0.75, "clean": 1.0, "noisy": 0.5}
    valid = torch.tensor([True, True, False, False])
    out = clean_noisy_means(values, noisy, valid)
    assert out["all"] == 0.5 and out["clean"] == 1.0 and out["noisy"] == 0.0
    assert math.isnan(clean_noisy_means(values, torch.zeros(4, dtype=torch.bool))["noisy"])
    assert clean_noisy_means(values) == {"all": 0.75}


def test_errors():
    with pytest.raises(ValueError, match=r"`logits` must be \[B, K\] and `targets` \[B\], got \(3,\) and \(3,\)"):
        example_outcomes(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`loss_fn` must return one loss per example"):
        example_outcomes(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), loss_fn=lambda a, b: a.sum())
    stats = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"dataset indices must be in \[0, 4\), got values in \[0, 4\]"):
        dynamics_update(stats, torch.tensor([0, 4]), torch.ones(2, dtype=torch.bool), torch.ones(2))
    with pytest.raises(ValueError, match=r"`stats` must be \[3, N\], got \(4,\)"):
        dynamics_update(torch.zeros(4), torch.tensor([0]), torch.ones(1, dtype=torch.bool), torch.ones(1))
    with pytest.raises(ValueError, match=r"`index`, `correct` and `loss` must be \[B\] each"):
        dynamics_update(stats, torch.tensor([0, 1]), torch.ones(1, dtype=torch.bool), torch.ones(1))
    with pytest.raises(ValueError, match=r"`correct` must be an \[epochs, N\] history, got shape \(3,\)"):
        first_learned_epoch(torch.ones(3, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"`epochs` must have one entry per history row \(2\), got \(3,\)"):
        learned_for_good_epoch(torch.ones(2, 3, dtype=torch.int8), torch.arange(3))
    with pytest.raises(ValueError, match=r"`noisy` must have the shape of `values` \(4,\), got \(3,\)"):
        clean_noisy_means(torch.ones(4), torch.zeros(3, dtype=torch.bool))
