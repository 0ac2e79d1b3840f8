"""Baselines for finding mislabelled examples: cleanlab's confident learning on out-of-sample probabilities.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
JAIR 2021) needs predicted probabilities that are out of sample for every example: :func:`cross_val_probabilities`
produces them with k-fold cross-validation of any ``fit_predict`` (same model, same training budget as the run whose
signals are compared), and :func:`confident_learning` hands them to ``cleanlab.filter.find_label_issues`` (the
``cleanlab`` package, extra ``baselines``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

#: ``fit_predict(train_x, train_y, test_x, fold) -> [M, K] probabilities of test_x``.
FitPredict = Callable[[Tensor, Tensor, Tensor, int], Tensor]


class LabelIssues(NamedTuple):
    """cleanlab's verdict: ``issues`` [N] bool (flagged by confident learning), ``score`` [N] = 1 - self-confidence
    (larger is more likely mislabelled; a ranking for AUROC / AP)."""

    issues: Tensor
    score: Tensor


def fold_assignment(labels: Tensor, folds: int, seed: int) -> Tensor:
    """``[N]`` fold of each example, stratified by label: within each class a seeded permutation dealt round-robin."""
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"`folds` must be an int >= 2, got {folds!r}")
    if labels.ndim != 1 or labels.numel() < folds:
        raise ValueError(f"`labels` must be [N] with N >= folds = {folds}, got {tuple(labels.shape)}")
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(labels.numel(), dtype=torch.long)
    offset = 0
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        out[idx] = (torch.arange(idx.numel()) + offset) % folds
        offset += idx.numel()
    return out


def cross_val_probabilities(fit_predict: FitPredict, x: Tensor, y: Tensor, folds: int = 5, seed: int = 0) -> Tensor:
    """``[N, K]`` out-of-sample probabilities: each example predicted by the model trained on the other folds."""
    fold = fold_assignment(y.cpu(), folds, seed)
    out: Tensor | None = None
    for f in range(folds):
        test = (fold == f).to(x.device)
        probs = fit_predict(x[~test], y[~test], x[test], f)
        if probs.ndim != 2 or probs.shape[0] != int(test.sum()):
            raise ValueError(f"`fit_predict` must return [M, K] probabilities of the M held-out examples, got {tuple(probs.shape)}")
        if out is None:
            out = torch.zeros(x.shape[0], probs.shape[1], dtype=torch.float64)
        out[test.cpu()] = probs.detach().double().cpu()
    return out


def confident_learning(pred_probs: Tensor, labels: Tensor) -> LabelIssues:
    """``cleanlab.filter.find_label_issues`` on out-of-sample ``pred_probs`` [N, K] and the given ``labels`` [N].

    Raises:
        ImportError: when cleanlab is not installed (``pip install memo-callbacks[baselines]``).
    """
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("confident_learning needs cleanlab: pip install 'cleanlab>=2.5'") from err
    if pred_probs.ndim != 2 or labels.shape != pred_probs.shape[:1]:
        raise ValueError(f"`pred_probs` must be [N, K] and `labels` [N], got {tuple(pred_probs.shape)}, {tuple(labels.shape)}")
    p = pred_probs.double().cpu().numpy()
    p = p / p.sum(axis=1, keepdims=True)
    y = labels.cpu().numpy()
    issues = find_label_issues(labels=y, pred_probs=p)
    quality = get_label_quality_scores(labels=y, pred_probs=p, method="self_confidence")
    return LabelIssues(torch.as_tensor(issues, dtype=torch.bool), 1.0 - torch.as_tensor(quality, dtype=torch.float64))
