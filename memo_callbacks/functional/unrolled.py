"""Loss sensitivity as the paper defines it: the gradient of a later loss through the unrolled SGD updates.

Arpit et al. (2017, Section 3.2) define ``g_x^t = ||dL_t / dx||_1``, where ``L_t`` is the mean minibatch loss after
``t`` SGD updates and ``x`` is a training input that took part in earlier updates: ``x`` acts on ``L_t`` only through
the parameter updates it took part in (the minibatch's own inputs at step ``t`` are cut from the graph). The loss
sensitivity of ``x`` is ``g_bar_x``, the mean of ``g_x^t`` over the measured steps.

How it is computed here (one forward replay, one reverse sweep per chunk of measured steps):

1. **Forward replay.** From a parameter snapshot ``theta_0`` (and momentum buffers), replay the recorded steps
   ``theta_{s+1} = SGD(theta_s, grad L(theta_s; x_s))`` with :func:`torch.func.functional_call`, keeping every
   ``theta_s`` (detached): memory ``K * P`` numbers for ``K`` steps and ``P`` parameters (momentum doubles it).
2. **Reverse sweep with one adjoint per measured step.** The chain rule gives, for ``s < t``,
   ``dL_t/dx_s = (d theta_{s+1}/d x_s)^T lam_{s+1}`` and ``lam_s = (d theta_{s+1}/d theta_s)^T lam_{s+1}``, with
   ``lam_t = dL_t / d theta_t``. One sweep from the last measured step back to the window start carries the
   adjoints of *all* measured steps at once as the rows of a ``[R, P]`` matrix: each step is one batched
   vector-Jacobian product of the SGD update (a batched Hessian- and mixed-vector product, :func:`torch.func.vjp`
   under :func:`torch.func.vmap`), recomputed from the stored ``theta_s``, so there is no retained graph. The naive
   alternative, one ``autograd.grad(L_t, inputs)`` per measured step through a retained graph, costs
   ``O(M K)`` sequential step-backwards for ``M`` measured steps (``~62,500`` in the paper's setting); the sweep costs
   ``K`` batched ones.
3. **Accumulation.** An example drawn at several steps gets the *sum* of its contributions before the norm is taken,
   so a buffer ``[R, N_active, D]`` holds ``dL_t/dx`` for every row and every input that took part
   (``N_active`` examples of ``D`` values). When it would exceed ``max_buffer_bytes``, the measured steps are split
   into chunks and each chunk gets its own sweep (from its latest step back to the window start).

Cost: time ``O(chunks * K * R_chunk * B * c)`` (``c`` the cost of one example's forward-backward, ``B`` the batch
size), memory ``O(K * P + R_chunk * (P + N_active * D))``. The per-class matrix multiplies the rows by the number of
classes ``C`` (one adjoint per class and measured step), hence ``C`` times the memory, or ``C`` times more chunks.
See ``benchmarks/sensitivity.md`` for measured numbers.

Assumptions: the model is a deterministic function of its parameters and buffers in the mode it is in (put it in
eval mode when it has dropout or batch-norm: the replay then follows the SGD trajectory of the deterministic
network; buffers are held fixed), and the training loss of a step is the mean of the per-example losses of its batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vjp, vmap

from memo_callbacks.functional.sensitivity import (
    Norm,
    PerExampleLoss,
    check_norm,
    per_example_cross_entropy,
    per_example_norm,
)

Params = dict[str, Tensor]


@dataclass(frozen=True)
class SGDRule:
    """The hyperparameters of :class:`torch.optim.SGD` other than the learning rate, applied exactly as it does.

    ``d = grad + weight_decay * theta``; with momentum, ``buf = d`` on the first step and
    ``buf = momentum * buf + (1 - dampening) * d`` afterwards, then ``d = d + momentum * buf`` (Nesterov) or
    ``d = buf``; finally ``theta = theta - lr * d``.
    """

    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.momentum < 0:
            raise ValueError(f"`momentum` must be >= 0, got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"`nesterov` needs momentum > 0 and zero dampening, got momentum={self.momentum}, "
                f"dampening={self.dampening}"
            )

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer) -> SGDRule:
        """Read the rule from a :class:`torch.optim.SGD`; any other optimiser raises a ``TypeError``."""
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(
                f"`optimizer` must be torch.optim.SGD for the unrolled replay, got {type(optimizer).__name__}; "
                "other update rules are not supported (use mode='proxy' for them)"
            )
        keys = ("momentum", "dampening", "nesterov", "weight_decay", "maximize", "lr")
        first = {k: optimizer.param_groups[0].get(k) for k in keys}
        for i, group in enumerate(optimizer.param_groups[1:], start=1):
            other = {k: group.get(k) for k in keys}
            if other != first:
                raise ValueError(
                    f"`optimizer` param groups must share their hyperparameters for the unrolled replay, "
                    f"group 0 has {first} and group {i} has {other}"
                )
        if first["maximize"]:
            raise ValueError("`optimizer` must minimise (maximize=False) for the unrolled replay, got maximize=True")
        return cls(float(first["momentum"]), float(first["dampening"]), bool(first["nesterov"]),
                   float(first["weight_decay"]))

    def step(self, params: Params, bufs: Params | None, grads: Params, lr: float | Tensor) -> tuple[Params, Params]:
        """One update, out of place (differentiable). ``bufs=None`` means the momentum buffers are not initialised."""
        new_p: Params = {}
        new_b: Params = {}
        for k, p in params.items():
            d = grads[k]
            if self.weight_decay:
                d = d + self.weight_decay * p
            if self.momentum:
                b = d if bufs is None else self.momentum * bufs[k] + (1 - self.dampening) * d
                new_b[k] = b
                d = d + self.momentum * b if self.nesterov else b
            new_p[k] = p - lr * d
        return new_p, new_b


@dataclass
class UnrolledWindow:
    """What :func:`unrolled_sensitivity` replays: the state at the window start and the steps taken from there."""

    params: Params
    momentum_buffers: Params | None
    batch_indices: list[Tensor] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    rule: SGDRule = field(default_factory=SGDRule)

    @property
    def num_steps(self) -> int:
        return len(self.batch_indices)


class SGDWindowRecorder:
    """Records a window of SGD training for :func:`unrolled_sensitivity`.

    Call :meth:`start` before the first step of the window (it snapshots the optimised parameters and momentum
    buffers) and :meth:`record` before every step with the dataset indices of its minibatch (it also reads the
    learning rate the step will use, so schedulers are followed).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rec = SGDWindowRecorder(model, opt)
        >>> rec.start()
        >>> rec.record(torch.tensor([0, 2]))
        >>> rec.window.num_steps, sorted(rec.window.params)
        (1, ['bias', 'weight'])
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.rule = SGDRule.from_optimizer(optimizer)
        names = {id(p): n for n, p in model.named_parameters()}
        self._named: list[tuple[str, Tensor]] = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in names:
                    raise ValueError("`optimizer` holds a parameter that is not one of `model`'s parameters")
                self._named.append((names[id(p)], p))
        self._window: UnrolledWindow | None = None

    def start(self) -> None:
        params, bufs = self._capture()
        self._window = UnrolledWindow(params, bufs, rule=self.rule)

    def _capture(self) -> tuple[Params, Params | None]:
        """A copy of the optimised parameters and, once initialised, their momentum buffers."""
        params = {n: p.detach().clone() for n, p in self._named}
        bufs: Params | None = None
        if self.rule.momentum:
            found = [self.optimizer.state.get(p, {}).get("momentum_buffer") for _, p in self._named]
            if all(b is not None for b in found):
                bufs = {n: b.detach().clone() for (n, _), b in zip(self._named, found)}
        return params, bufs

    def record(self, indices: Tensor) -> None:
        if self._window is None:
            raise RuntimeError("SGDWindowRecorder.record() called before start()")
        self._window.batch_indices.append(indices.detach().flatten().long().clone())
        self._window.lrs.append(float(self.optimizer.param_groups[0]["lr"]))

    @property
    def started(self) -> bool:
        return self._window is not None

    @property
    def window(self) -> UnrolledWindow:
        if self._window is None:
            raise RuntimeError("SGDWindowRecorder has no window; call start() first")
        return self._window

    def reset(self) -> None:
        self._window = None


