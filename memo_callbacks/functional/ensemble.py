"""Many independent small MLPs trained at once, for Figure 1: which examples are consistently easy or hard.

Figure 1 of Arpit et al. (2017) trains a network for one epoch 100 times (new initialisation and data order each
run) and plots, sorted, the fraction of runs in which each of 1,000 examples is misclassified. Training 100 models
one after the other spends most of its time in per-step overhead on such small problems; here the E members'
parameters are stacked (``[E, in, out]``) and every SGD step is one batched matmul per layer (``torch.baddbmm``)
over all members, each member drawing its own minibatch from its own permutation.

Seeding: member ``k`` of seed ``s`` gets its initialisation and its data order from local generators seeded by a
hash of ``(s, k, stream)``. Nothing touches the global RNG, and member ``k`` is the same whatever the ensemble
size, so a run of 100 members extends a run of 10.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
    >>> run = train_ensemble(x, y, num_members=4, hidden=(8,), lr=0.1, batch_size=16, seed=0)
    >>> run.correct.shape, run.correct.dtype
    (torch.Size([4, 64]), torch.bool)
    >>> misclassification_rate(run.correct).shape
    torch.Size([64])
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.checks import check_seed

EnsembleInit = Literal["default", "glorot_uniform"]
ReferenceMethod = Literal["quantile", "simulate"]


def member_seed(seed: int, member: int, stream: str) -> int:
    """A 63-bit seed for one member's named random stream (``"init"`` or ``"order"``), stable across versions."""
    digest = hashlib.blake2b(f"{check_seed(seed)}/{member}/{stream}".encode(), digest_size=8).digest()  # an int: 0.0 is not 0
    return int.from_bytes(digest, "little") & (2**63 - 1)


def member_generator(seed: int, member: int, stream: str) -> torch.Generator:
    """A local CPU generator seeded by :func:`member_seed`."""
    return torch.Generator().manual_seed(member_seed(seed, member, stream))


@dataclass
class MLPParams:
    """Stacked parameters of E MLPs: layer ``l`` maps ``x [E, B, in]`` to ``x @ weights[l] + biases[l]``.

    Attributes:
        weights: per layer, ``[E, in, out]`` (transposed relative to :class:`torch.nn.Linear`'s ``[out, in]``).
        biases: per layer, ``[E, out]``.
    """

    weights: list[Tensor]
    biases: list[Tensor]

    @property
    def num_members(self) -> int:
        return self.weights[0].shape[0]

    def member(self, k: int) -> list[tuple[Tensor, Tensor]]:
        """Member ``k`` as ``(weight [out, in], bias [out])`` pairs, the layout of :class:`torch.nn.Linear`."""
        return [(w[k].T.contiguous(), b[k].clone()) for w, b in zip(self.weights, self.biases)]

    def parameters(self) -> list[Tensor]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]


