"""Memorization and consistency scores from many models trained on random subsets.

Feldman and Zhang ("What Neural Networks Memorize and Why", NeurIPS 2020) define the memorization of training
example ``i`` (with its given, possibly noisy, label) as

    mem(i) = P(a model trained on S classifies i correctly | i in S) - P(... | i not in S),

over random subsets ``S`` of a fixed size ``m = round(ratio * N)``, and estimate both probabilities from E models,
each trained on its own random subset: the first from the models that trained on ``i`` (``n_in`` of them), the
second from those that held it out (``n_out``). Jiang et al. ("Characterizing Structural Regularities of Labeled
Data in Overparameterized Models", ICML 2021) call the second term, the expected accuracy on ``i`` of models trained
on subsets of size ``m`` that exclude ``i``, the consistency score (C-score), and integrate it over several subset
ratios. A high mem and a low C-score both mark an example that the rest of the data does not explain: an atypical
or a mislabeled one.

The E models are the vectorised ensemble of :func:`~memo_callbacks.functional.ensemble.train_ensemble` (each
member with its own seeded subset, initialisation and data order). Member ``k``'s subset comes from its own local
generator (:func:`~memo_callbacks.functional.ensemble.member_generator` ``(seed, k, "subset")``), so, as for the
initialisation, member ``k`` is the same whatever the number of models: 100 models extend a run of 10.

Standard errors are those of the plug-in estimates: ``sqrt(p_in (1 - p_in) / n_in + p_out (1 - p_out) / n_out)``
for mem (two independent binomial proportions) and ``sqrt(p_out (1 - p_out) / n_out)`` for the C-score. They are 0
when a proportion is 0 or 1, as plug-in binomial errors are; with few models read them as rough. When no model
held an example in (``n_in = 0``) or out (``n_out = 0``), its mem, the C-score that needs the missing side, and
their standard errors are NaN: that example was not measured (raise ``num_models`` or move ``subset_ratio`` away
from 0 and 1).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    >>> s = memorization_scores(x, y, num_models=8, subset_ratio=0.5, hidden=(16,), epochs=5, lr=0.1, seed=0)
    >>> s.mem.shape, s.in_counts.sum().item() == 8 * 30
    (torch.Size([60]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from memo_callbacks.functional.ensemble import EnsembleInit, member_generator, member_seed, train_ensemble


@dataclass
class MemorizationScores:
    """Per-example memorization and consistency estimates; every field is ``[N]`` unless stated.

    Attributes:
        mem: ``in_accuracy - out_accuracy`` (Feldman and Zhang's memorization estimate), NaN where
            ``in_counts`` or ``out_counts`` is 0.
        mem_stderr: its plug-in standard error, NaN where ``mem`` is.
        cscore: ``out_accuracy``, the held-out accuracy (Jiang et al.'s consistency score at this subset ratio),
            NaN where ``out_counts`` is 0.
        cscore_stderr: its plug-in standard error ``sqrt(p (1 - p) / n_out)``, NaN where ``cscore`` is.
        in_counts: number of models that trained on the example (int64).
        out_counts: number of models that held it out (int64).
        in_accuracy: fraction of the ``in_counts`` models that classify it as its label, NaN where none.
        out_accuracy: the same over the ``out_counts`` models (equal to ``cscore``).
        correct: ``[E, N]`` bool, whether each run classifies each example as its label (the estimator's input).
        members: ``[E, N]`` bool, which examples each run trained on (the estimator's input).
    """

    mem: Tensor
    mem_stderr: Tensor
    cscore: Tensor
    cscore_stderr: Tensor
    in_counts: Tensor
    out_counts: Tensor
    in_accuracy: Tensor
    out_accuracy: Tensor
    correct: Tensor | None = None
    members: Tensor | None = None


@dataclass
class ConsistencyScores:
    """Jiang et al.'s C-score integrated over subset ratios; every field is ``[N]`` unless stated.

    Attributes:
        cscore: the mean over ratios of the held-out accuracy at each ratio (NaN where any ratio has no held-out
            model for the example).
        cscore_stderr: ``sqrt(sum_r stderr_r^2) / R``, the ratios' runs being independent.
        ratios: ``[R]`` the subset ratios.
        per_ratio: ``[R, N]`` the held-out accuracy at each ratio.
        per_ratio_stderr: ``[R, N]`` its standard error.
        out_counts: ``[R, N]`` held-out models per ratio and example.
    """

    cscore: Tensor
    cscore_stderr: Tensor
    ratios: Tensor
    per_ratio: Tensor
    per_ratio_stderr: Tensor
    out_counts: Tensor


def subset_size(num_examples: int, subset_ratio: float) -> int:
    """``round(subset_ratio * num_examples)``, the training-set size of every model at that ratio."""
    return int(round(subset_ratio * num_examples))


def random_subsets(num_examples: int, num_models: int, subset_ratio: float, seed: int) -> Tensor:
    """``[E, N]`` bool: model ``k`` trains on ``round(subset_ratio * N)`` examples drawn without replacement by
    :func:`~memo_callbacks.functional.ensemble.member_generator` ``(seed, k, "subset")`` (the first ``m`` of a
    seeded permutation). Row ``k`` does not depend on ``num_models``; the global RNG is not touched.

    Raises:
        ValueError: on a non-positive count, or a ratio outside (0, 1) or one that leaves a model with no training
            example or no held-out one.
    """
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"`num_examples` must be a positive integer, got {num_examples!r}")
    if not isinstance(num_models, int) or num_models < 1:
        raise ValueError(f"`num_models` must be a positive integer, got {num_models!r}")
    _check_ratio(subset_ratio, num_examples)
    m = subset_size(num_examples, subset_ratio)
    out = torch.zeros(num_models, num_examples, dtype=torch.bool)
    for k in range(num_models):
        chosen = torch.randperm(num_examples, generator=member_generator(seed, k, "subset"))[:m]
        out[k, chosen] = True
    return out


def memorization_from_runs(correct: Tensor, members: Tensor) -> MemorizationScores:
    """The Feldman-Zhang estimator from E runs: ``correct[k, i]`` whether run ``k`` classifies example ``i`` as
    its label, ``members[k, i]`` whether run ``k`` trained on it (both ``[E, N]`` bool).

    Pure arithmetic (no training): in/out counts, accuracies, mem, C-score and their standard errors as described
    in the module docstring, in float64. Sums and counts only, so runs from several processes or several calls can
    be concatenated along ``E`` before calling this.

    Raises:
        ValueError: if the two are not bool tensors of the same ``[E, N]`` shape with ``E >= 1``.
    """
    for name, t in (("correct", correct), ("members", members)):
        if not torch.is_tensor(t) or t.dtype != torch.bool or t.ndim != 2 or t.shape[0] == 0:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            dtype = t.dtype if torch.is_tensor(t) else None
            raise ValueError(f"`{name}` must be a bool tensor [runs, N] with at least one run, got {shape} of {dtype}")
    if correct.shape != members.shape:
        raise ValueError(f"`correct` and `members` must have the same shape, got {tuple(correct.shape)} and "
                         f"{tuple(members.shape)}")
    members = members.to(correct.device)
    n_in = members.sum(0)  # [N] int64
    n_out = (~members).sum(0)
    hit_in = (correct & members).sum(0).double()
    hit_out = (correct & ~members).sum(0).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=correct.device)
    p_in = torch.where(n_in > 0, hit_in / n_in.clamp_min(1), nan)
    p_out = torch.where(n_out > 0, hit_out / n_out.clamp_min(1), nan)
    var_in = p_in * (1 - p_in) / n_in.clamp_min(1)
    var_out = p_out * (1 - p_out) / n_out.clamp_min(1)  # NaN where p_out is
    return MemorizationScores(
        mem=p_in - p_out,
        mem_stderr=(var_in + var_out).sqrt(),
        cscore=p_out.clone(),
        cscore_stderr=var_out.sqrt(),
        in_counts=n_in,
        out_counts=n_out,
        in_accuracy=p_in,
        out_accuracy=p_out,
        correct=correct,
        members=members,
    )


def memorization_scores(
    x: Tensor,
    y: Tensor,
    *,
    num_models: int = 100,
    subset_ratio: float = 0.7,
    hidden: Sequence[int] = (256, 256),
    num_classes: int | None = None,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 32,
    seed: int = 0,
    init: EnsembleInit = "default",
    eval_batch_size: int = 4096,
) -> MemorizationScores:
    """Feldman and Zhang's memorization scores and the C-score at one subset ratio, for every example of
    ``(x, y)``: ``num_models`` MLPs, model ``k`` trained with plain SGD on its own random subset of
    ``round(subset_ratio * N)`` examples (:func:`random_subsets`), all at once (:func:`train_ensemble`), then
    evaluated on all N examples; :func:`memorization_from_runs` does the estimate.

    Cost: ``num_models`` trainings of ``subset_ratio * N * epochs`` examples each, batched into one ensemble, so
    about ``num_models * subset_ratio`` times one full-data training of the same MLP in arithmetic, and
    ``num_models`` copies of its parameters in memory. Each example is held in by about ``subset_ratio *
    num_models`` models and held out by ``(1 - subset_ratio) * num_models``; the standard error of mem is at most
    ``0.5 * sqrt(1 / n_in + 1 / n_out)``.

    Args:
        x: ``[N, ...]`` float inputs (flattened).
        y: ``[N]`` integer labels, the ones trained on and scored against (noisy ones included).
        num_models: E, the number of models (Feldman and Zhang use thousands on CIFAR; tens are enough to rank
            examples on small data, see the standard errors).
        subset_ratio: the fraction of the N examples each model trains on (0.7 in Feldman and Zhang).
        hidden, num_classes, epochs, lr, batch_size, init, eval_batch_size: as in :func:`train_ensemble`.
        seed: seeds every model's subset, initialisation and data order (local generators only).

    Returns:
        :class:`MemorizationScores`, with the runs (``correct``, ``members``) attached.

    Raises:
        ValueError: on an invalid argument (the message names it), before any training.
    """
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` must be [N, ...] and `y` [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not isinstance(num_models, int) or num_models < 1:
        raise ValueError(f"`num_models` must be a positive integer, got {num_models!r}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("`x` must hold at least one example, got 0")
    _check_ratio(subset_ratio, n)
    members = random_subsets(n, num_models, subset_ratio, seed)
    run = train_ensemble(x, y, num_members=num_models, hidden=hidden, num_classes=num_classes, lr=lr,
                         batch_size=batch_size, epochs=epochs, seed=seed, init=init, eval_batch_size=eval_batch_size,
                         members=members.to(x.device))
    return memorization_from_runs(run.correct, run.members)


def consistency_scores(
    x: Tensor,
    y: Tensor,
    *,
    subset_ratios: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    num_models: int = 100,
    seed: int = 0,
    **kwargs,
) -> ConsistencyScores:
    """Jiang et al.'s C-score integrated over subset ratios: at each ratio, ``num_models`` models trained on random
    subsets of that size (:func:`memorization_scores`), the held-out accuracy per example; then the mean over
    the ratios (the C-score's integral over the ratio, by the rectangle rule on the given grid).

    The ratio at position ``r`` seeds its models with ``member_seed(seed, r, "ratio")``, so the ratios' runs are
    independent. Costs the sum of the ratios' :func:`memorization_scores`.

    Args:
        x, y: as in :func:`memorization_scores`.
        subset_ratios: the ratios (Jiang et al. use 10% to 90%).
        num_models: models per ratio.
        seed: seeds everything (local generators only).
        **kwargs: the MLP and SGD settings of :func:`memorization_scores` (``hidden``, ``epochs``, ``lr``, ...).

    Returns:
        :class:`ConsistencyScores`.

    Raises:
        ValueError: on an empty or invalid ``subset_ratios`` (the message names it), before any training.
    """
    ratios = tuple(subset_ratios)
    if not ratios:
        raise ValueError("`subset_ratios` must hold at least one ratio, got ()")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"`x` must be [N, ...] with N >= 1, got {tuple(x.shape)}")
    for ratio in ratios:
        _check_ratio(ratio, x.shape[0])
    per, err, counts = [], [], []
    for r, ratio in enumerate(ratios):
        s = memorization_scores(x, y, num_models=num_models, subset_ratio=ratio, seed=member_seed(seed, r, "ratio"),
                                **kwargs)
        per.append(s.cscore)
        err.append(s.cscore_stderr)
        counts.append(s.out_counts)
    per_t, err_t = torch.stack(per), torch.stack(err)  # [R, N]
    return ConsistencyScores(
        cscore=per_t.mean(0),
        cscore_stderr=err_t.pow(2).sum(0).sqrt() / len(ratios),
        ratios=torch.tensor(ratios, dtype=torch.float64),
        per_ratio=per_t,
        per_ratio_stderr=err_t,
        out_counts=torch.stack(counts),
    )


def _check_ratio(subset_ratio: float, num_examples: int) -> None:
    if isinstance(subset_ratio, bool) or not isinstance(subset_ratio, (int, float)) or math.isnan(subset_ratio) \
            or not 0.0 < subset_ratio < 1.0:
        raise ValueError(f"`subset_ratio` must be in (0, 1), got {subset_ratio!r}")
    m = subset_size(num_examples, subset_ratio)
    if not 1 <= m <= num_examples - 1:
        raise ValueError(f"`subset_ratio` {subset_ratio} gives subsets of {m} of the {num_examples} examples; each "
                         "model must train on at least one and hold out at least one")