class SGDTrajectoryRecorder:
    """Records SGD steps by their global step number, with parameter snapshots at chosen steps, so that a window
    of the last ``K`` steps can be cut at any later time, across epoch boundaries.

    :meth:`snapshot` copies the parameters and momentum buffers *before* step ``s``; :meth:`record` stores step
    ``s``'s minibatch indices and learning rate (call both before the optimiser's step). :meth:`window` returns the
    steps ``[start, end)`` as an :class:`UnrolledWindow` starting from the snapshot taken at ``start``;
    :meth:`drop_before` forgets snapshots older than a step and the records no remaining snapshot needs. Memory: one
    parameter (and momentum) copy per held snapshot plus the index tensors of the steps since the oldest one. The
    caller chooses the snapshot steps (:class:`~memo_callbacks.LossSensitivity` takes one exactly ``K`` steps before
    each planned replay), so the window starts from the parameters training really had there.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rec = SGDTrajectoryRecorder(model, opt)
        >>> rec.snapshot(7)
        >>> rec.record(7, torch.tensor([0, 2]))
        >>> rec.record(8, torch.tensor([1, 3]))
        >>> rec.window(7, 9).num_steps, rec.snapshot_steps
        (2, [7])
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._base = SGDWindowRecorder(model, optimizer)  # checks the optimiser, names its parameters
        self.optimizer = optimizer
        self.rule = self._base.rule
        self.snapshots: dict[int, tuple[Params, Params | None]] = {}
        self.steps: dict[int, tuple[Tensor, float]] = {}

    @property
    def snapshot_steps(self) -> list[int]:
        return sorted(self.snapshots)

    def snapshot(self, step: int) -> None:
        self.snapshots[int(step)] = self._base._capture()

    def record(self, step: int, indices: Tensor) -> None:
        if not self.snapshots or min(self.snapshots) > step:
            raise RuntimeError(f"SGDTrajectoryRecorder.record({step}) called before any snapshot at or before it")
        self.steps[int(step)] = (indices.detach().flatten().long().clone(), float(self.optimizer.param_groups[0]["lr"]))

    def window(self, start: int, end: int) -> UnrolledWindow:
        """The recorded steps ``start .. end - 1`` from the snapshot taken at ``start``."""
        if start not in self.snapshots:
            raise KeyError(f"`start` must be a snapshot step, got {start}; snapshots at {self.snapshot_steps}")
        missing = [s for s in range(start, end) if s not in self.steps]
        if missing:
            raise RuntimeError(f"SGDTrajectoryRecorder: steps {missing[:8]} of the window [{start}, {end}) were not recorded")
        params, bufs = self.snapshots[start]
        return UnrolledWindow(params, bufs, [self.steps[s][0] for s in range(start, end)],
                              [self.steps[s][1] for s in range(start, end)], rule=self.rule)

    def drop_before(self, step: int) -> None:
        """Forget the snapshots taken before ``step`` and the records that no remaining snapshot needs."""
        self.snapshots = {s: v for s, v in self.snapshots.items() if s >= step}
        oldest = min(self.snapshots, default=None)
        self.steps = {s: v for s, v in self.steps.items() if oldest is not None and s >= oldest}

    @property
    def started(self) -> bool:
        return bool(self.snapshots)

    def reset(self) -> None:
        self.snapshots, self.steps = {}, {}

    def state_dict(self) -> dict:
        """Snapshots and records on the CPU (for a checkpoint)."""
        cpu = lambda d: None if d is None else {k: v.cpu() for k, v in d.items()}  # noqa: E731
        return {"snapshots": {s: (cpu(p), cpu(b)) for s, (p, b) in self.snapshots.items()},
                "steps": {s: (i.cpu(), lr) for s, (i, lr) in self.steps.items()}}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        to = lambda d: None if d is None else {k: v.to(device) for k, v in d.items()}  # noqa: E731
        self.snapshots = {int(s): (to(p), to(b)) for s, (p, b) in state["snapshots"].items()}
        self.steps = {int(s): (i.to(device), float(lr)) for s, (i, lr) in state["steps"].items()}


@dataclass
class UnrolledSensitivity:
    """Result of :func:`unrolled_sensitivity`, kept as sums so that shards of measured steps merge exactly.

    Attributes:
        steps: ``[M]`` the measured steps (window positions).
        per_step: ``[M, N]`` ``g_x^t`` for every measured step and training example (0 where ``x`` took no part
            before ``t``).
        class_sums: ``[C, C]`` cell ``(i, j)``: sum over measured steps and training examples ``x`` of class ``j`` of
            ``||dL_t(y=i) / dx||``; None without ``per_class``.
        class_sizes: ``[C]`` examples of each class drawn before the last measured step (the denominators of the
            matrix: an example drawn only at or after it has no influence on any measured loss), or None.
    """

    steps: Tensor
    per_step: Tensor
    class_sums: Tensor | None = None
    class_sizes: Tensor | None = None

    @property
    def g_bar(self) -> Tensor:
        """``[N]`` loss sensitivity: the mean of ``g_x^t`` over the measured steps."""
        return self.per_step.mean(0)

    @property
    def class_matrix(self) -> Tensor | None:
        """``[C, C]`` the per-class matrix: mean over measured steps and over the examples of class ``j`` drawn
        before the last measured step (the others have no influence on any measured ``L_t`` and are left out)."""
        if self.class_sums is None or self.class_sizes is None:
            return None
        denom = self.steps.numel() * self.class_sizes.to(self.class_sums.dtype).clamp_min(1)
        return self.class_sums / denom.unsqueeze(0)


def unrolled_sensitivity(
    model: nn.Module,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    targets: Tensor,
    batch_indices: Sequence[Tensor],
    *,
    lr: float | Sequence[float],
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    momentum_buffers: Mapping[str, Tensor] | None = None,
    measure_steps: Sequence[int] | None = None,
    norm: Norm = "l1",
    loss_fn: PerExampleLoss = per_example_cross_entropy,
    per_class: bool = False,
    num_classes: int | None = None,
    max_buffer_bytes: int = 2**28,
) -> UnrolledSensitivity:
    """The paper's loss sensitivity ``g_x^t = ||dL_t / dx||`` through ``K`` replayed SGD steps.

    Step ``s`` (``0 <= s < K``) updates ``theta_s`` to ``theta_{s+1}`` with the mean loss of the minibatch
    ``inputs[batch_indices[s]]``. For a measured step ``t``, ``L_t`` is the mean loss of minibatch ``t`` at
    ``theta_t`` with that minibatch's inputs detached, and ``g_x^t`` is the norm of its gradient with respect to
    training input ``x`` through steps ``0 .. t-1`` (summed over every step in which ``x`` took part). See the module
    docstring for the algorithm and its cost.

    Args:
        model: the network; called as ``functional_call(model, params, x)``. Parameters not in ``params`` and
            buffers are held constant. Put it in eval mode if it has dropout or batch-norm.
        params: the optimised parameters at the window start, by name (e.g. ``UnrolledWindow.params``).
        inputs: ``[N, ...]`` every training input (only those indexed by ``batch_indices`` matter).
        targets: ``[N]`` training targets, as trained on.
        batch_indices: ``K`` tensors of dataset indices, one minibatch per step (repeats allowed).
        lr: the learning rate, or one per step.
        momentum, dampening, nesterov, weight_decay: as in :class:`torch.optim.SGD`.
        momentum_buffers: momentum buffers at the window start; None means not yet initialised (the first step
            sets them, as :class:`torch.optim.SGD` does on its first step).
        measure_steps: window positions ``t`` in ``[0, K)`` at which ``L_t`` is differentiated; default every 2nd
            step, ``1, 3, 5, ...`` (as the authors did).
        norm: ``"l1"`` (sum of ``|.|``: the authors' mean over pixels divided by ``D``), ``"l2"`` or ``"linf"``.
        loss_fn: per-example loss ``(logits, targets) -> [B]``; the step loss is its mean.
        per_class: also compute the per-class matrix (``L_t(y=i)`` is the part of ``L_t`` from the examples of
            class ``i``: their losses summed, divided by the batch size, so the parts sum to ``L_t``).
        num_classes: number of classes for ``per_class`` (default ``targets.max() + 1``).
        max_buffer_bytes: memory budget of the gradient accumulator; measured steps are chunked to fit it.

    Returns:
        :class:`UnrolledSensitivity` (``g_bar``, ``per_step``, ``class_matrix``).

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> steps = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]), torch.tensor([0, 5])]
        >>> params = {k: v.detach() for k, v in model.named_parameters()}
        >>> out = unrolled_sensitivity(model, params, x, y, steps, lr=0.1, measure_steps=[3])
        >>> out.g_bar.shape, bool(out.g_bar[0] > 0), float(out.g_bar[5]) == 0.0  # 5 only in step 3 itself
        (torch.Size([6]), True, False)
    """
    check_norm(norm)
    rule = SGDRule(momentum, dampening, nesterov, weight_decay)
    k_steps = len(batch_indices)
    if k_steps == 0:
        raise ValueError("`batch_indices` must hold at least one step, got an empty sequence")
    if not inputs.is_floating_point():
        raise TypeError(f"`inputs` must be floating point, got dtype {inputs.dtype}")
    n = inputs.shape[0]
    if targets.shape[:1] != (n,):
        raise ValueError(f"`targets` must have one entry per input ({n}), got shape {tuple(targets.shape)}")
    lrs = [float(lr)] * k_steps if isinstance(lr, (int, float)) else [float(v) for v in lr]
    if len(lrs) != k_steps:
        raise ValueError(f"`lr` must be a number or one value per step ({k_steps}), got {len(lrs)} values")
    if measure_steps is None:
        measure_steps = range(1, k_steps, 2)
    steps = sorted({int(t) for t in measure_steps})
    if not steps or steps[0] < 0 or steps[-1] >= k_steps:
        raise ValueError(f"`measure_steps` must be non-empty window positions in [0, {k_steps}), got {list(measure_steps)}")
    known = dict(model.named_parameters())
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"`params` must name parameters of `model`, got unknown names {unknown}")
    if momentum_buffers is not None and set(momentum_buffers) != set(params):
        raise ValueError(
            f"`momentum_buffers` must have the same names as `params`, got {sorted(momentum_buffers)} "
            f"for {sorted(params)}"
        )
    idx = [torch.as_tensor(b, device=inputs.device).flatten().long() for b in batch_indices]
    for s, b in enumerate(idx):
        if b.numel() == 0 or int(b.min()) < 0 or int(b.max()) >= n:
            raise ValueError(f"`batch_indices[{s}]` must hold indices in [0, {n}), got {b.tolist()[:8]}")
    c = 1
    if per_class:
        c = int(targets.max()) + 1 if num_classes is None else int(num_classes)
        if c < 1 or int(targets.max()) >= c or int(targets.min()) < 0:
            raise ValueError(f"`num_classes` must exceed every target (max {int(targets.max())}), got {num_classes}")
    if max_buffer_bytes <= 0:
        raise ValueError(f"`max_buffer_bytes` must be positive, got {max_buffer_bytes}")

    dtype, device = inputs.dtype, inputs.device
    consts = {k: v.detach() for k, v in known.items() if k not in params}
    consts.update({k: v.detach() for k, v in model.named_buffers()})

    def mean_loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, {**consts, **p}, (x,)), y).mean()

    def measured(p: Params, x: Tensor, y: Tensor) -> Tensor:
        losses = loss_fn(functional_call(model, {**consts, **p}, (x,)), y)  # [B]
        if not per_class:
            return losses.mean().unsqueeze(0)  # [1]
        onehot = F.one_hot(y, c).to(losses.dtype)  # [B, C]
        return onehot.T @ losses / y.numel()  # [C]

    # 1. Forward replay up to the last measured step, keeping every theta_s (detached).
    last = steps[-1]
    p: Params = {k: v.detach().to(device) for k, v in params.items()}
    b: Params | None = None if momentum_buffers is None else {k: v.detach().to(device) for k, v in momentum_buffers.items()}
    if not rule.momentum:
        b = None
    thetas: list[tuple[Params, Params | None]] = [(p, b)]
    for s in range(last):
        g = grad(mean_loss)(p, inputs[idx[s]], targets[idx[s]])
        p, b_new = rule.step(p, b, g, lrs[s])
        b = b_new if rule.momentum else None
        thetas.append(({k: v.detach() for k, v in p.items()}, None if b is None else {k: v.detach() for k, v in b.items()}))

    # Examples that take part before the last measured step, in compact positions.
    seen = torch.unique(torch.cat(idx[:last])) if last > 0 else torch.empty(0, dtype=torch.long, device=device)
    pos = torch.full((n,), -1, dtype=torch.long, device=device)
    pos[seen] = torch.arange(seen.numel(), device=device)
    d = inputs[0].numel()
    n_seen = max(1, seen.numel())

    per_step = torch.zeros(len(steps), n, dtype=dtype, device=device)
    class_sums = torch.zeros(c, c, dtype=dtype, device=device) if per_class else None
    per_t_bytes = c * n_seen * d * inputs.element_size()
    chunk = max(1, max_buffer_bytes // per_t_bytes)
    row_of = {t: i for i, t in enumerate(steps)}
    for start in range(0, len(steps), chunk):
        ts = steps[start : start + chunk][::-1]  # descending: the active rows are always a prefix
        acc = _reverse_sweep(ts, c, thetas, idx, inputs, targets, lrs, rule, pos, n_seen, d, mean_loss, measured)
        acc = acc.view(len(ts), c, n_seen, d)  # [T, C, N_seen, D]
        if seen.numel() == 0:
            continue
        total = acc.sum(1) if per_class else acc[:, 0]  # [T, N_seen, D]
        g_t = per_example_norm(total, norm, start_dim=2)  # [T, N_seen]
        for j, t in enumerate(ts):
            per_step[row_of[t], seen] = g_t[j]
        if class_sums is not None:
            by_class = per_example_norm(acc, norm, start_dim=3).sum(0)  # [C, N_seen]
            class_sums.index_add_(1, targets[seen].to(device), by_class)
    sizes = torch.bincount(targets.to(device)[seen], minlength=c)[:c] if per_class else None
    return UnrolledSensitivity(torch.tensor(steps), per_step, class_sums, sizes)


def _reverse_sweep(ts, c, thetas, idx, inputs, targets, lrs, rule, pos, n_seen, d, mean_loss, measured) -> Tensor:
    """Adjoints of the measured steps ``ts`` (descending), carried back to the window start; returns the
    ``[len(ts) * c, n_seen, d]`` accumulated input gradients."""
    rows = len(ts) * c
    p0, b0 = thetas[0]
    lam_p = {k: torch.zeros(rows, *v.shape, dtype=v.dtype, device=v.device) for k, v in p0.items()}
    has_bufs = bool(rule.momentum)
    lam_b = {k: torch.zeros(rows, *v.shape, dtype=v.dtype, device=v.device) for k, v in p0.items()} if has_bufs else {}
    acc = torch.zeros(rows, n_seen, d, dtype=inputs.dtype, device=inputs.device)
    active = 0
    for s in range(ts[0] - 1, -1, -1):
        while active < len(ts) and ts[active] == s + 1:  # seed the adjoint of L_t at theta_t
            t = ts[active]
            seed = jacrev(measured)(thetas[t][0], inputs[idx[t]], targets[idx[t]])  # {name: [c, *shape]}
            for k in lam_p:
                lam_p[k][active * c : (active + 1) * c] = seed[k]
            active += 1
        if active == 0:
            continue
        r = active * c
        p_s, b_s = thetas[s]
        x_s, y_s, lr_s = inputs[idx[s]], targets[idx[s]], lrs[s]

        def step_fn(p: Params, b: Params, x: Tensor) -> tuple[Params, Params]:
            return rule.step(p, b if b_s is not None else None, grad(mean_loss)(p, x, y_s), lr_s)

        _, vjp_fn = vjp(step_fn, p_s, b_s if b_s is not None else {}, x_s)
        cot_b = {k: v[:r] for k, v in lam_b.items()}
        gp, gb, gx = vmap(vjp_fn)(({k: v[:r] for k, v in lam_p.items()}, cot_b))
        for k in lam_p:
            lam_p[k][:r] = gp[k]
        for k in lam_b:  # gradient of the state buffers: zero when they were not initialised at step s
            lam_b[k][:r] = gb[k] if k in gb else 0.0
        acc[:r].index_add_(1, pos[idx[s]], gx.reshape(r, x_s.shape[0], d))
    return acc