def init_mlp_params(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    num_members: int,
    seed: int,
    init: EnsembleInit = "default",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> MLPParams:
    """Independent initialisations of ``num_members`` MLPs ``in_features -> hidden... -> num_classes``.

    ``"default"`` is PyTorch's :class:`torch.nn.Linear` distribution (weights and biases uniform in
    ``+-1/sqrt(fan_in)``); ``"glorot_uniform"`` is Glorot-uniform weights and zero biases (the paper's Figure 3).
    Member ``k`` draws from :func:`member_generator` ``(seed, k, "init")``, layer by layer, weight then bias, each
    weight drawn in the ``[out, in]`` layout.
    """
    _check_architecture(in_features, hidden, num_classes)
    if init not in ("default", "glorot_uniform"):
        raise ValueError(f"`init` must be 'default' or 'glorot_uniform', got {init!r}")
    widths = [in_features, *hidden, num_classes]
    per_member: list[list[tuple[Tensor, Tensor]]] = []
    for k in range(num_members):
        g = member_generator(seed, k, "init")
        layers = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            if init == "default":
                bound = 1.0 / math.sqrt(fan_in)
                w = (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 - 1) * bound
                b = (torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 - 1) * bound
            else:
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                w = (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 - 1) * bound
                b = torch.zeros(fan_out, dtype=torch.float64)
            layers.append((w, b))
        per_member.append(layers)
    weights, biases = [], []
    for layer in range(len(widths) - 1):
        # [E, out, in] -> [E, in, out] so that a batch [E, B, in] multiplies on the right
        weights.append(torch.stack([m[layer][0] for m in per_member]).transpose(1, 2).to(device, dtype).contiguous())
        biases.append(torch.stack([m[layer][1] for m in per_member]).to(device, dtype).contiguous())
    return MLPParams(weights, biases)


def member_orders(num_examples: int, num_members: int, epoch: int, seed: int) -> Tensor:
    """``[E, N]`` the data order of every member in one epoch: member ``k``'s permutation comes from
    :func:`member_generator` ``(seed, k, "order")`` after ``epoch`` earlier permutations."""
    out = torch.empty(num_members, num_examples, dtype=torch.long)
    for k in range(num_members):
        g = member_generator(seed, k, "order")
        for _ in range(epoch):
            torch.randperm(num_examples, generator=g)
        out[k] = torch.randperm(num_examples, generator=g)
    return out


def mlp_forward(params: MLPParams, x: Tensor) -> Tensor:
    """Logits ``[E, B, K]`` of every member: ``x`` is ``[E, B, in]`` (one batch per member) or ``[B, in]`` (shared)."""
    h = x
    last = len(params.weights) - 1
    for i, (w, b) in enumerate(zip(params.weights, params.biases)):
        if h.ndim == 2:  # a batch shared by all members: [B, in] @ [E, in, out] -> [E, B, out]
            h = torch.matmul(h, w) + b.unsqueeze(1)
        else:
            h = torch.baddbmm(b.unsqueeze(1), h, w)  # [E, B, in] @ [E, in, out] + [E, 1, out]
        if i < last:
            h = torch.relu(h)
    return h


@dataclass
class EnsembleRun:
    """What :func:`train_ensemble` returns.

    Attributes:
        correct: ``[E, N]`` bool, whether member ``k`` classifies example ``i`` as its (trained-on) label after
            training, evaluated with the final parameters.
        loss: ``[E, N]`` float32, the cross-entropy of each example under each member after training.
        params: the final stacked parameters.
        members: ``[E, N]`` bool, which examples each member trained on (all True without ``members=``).
    """

    correct: Tensor
    loss: Tensor
    params: MLPParams
    members: Tensor | None = None


def train_ensemble(
    x: Tensor,
    y: Tensor,
    num_members: int = 100,
    hidden: Sequence[int] = (256, 256),
    num_classes: int | None = None,
    lr: float = 0.01,
    batch_size: int = 32,
    epochs: int = 1,
    seed: int = 0,
    init: EnsembleInit = "default",
    drop_last: bool = False,
    eval_batch_size: int = 4096,
    members: Tensor | None = None,
) -> EnsembleRun:
    """Train ``num_members`` independent MLPs with plain SGD on the same data (or each on its own subset), all at once.

    Each member has its own seeded initialisation (:func:`init_mlp_params`) and its own seeded data order per
    epoch (:func:`member_orders`); a step takes the next ``batch_size`` examples of each member's permutation and
    updates every member with the gradient of its own mean cross-entropy (``p -= lr * grad``). Member ``k`` is
    therefore exactly a plain single-model SGD run (up to float summation order); the test suite checks this
    against a sequential ``torch.nn`` / ``torch.optim.SGD`` loop. Runs on ``x``'s device, in ``x``'s float dtype.

    With ``members`` (an ``[E, N]`` bool mask), member ``k`` trains only on the examples ``i`` with
    ``members[k, i]``: each epoch it visits them in the order of its own permutation of its ``M`` subset positions
    (the subset listed in ascending index order), so member ``k`` is exactly member ``k`` of a run on
    ``x[members[k]], y[members[k]]`` alone with the same seed. Every row must hold the same number ``M`` of
    examples (as in Feldman and Zhang's subsampling at a fixed rate), so all members take the same number of steps
    of the same batch size; the evaluation after training still covers all N examples.

    Args:
        x: ``[N, ...]`` inputs (flattened to ``[N, D]``).
        y: ``[N]`` integer labels, the ones trained on.
        num_members: E, the number of independent runs (100 in Figure 1).
        hidden: hidden layer widths of the MLP (ReLU after each).
        num_classes: K; ``y.max() + 1`` by default.
        lr: SGD learning rate.
        batch_size: minibatch size of every member.
        epochs: passes over the data (1 in Figure 1).
        seed: seeds every member's initialisation and data order (local generators only).
        init: ``"default"`` (PyTorch's Linear) or ``"glorot_uniform"``.
        drop_last: drop each epoch's last incomplete minibatch.
        eval_batch_size: examples per chunk of the final evaluation pass.
        members: optional ``[E, N]`` bool training-set membership of every member, each row with the same number
            of True entries; None trains every member on all N examples.

    Returns:
        :class:`EnsembleRun` with the ``[E, N]`` correctness and losses on all N examples after training.

    Raises:
        ValueError: on an invalid argument (the message names it).
    """
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` must be [N, ...] and `y` [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"`x` must be a floating tensor, got {x.dtype}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"`y` must hold integer labels, got {y.dtype}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("`x` must hold at least one example, got 0")
    seed = check_seed(seed)
    if not isinstance(num_members, int) or num_members < 1:
        raise ValueError(f"`num_members` must be a positive integer, got {num_members!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    subsets = None  # [E, M] each member's training examples, ascending
    m = n
    if members is not None:
        if not torch.is_tensor(members) or members.dtype != torch.bool or tuple(members.shape) != (num_members, n):
            shape = tuple(members.shape) if torch.is_tensor(members) else type(members).__name__
            dtype = members.dtype if torch.is_tensor(members) else None
            raise ValueError(f"`members` must be a bool tensor of shape ({num_members}, {n}) [num_members, N], "
                             f"got {shape} of {dtype}")
        sizes = members.sum(dim=1)
        if int(sizes.min()) != int(sizes.max()):
            raise ValueError(f"`members` rows must all hold the same number of examples, got sizes from "
                             f"{int(sizes.min())} to {int(sizes.max())}")
        m = int(sizes[0])
        if m == 0:
            raise ValueError("`members` rows must hold at least one example, got 0")
        # stable sort puts each row's True positions first, in ascending index order: [E, N] -> [E, M]
        subsets = torch.sort((~members).to(torch.int8), dim=1, stable=True).indices[:, :m].to(x.device)
    if drop_last and batch_size > m:
        raise ValueError(f"`batch_size` must be at most the {m} examples with drop_last=True, got {batch_size}")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr}")
    if eval_batch_size < 1:
        raise ValueError(f"`eval_batch_size` must be >= 1, got {eval_batch_size}")
    y = y.long()
    if int(y.min()) < 0:
        raise ValueError(f"`y` must hold labels >= 0, got {int(y.min())}")
    k = int(y.max()) + 1 if num_classes is None else num_classes
    if k <= int(y.max()):
        raise ValueError(f"`num_classes` must exceed the largest label {int(y.max())}, got {num_classes}")

    flat = x.reshape(n, -1)  # [N, ...] -> [N, D]
    params = init_mlp_params(flat.shape[1], hidden, k, num_members, seed, init, flat.device, flat.dtype)
    tensors = params.parameters()
    for p in tensors:
        p.requires_grad_(True)
    order_gens = [member_generator(seed, m, "order") for m in range(num_members)]
    steps = m // batch_size if drop_last else math.ceil(m / batch_size)
    for _ in range(epochs):
        orders = torch.stack([torch.randperm(m, generator=g) for g in order_gens]).to(flat.device)  # [E, M]
        if subsets is not None:
            orders = subsets.gather(1, orders)  # positions in each member's subset -> dataset indices [E, M]
        for s in range(steps):
            idx = orders[:, s * batch_size : (s + 1) * batch_size]  # [E, B]
            logits = mlp_forward(params, flat[idx])  # [E, B, in] -> [E, B, K]
            # the sum over members of each member's mean loss: member k's gradient is that of its own mean loss
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="sum") / idx.shape[1]
            grads = torch.autograd.grad(loss, tensors)
            with torch.no_grad():
                for p, g in zip(tensors, grads):
                    p.sub_(g, alpha=lr)
    with torch.no_grad():
        for p in tensors:
            p.requires_grad_(False)
        correct = torch.empty(num_members, n, dtype=torch.bool, device=flat.device)
        losses = torch.empty(num_members, n, dtype=torch.float32, device=flat.device)
        for start in range(0, n, eval_batch_size):
            chunk = slice(start, start + eval_batch_size)
            logits = mlp_forward(params, flat[chunk])  # [E, b, K]
            target = y[chunk].expand(num_members, -1)  # [E, b]
            correct[:, chunk] = logits.argmax(-1) == target
            losses[:, chunk] = F.cross_entropy(logits.transpose(1, 2).float(), target, reduction="none")
    if members is None:
        members = torch.ones(num_members, n, dtype=torch.bool, device=flat.device)
    return EnsembleRun(correct=correct, loss=losses, params=params, members=members.to(flat.device))


def misclassification_rate(correct: Tensor) -> Tensor:
    """``[N]`` the fraction of runs (rows of ``correct [E, N]``) that misclassify each example."""
    if correct.ndim != 2 or correct.shape[0] == 0:
        raise ValueError(f"`correct` must be [runs, N] with at least one run, got shape {tuple(correct.shape)}")
    return 1.0 - correct.double().mean(dim=0)


def binomial_reference(
    num_runs: int,
    p: float,
    num_examples: int,
    method: ReferenceMethod = "quantile",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[N]`` ascending misclassification rates expected if every example had the same rate ``p``.

    Figure 1's reference: with ``E = num_runs`` independent runs, each example's rate is ``Binomial(E, p) / E``.
    ``"quantile"`` returns the exact quantiles of that distribution at the plotting positions ``(i + 0.5) / N``
    (deterministic); ``"simulate"`` draws N rates and sorts them (needs ``generator``).
    Use ``p = misclassification_rate(correct).mean()`` to compare with data of the same average difficulty.
    """
    if not isinstance(num_runs, int) or num_runs < 1:
        raise ValueError(f"`num_runs` must be a positive integer, got {num_runs!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must be in [0, 1], got {p}")
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"`num_examples` must be a positive integer, got {num_examples!r}")
    if method == "simulate":
        if generator is None:
            raise ValueError("`generator` must be a torch.Generator with method='simulate', got None")
        draws = torch.binomial(torch.full((num_examples,), float(num_runs), dtype=torch.float64),
                               torch.full((num_examples,), float(p), dtype=torch.float64), generator=generator)
        return (draws / num_runs).sort().values
    if method != "quantile":
        raise ValueError(f"`method` must be 'quantile' or 'simulate', got {method!r}")
    ks = torch.arange(num_runs + 1, dtype=torch.float64)
    if p in (0.0, 1.0):
        pmf = (ks == num_runs * p).double()
    else:
        log_pmf = (
            torch.lgamma(torch.tensor(num_runs + 1.0, dtype=torch.float64))
            - torch.lgamma(ks + 1)
            - torch.lgamma(num_runs - ks + 1)
            + ks * math.log(p)
            + (num_runs - ks) * math.log1p(-p)
        )
        pmf = log_pmf.exp()
    cdf = pmf.cumsum(0)
    cdf = cdf / cdf[-1]
    q = (torch.arange(num_examples, dtype=torch.float64) + 0.5) / num_examples
    k = torch.searchsorted(cdf, q).clamp_max(num_runs)  # smallest k with cdf[k] >= q
    return k.double() / num_runs


def _check_architecture(in_features: int, hidden: Sequence[int], num_classes: int) -> None:
    if in_features < 1:
        raise ValueError(f"`in_features` must be >= 1, got {in_features}")
    if any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"`hidden` widths must be positive integers, got {tuple(hidden)}")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {num_classes}")
