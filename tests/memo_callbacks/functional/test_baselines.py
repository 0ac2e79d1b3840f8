"""Cross-validated probabilities and the cleanlab baseline."""

from __future__ import annotations

import pytest
import torch

from memo_callbacks.functional.baselines import confident_learning, cross_val_probabilities, fold_assignment


def test_folds_are_stratified_and_out_of_sample():
    y = torch.arange(103) % 4
    fold = fold_assignment(y, 5, seed=0)
    for c in range(4):
        counts = torch.bincount(fold[y == c], minlength=5)
        assert int(counts.max() - counts.min()) <= 1
    seen = []

    def fit_predict(tx, ty, vx, f):
        # the held-out examples never appear in the training part
        assert not set(tx[:, 0].tolist()) & set(vx[:, 0].tolist())
        seen.append(f)
        return torch.full((vx.shape[0], 4), float(f))

    x = torch.arange(103.0)[:, None]
    probs = cross_val_probabilities(fit_predict, x, y, folds=5, seed=0)
    assert seen == [0, 1, 2, 3, 4]
    assert probs[:, 0].tolist() == fold.double().tolist()
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(y, 1, 0)


def test_confident_learning_against_cleanlab_and_by_hand():
    pytest.importorskip("cleanlab")
    from cleanlab.filter import find_label_issues

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    probs = torch.full((300, 3), 0.05)
    probs[torch.arange(300), labels] = 0.9
    flipped = torch.rand(300, generator=g) < 0.2
    given = torch.where(flipped, (labels + 1) % 3, labels)
    got = confident_learning(probs, given)
    assert got.issues.tolist() == find_label_issues(given.numpy(), (probs / probs.sum(1, keepdim=True)).double().numpy()).tolist()
    assert got.issues.equal(flipped)  # confident predictions: exactly the flipped labels
    # 1 - probability of the given label, by hand
    ref = [1 - float(probs[i, given[i]] / probs[i].sum()) for i in range(300)]
    assert got.score.tolist() == pytest.approx(ref)
