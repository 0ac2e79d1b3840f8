"""Per-example memorization signals from training dynamics, and how well each one finds the noisy labels.

Every dynamics signal is a plain function of per-epoch tensors ``[T, N]`` (``T`` recorded epochs, ``N`` examples
addressed by dataset index):

* forgetting events, never-learned and unforgettable examples (Toneva et al., "An Empirical Study of Example
  Forgetting during Deep Neural Network Learning", ICLR 2019);
* the margin and its area under the margin, AUM, with the threshold-samples cut-off (Pleiss et al., "Identifying
  Mislabeled Data using the Area Under the Margin Ranking", NeurIPS 2020);
* EL2N and GraNd scores early in training (Paul et al., "Deep Learning on a Data Diet: Finding Important Examples
  Early in Training", NeurIPS 2021);
* the data map: confidence, variability and correctness (Swayamdipta et al., "Dataset Cartography: Mapping and
  Diagnosing Datasets with Training Dynamics", EMNLP 2020).

:func:`noise_detection` scores any of them against the known noisy flags (AUROC and average precision), with the
sign of each signal taken from :data:`NOISE_SCORE_SIGN` (``+1``: a large value means "noisy").

Example:
    >>> import torch
    >>> correct = torch.tensor([[0, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.int8)  # 3 epochs x 3 examples
    >>> forgetting_events(correct).tolist(), forgetting_score(correct).tolist()
    ([0, 1, 0], [0.0, 1.0, 2.0])
    >>> noise_detection(torch.tensor([0.1, 0.9, 0.8, 0.2]), torch.tensor([False, True, True, False]))
    NoiseDetection(auroc=1.0, average_precision=1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Direction of each signal: ``+1`` when a larger value means "more likely mislabelled", ``-1`` when smaller does.
NOISE_SCORE_SIGN: dict[str, float] = {
    "forgetting": 1.0,  # noisy labels are forgotten often or never learned (Toneva et al.)
    "aum": -1.0,  # mislabelled examples have a low (negative) area under the margin (Pleiss et al.)
    "el2n": 1.0,  # far from the one-hot label early in training (Paul et al.)
    "grand": 1.0,  # large loss gradient early in training (Paul et al.)
    "confidence": -1.0,  # low mean probability of the assigned label (Swayamdipta et al.)
    "variability": -1.0,  # mislabelled examples sit in the hard-to-learn region: low confidence, low variability
    # (Swayamdipta et al., section 3); high variability marks the ambiguous region instead
    "correctness": -1.0,  # fraction of epochs the assigned label was predicted
    "loss": 1.0,  # mean training loss over epochs
    "loss_sensitivity": 1.0,  # input-gradient norm of the loss (Arpit et al. 2017)
    "mem": 1.0,  # Feldman-Zhang memorization estimate
    "cscore": -1.0,  # consistency score
    "cleanlab": 1.0,  # cleanlab's label-quality issue score (1 - self-confidence)
}


class NoiseDetection(NamedTuple):
    """How well a score ranks the noisy examples first."""

    auroc: float
    average_precision: float


class DataMap(NamedTuple):
    """Dataset-cartography coordinates of every example, each ``[N]``."""

    confidence: Tensor
    variability: Tensor
    correctness: Tensor


def _as_history(correct: Tensor, name: str = "correct") -> Tensor:
    """``[T, N]`` int8 codes (1 correct, 0 wrong, -1 not observed) from a bool or integer history."""
    if not isinstance(correct, Tensor) or correct.ndim != 2:
        raise ValueError(f"`{name}` must be a [T, N] tensor, got {getattr(correct, 'shape', type(correct).__name__)}")
    if correct.dtype == torch.bool:
        return correct.to(torch.int8)
    if correct.is_floating_point() or correct.is_complex():
        raise TypeError(f"`{name}` must be bool or integer codes 1/0/-1, got dtype {correct.dtype}")
    if correct.numel() and (int(correct.min()) < -1 or int(correct.max()) > 1):
        raise ValueError(f"`{name}` codes must be 1 (correct), 0 (wrong) or -1 (not observed)")
    return correct.to(torch.int8)


def forgetting_events(correct: Tensor) -> Tensor:
    """Number of forgetting events of each example: correct at one presentation, wrong at the next.

    Toneva et al. (2019), section 3: a forgetting event happens when ``acc_i^t > acc_i^{t+1}`` between two
    consecutive presentations. Epochs where an example was not observed (code ``-1``) are skipped, so the
    transition is taken between the presentations that did happen.

    Args:
        correct: ``[T, N]`` bool, or int8 codes 1 (correct) / 0 (wrong) / -1 (not observed).

    Returns:
        ``[N]`` int64 counts.
    """
    hist = _as_history(correct)
    prev = torch.full(hist.shape[1:], -1, dtype=torch.int8, device=hist.device)  # last observed outcome
    count = torch.zeros(hist.shape[1:], dtype=torch.int64, device=hist.device)
    for row in hist:
        seen = row >= 0
        count += (seen & (prev == 1) & (row == 0)).long()
        prev = torch.where(seen, row, prev)
    return count


def never_learned(correct: Tensor) -> Tensor:
    """``[N]`` bool: examples never classified correctly at any presentation (Toneva et al. 2019)."""
    return ~(_as_history(correct) == 1).any(dim=0)


def unforgettable(correct: Tensor) -> Tensor:
    """``[N]`` bool: learned at some presentation and never forgotten afterwards (Toneva et al. 2019).

    Like the paper, an example learned at its first presentation and kept counts as unforgettable; one that was
    wrong, then right for good, also has no forgetting event and counts too.
    """
    return ~never_learned(correct) & (forgetting_events(correct) == 0)


def forgetting_score(correct: Tensor, never_learned_value: Literal["max+1", "inf"] = "max+1") -> Tensor:
    """Forgetting count with never-learned examples ranked above every forgettable one.

    Toneva et al. (2019) sort examples by forgetting count and treat never-learned examples as forgotten an
    infinite number of times. ``"inf"`` does exactly that; ``"max+1"`` gives them one more than the largest
    count observed, which keeps the scores finite (same ranking).

    Args:
        correct: ``[T, N]`` history (see :func:`forgetting_events`).
        never_learned_value: ``"max+1"`` or ``"inf"``.

    Returns:
        ``[N]`` float64.
    """
    if never_learned_value not in ("max+1", "inf"):
        raise ValueError(f"`never_learned_value` must be 'max+1' or 'inf', got {never_learned_value!r}")
    score = forgetting_events(correct).double()
    never = never_learned(correct)
    if never_learned_value == "inf":
        fill = float("inf")
    else:
        fill = float(score[~never].max()) + 1.0 if (~never).any() else 1.0
    return score.masked_fill(never, fill)


def _check_logits(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"`logits` must be [B, K] and `targets` [B], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"`logits` needs at least 2 classes, got {logits.shape[1]}")


def margins(logits: Tensor, targets: Tensor) -> Tensor:
    """Margin of each example: logit of its assigned label minus the largest other logit (Pleiss et al. 2020).

    Args:
        logits: ``[B, K]``.
        targets: ``[B]`` the assigned (possibly noisy) labels.

    Returns:
        ``[B]`` float32 at least; negative when another class wins.
    """
    _check_logits(logits, targets)
    z = logits.detach().float()
    assigned = z.gather(1, targets[:, None]).squeeze(1)
    other = z.scatter(1, targets[:, None], float("-inf")).amax(dim=1)
    return assigned - other


def assigned_probability(logits: Tensor, targets: Tensor) -> Tensor:
    """``[B]`` softmax probability of the assigned label (the data map's per-epoch quantity)."""
    _check_logits(logits, targets)
    return logits.detach().float().softmax(dim=1).gather(1, targets[:, None]).squeeze(1)


def area_under_margin(margin: Tensor) -> Tensor:
    """AUM of each example: its margin averaged over the recorded epochs (Pleiss et al. 2020, eq. 2).

    Args:
        margin: ``[T, N]`` per-epoch margins; ``NaN`` marks an epoch where an example was not observed and is left
            out of its mean.

    Returns:
        ``[N]``; ``NaN`` for an example never observed.
    """
    if margin.ndim != 2:
        raise ValueError(f"`margin` must be [T, N], got {tuple(margin.shape)}")
    return margin.double().nanmean(dim=0)


def threshold_sample_labels(
    labels: Tensor, num_classes: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Labels for the threshold-samples run of AUM (Pleiss et al. 2020, section 3).

    A random ``N // (C + 1)`` of the examples are relabelled to a fake extra class ``C``: they are mislabelled by
    construction, so their AUM tells how low a mislabelled example's AUM goes. The network is then trained with
    ``C + 1`` outputs on the returned labels.

    Args:
        labels: ``[N]`` integer labels in ``[0, C)``.
        num_classes: ``C``.
        generator: source of the random subset.

    Returns:
        ``(labels [N], is_threshold [N] bool)``.
    """
    if labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(f"`labels` must be a [N] integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"`labels` must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    n = labels.numel()
    chosen = torch.randperm(n, generator=generator)[: n // (num_classes + 1)].to(labels.device)
    is_threshold = torch.zeros(n, dtype=torch.bool, device=labels.device)
    is_threshold[chosen] = True
    return labels.masked_fill(is_threshold, num_classes), is_threshold


def aum_threshold(aum: Tensor, is_threshold: Tensor, percentile: float = 99.0) -> float:
    """AUM cut-off: the ``percentile``-th percentile of the threshold samples' AUM (Pleiss et al. 2020).

    Examples (other than the threshold samples) whose AUM is at or below this value are flagged as mislabelled.

    Args:
        aum: ``[N]`` AUM of a run trained on :func:`threshold_sample_labels`.
        is_threshold: ``[N]`` bool, the threshold samples.
        percentile: in ``[0, 100]``; 99 in the paper.

    Returns:
        The cut-off (linear interpolation between order statistics, like ``numpy.percentile``).
    """
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"`percentile` must be in [0, 100], got {percentile}")
    if aum.shape != is_threshold.shape or is_threshold.dtype != torch.bool:
        raise ValueError(f"`is_threshold` must be a bool tensor shaped like `aum` {tuple(aum.shape)}")
    values = aum[is_threshold].double()
    values = values[~values.isnan()]
    if values.numel() == 0:
        raise ValueError("no threshold sample has an AUM")
    return float(torch.quantile(values, float(percentile) / 100.0))


def el2n(logits: Tensor, targets: Tensor) -> Tensor:
    """EL2N score: ``|| softmax(logits) - onehot(target) ||_2`` (Paul et al. 2021, eq. 2).

    Args:
        logits: ``[B, K]``, or ``[S, B, K]`` from ``S`` independently initialised models, whose scores are averaged
            (the paper averages over 10 seeds).
        targets: ``[B]``.

    Returns:
        ``[B]`` float32 at least.
    """
    stacked = logits if logits.ndim == 3 else logits[None]
    if stacked.ndim != 3:
        raise ValueError(f"`logits` must be [B, K] or [S, B, K], got {tuple(logits.shape)}")
    _check_logits(stacked[0], targets)
    p = stacked.detach().float().softmax(dim=-1)
    onehot = F.one_hot(targets, p.shape[-1]).to(p.dtype)
    return (p - onehot).norm(dim=-1).mean(dim=0)


def grand(
    models: nn.Module | Sequence[nn.Module],
    inputs: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    batch_size: int = 256,
) -> Tensor:
    """GraNd score: the norm of each example's loss gradient w.r.t. all trainable parameters (Paul et al. 2021).

    Computed with ``torch.func.vmap(grad(...))`` over the batch, in eval mode (no dropout / batch-norm updates);
    the modules' train flags are restored afterwards. With several models (different seeds) the norms are averaged.

    Args:
        models: a module, or a sequence of modules with the same input and output.
        inputs: ``[N, ...]``.
        targets: ``[N]``.
        loss_fn: ``loss_fn(logits [B, K], targets [B]) -> scalar``; mean cross-entropy by default (the
            per-example gradient of a single example's cross-entropy).
        batch_size: examples per vmapped chunk.

    Returns:
        ``[N]`` float32.
    """
    from torch.func import functional_call, grad, vmap

    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("`models` must be an nn.Module or a non-empty sequence of them")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if inputs.shape[0] != targets.shape[0] or targets.ndim != 1:
        raise ValueError(f"`inputs` [N, ...] and `targets` [N] disagree: {tuple(inputs.shape)}, {tuple(targets.shape)}")
    loss_fn = loss_fn or (lambda z, t: F.cross_entropy(z, t))
    total = torch.zeros(inputs.shape[0], dtype=torch.float32, device=inputs.device)
    for model in models:
        was_training = model.training
        model.eval()
        try:
            params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
            buffers = {k: b.detach() for k, b in model.named_buffers()}

            def loss_one(p: dict, x: Tensor, t: Tensor) -> Tensor:
                out = functional_call(model, (p, buffers), (x[None],))
                return loss_fn(out, t[None])

            per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
            for start in range(0, inputs.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                grads = per_example(params, inputs[sl], targets[sl])
                sq = sum(g.flatten(1).float().pow(2).sum(dim=1) for g in grads.values())
                total[sl] += sq.sqrt()
        finally:
            model.train(was_training)
    return total / len(models)


def data_map(prob: Tensor, correct: Tensor | None = None) -> DataMap:
    """Data-map coordinates (Swayamdipta et al. 2020, section 2).

    Confidence is the mean over epochs of the probability of the assigned label, variability its standard
    deviation (population std, as in the paper's eq. 2), correctness the fraction of epochs the assigned label
    was predicted. ``NaN`` probabilities (epochs an example was not observed) are left out.

    Args:
        prob: ``[T, N]`` per-epoch probabilities of the assigned label.
        correct: ``[T, N]`` history (bool or codes 1/0/-1); when omitted, ``prob > 0.5`` is used, which is exact
            only for two classes; pass it for more.

    Returns:
        :class:`DataMap` of ``[N]`` float64 tensors.
    """
    if prob.ndim != 2:
        raise ValueError(f"`prob` must be [T, N], got {tuple(prob.shape)}")
    p = prob.double()
    seen = ~p.isnan()
    count = seen.sum(dim=0).double()
    confidence = p.nansum(dim=0) / count
    variability = ((p - confidence).pow(2).masked_fill(~seen, 0.0).sum(dim=0) / count).sqrt()
    if correct is None:
        hits = (p > 0.5).double().masked_fill(~seen, 0.0).sum(dim=0)
        correctness = hits / count
    else:
        hist = _as_history(correct)
        if hist.shape != prob.shape:
            raise ValueError(f"`correct` must be shaped like `prob` {tuple(prob.shape)}, got {tuple(hist.shape)}")
        correctness = (hist == 1).sum(dim=0).double() / (hist >= 0).sum(dim=0).double()
    return DataMap(confidence, variability, correctness)


def _ranks(values: Tensor) -> Tensor:
    """1-based average ranks (ties share the mean of their ranks), float64."""
    order = values.argsort(stable=True)
    sorted_v = values[order]
    n = values.numel()
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = sorted_v[1:] != sorted_v[:-1]
    group = new_group.cumsum(0) - 1
    counts = torch.bincount(group).double()
    ends = counts.cumsum(0)
    avg = ends - (counts - 1) / 2  # mean of ranks (end - c + 1 .. end)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = avg[group]
    return ranks


def noise_detection(scores: Tensor, noisy: Tensor, sign: float = 1.0) -> NoiseDetection:
    """AUROC and average precision of ``sign * scores`` as a detector of the noisy examples.

    AUROC is the Mann-Whitney statistic with tied scores counted one half; average precision is
    ``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds in decreasing order (the step-wise definition of
    ``sklearn.metrics.average_precision_score``). Examples whose score is ``NaN`` are left out; ``+inf`` ranks first.

    Args:
        scores: ``[N]`` real scores.
        noisy: ``[N]`` bool, the examples whose label was corrupted.
        sign: ``+1`` when a large score means noisy, ``-1`` otherwise (see :data:`NOISE_SCORE_SIGN`).

    Returns:
        :class:`NoiseDetection`.

    Raises:
        ValueError: on mismatched shapes, or when only one class (all clean or all noisy) remains.
    """
    if scores.ndim != 1 or noisy.shape != scores.shape:
        raise ValueError(f"`scores` and `noisy` must both be [N], got {tuple(scores.shape)} and {tuple(noisy.shape)}")
    if noisy.dtype != torch.bool:
        raise TypeError(f"`noisy` must be a bool tensor, got {noisy.dtype}")
    if sign not in (1.0, -1.0):
        raise ValueError(f"`sign` must be +1 or -1, got {sign}")
    s = scores.detach().cpu().double() * sign
    y = noisy.detach().cpu()
    keep = ~s.isnan()
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"`noisy` must contain both clean and noisy examples, got {n_pos} noisy and {n_neg} clean")
    ranks = _ranks(s)
    auroc = (float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    # Average precision over distinct thresholds, from the highest score down.
    order = (-s).argsort(stable=True)
    s_sorted, y_sorted = s[order], y[order].double()
    last_of_group = torch.ones(s.numel(), dtype=torch.bool)
    last_of_group[:-1] = s_sorted[1:] != s_sorted[:-1]
    tp = y_sorted.cumsum(0)[last_of_group]
    predicted = torch.arange(1, s.numel() + 1, dtype=torch.float64)[last_of_group]
    precision = tp / predicted
    recall = tp / n_pos
    recall_step = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    ap = float((recall_step * precision).sum())
    return NoiseDetection(float(auroc), ap)
