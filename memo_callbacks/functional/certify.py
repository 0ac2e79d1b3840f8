"""Certified non-critical samples: a provable lower bound on the predicted class's margin over the L-inf box.

A sample ``x`` is non-critical when ``argmax f(x_hat) = argmax f(x) = c`` for every ``x_hat`` in its box, i.e. when
``min_j min_box (f_c - f_j) > 0``. :func:`certify` bounds that minimum from below for networks built of supported
layers; a sample whose bound is positive cannot flip, whatever LASS (:func:`~memo_callbacks.functional.lass`) does,
so ``lass(..., certify=True)`` skips it without changing any result.

**Bounds** (all in float64):

- ``"ibp"``: interval bound propagation: every layer's output box from its input box (exact for one affine map);
  the final affine layers are merged with the margin specification ``e_c - e_j`` before the box is taken.
- ``"crown-ibp"``: IBP boxes for the hidden layers, then one CROWN backward pass (Zhang et al., 2018, "Efficient
  Neural Network Robustness Certification with General Activation Functions") of the ``K`` margins through every
  layer down to the input box, with ReLU's linear relaxation (upper: the chord; lower: the adaptive slope ``alpha =
  1`` where ``u > -l``, else 0) and max pooling's (lower: the window's input with the largest lower bound; upper: that
  same input when its lower bound beats every other upper bound, else the largest upper bound).
- ``"crown"`` (default): as ``"crown-ibp"``, but the pre-activation bounds in front of each nonlinearity are CROWN's
  own (intersected with IBP's) wherever that layer has at most ``crown_neurons`` units (a backward pass with two
  specifications per unit; wider layers keep their IBP box).

Each stage runs only on the samples the cheaper stages left uncertified (unless ``exhaustive``), so a screen that
certifies most samples by IBP costs little more than two forward passes.

**Rounding.** The real forward pass runs in float32 (or the model's dtype) and rounds at every layer. Along the
layers a bound ``e`` on ``|computed - exact|`` is carried with the standard inner-product error bound:
``e_out = |W| e_in + gamma_{n+1} (|W| (|x| + e_in) + |b|)`` for an affine layer with fan-in ``n`` (``gamma_m = m u /
(1 - m u)``, ``u`` = the dtype's machine epsilon, twice the unit round-off, as a safety factor), ``|x|`` bounded by
the IBP box; ReLU and max pooling pass ``e`` on (they are 1-Lipschitz and exact). A sample is certified only when
``margin_lower_bound - e_c - e_j > 0`` for every ``j``: float32 rounding cannot make it flip, nor tie (``argmax``
breaks ties by index). The bound assumes convolutions accumulate their products by summation (GEMM or direct, as
CPU and cuDNN's default algorithms do; Winograd or FFT convolutions can round more), and TF32 off (LASS turns it off).
The box is widened by one float32 ulp at each end, so the float32 box that LASS computes always lies inside it.

**Networks.** ``model.as_bound_module()`` when the model has it (the project's models return their eval-mode
network with the noise layers as identities), else the model itself when it is an :class:`~torch.nn.Sequential`;
nested Sequentials are flattened. Supported layers: Linear, Conv2d (zero padding), ReLU, BatchNorm1d/2d (evaluated
with their running statistics), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (when it is a plain average pool), Flatten,
Dropout (the identity in evaluation mode), Identity, and zero padding (ZeroPad2d/ConstantPad2d with value 0;
negative padding crops). Anything else raises :class:`NotImplementedError`, which :func:`lass` treats as "no
screen". Before bounding anything, the float64 network's logits at the clean inputs are compared with the model's
own: a difference larger than the rounding allowance means ``as_bound_module()`` does not describe the model, and
raises :class:`NotImplementedError` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.checks import check_bool, check_choice, check_int

__all__ = ["CertifyResult", "Method", "METHODS", "bound_layers", "certify"]

Method = Literal["ibp", "crown-ibp", "crown"]
METHODS: tuple[str, ...] = ("ibp", "crown-ibp", "crown")
_F64 = torch.float64
#: Float64 round-off of the bound computation itself, added to the model dtype's epsilon (covers sums of ~1e5 terms).
_BOUND_EPS = 2.0**-40


@dataclass(frozen=True)
class CertifyResult:
    """The outcome of :func:`certify` for ``N`` samples (on the model's device).

    Attributes:
        certified: ``[N]`` bool, the prediction provably cannot change anywhere in the box.
        margin: ``[N]`` float64, a lower bound on ``min_j (f_c - f_j)`` over the box minus the rounding allowance
            (certified where > 0); for a sample certified by a cheaper stage, that stage's bound.
        predicted: ``[N]`` int64, the class ``c`` the model predicts at the clean input (its own forward pass).
    """

    certified: Tensor
    margin: Tensor
    predicted: Tensor


# ------------------------------------------------------------------------------------------------------- layers
class _Op:
    """One layer of the bound network, on float64 tensors ``[B, *shape]``; ``affine`` ops also transpose."""

    affine = True
    fan_in = 0  # terms of each output's inner product (0: no rounding, e.g. a reshape)

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        self.in_shape = in_shape
        self.out_shape = tuple(self.forward(torch.zeros(1, *in_shape, dtype=_F64)).shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def linear(self, x: Tensor) -> Tensor:
        """The linear part (the forward without its bias)."""
        return self.forward(x)

    def abs_linear(self, x: Tensor) -> Tensor:
        """The linear part with absolute weights (``|L| x``)."""
        return self.linear(x)

    def transpose(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``A [B, S, *out] -> (A L [B, S, *in], A b [B, S])``."""
        raise NotImplementedError

    def abs_bias(self, like: Tensor) -> Tensor | float:
        return 0.0

    def ibp(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        mid, rad = self.forward((lo + hi) / 2), self.abs_linear((hi - lo) / 2)
        return mid - rad, mid + rad

    def abs_linear_up(self, x: Tensor) -> Tensor:
        """An upper bound of ``|L| x`` for ``x >= 0`` (the error terms: may be computed in float32, rounded up)."""
        return self.abs_linear(x)

    def error(self, e: Tensor, mag: Tensor, u: float) -> Tensor:
        """A bound on ``|computed - exact|`` at the output, from the input's ``e`` and a bound ``mag`` on ``|exact|``."""
        if not self.fan_in:
            return self.abs_linear(e)
        g = _gamma(self.fan_in + 1, u)
        # |W| e + g (|W| (mag + e) + |b|) = |W| ((1 + g) e + g mag) + g |b|: one product
        return self.abs_linear_up((1 + g) * e + g * mag) + g * self.abs_bias(e)


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


_U32 = 2.0**-24  # float32's unit round-off


def _up32(x: Tensor) -> Tensor:
    """``x >= 0`` in float32, never below ``x`` (round to nearest loses at most ``u``; the factor wins it back)."""
    return x.float() * (1 + 2.0**-21)


def _up64(y: Tensor, n: int) -> Tensor:
    """A float32 sum of ``n`` non-negative terms is at least ``(1 - gamma_n)`` times the exact one: undo that."""
    return y.double() / (1 - _gamma(n + 2, _U32)) + 1e-30


def _flat(a: Tensor, shape: tuple[int, ...]) -> Tensor:
    return a.reshape(-1, *shape)


class _Linear(_Op):
    def __init__(self, m: nn.Linear, in_shape: tuple[int, ...]) -> None:
        if len(in_shape) != 1:
            raise NotImplementedError(f"certify: Linear needs a flat [B, F] input, got sample shape {in_shape}")
        self.w = m.weight.detach().to(_F64)
        self.b = m.bias.detach().to(_F64) if m.bias is not None else None
        self.w_abs = self.w.abs()
        self.w_abs32 = _up32(self.w_abs)
        self.fan_in = self.w.shape[1]
        super().__init__(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w, self.b)

    def linear(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w)

    def abs_linear(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w_abs)

    def abs_linear_up(self, x: Tensor) -> Tensor:
        return _up64(F.linear(_up32(x), self.w_abs32), self.fan_in)

    def abs_bias(self, like: Tensor) -> Tensor | float:
        return self.b.abs() if self.b is not None else 0.0

    def transpose(self, a: Tensor) -> tuple[Tensor, Tensor]:
        bias = a @ self.b if self.b is not None else a.new_zeros(a.shape[:2])
        return a @ self.w, bias


class _Conv(_Op):
    """A 2-d convolution (also average pooling: a depthwise convolution with uniform weights)."""

    def __init__(self, w: Tensor, b: Tensor | None, stride, padding, dilation, groups: int, in_shape) -> None:
        if len(in_shape) != 3:
            raise NotImplementedError(f"certify: Conv2d/AvgPool2d needs [B, C, H, W] inputs, got sample shape {in_shape}")
        self.w, self.b, self.w_abs = w, b, w.abs()
        self.w_abs32 = _up32(self.w_abs)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        super().__init__(in_shape)
        # conv_transpose2d must give back the input's size: the rows/columns the stride skipped at the end.
        full = [(o - 1) * s - 2 * p + d * (k - 1) + 1 for o, s, p, d, k in
                zip(self.out_shape[1:], stride, padding, dilation, w.shape[2:])]
        self.output_padding = tuple(i - f for i, f in zip(in_shape[1:], full))

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.w, self.b)

    def linear(self, x: Tensor) -> Tensor:
        return self._conv(x, self.w, None)

    def abs_linear(self, x: Tensor) -> Tensor:
        return self._conv(x, self.w_abs, None)

    def abs_linear_up(self, x: Tensor) -> Tensor:
        return _up64(self._conv(_up32(x), self.w_abs32, None), self.fan_in)

    def abs_bias(self, like: Tensor) -> Tensor | float:
        return self.b.abs()[:, None, None] if self.b is not None else 0.0

    def transpose(self, a: Tensor) -> tuple[Tensor, Tensor]:
        bsz, s = a.shape[:2]
        back = F.conv_transpose2d(
            _flat(a, self.out_shape), self.w, None, self.stride, self.padding, self.output_padding, self.groups,
            self.dilation,
        )  # [B * S, C_in, H, W]
        bias = (a.sum((-1, -2)) @ self.b) if self.b is not None else a.new_zeros(bsz, s)
        return back.reshape(bsz, s, *self.in_shape), bias


class _ChannelAffine(_Op):
    """Evaluation-mode batch normalisation: ``y = (x - mean) * s + beta`` per channel (``s = gamma / sqrt(var + eps)``)."""

    def __init__(self, m: nn.modules.batchnorm._BatchNorm, in_shape: tuple[int, ...]) -> None:
        if m.running_mean is None or m.running_var is None:
            raise NotImplementedError("certify: BatchNorm without running statistics normalises by the batch in eval mode")
        c = m.num_features
        if in_shape[0] != c:
            raise NotImplementedError(f"certify: BatchNorm({c}) on sample shape {in_shape}")
        view = (c, *([1] * (len(in_shape) - 1)))
        mean, var = m.running_mean.detach().to(_F64), m.running_var.detach().to(_F64)
        gamma = m.weight.detach().to(_F64) if m.weight is not None else torch.ones_like(mean)
        beta = m.bias.detach().to(_F64) if m.bias is not None else torch.zeros_like(mean)
        self.scale = (gamma / torch.sqrt(var + m.eps)).reshape(view)
        self.shift = (beta - mean * gamma / torch.sqrt(var + m.eps)).reshape(view)
        self.mean_abs, self.beta_abs = mean.abs().reshape(view), beta.abs().reshape(view)
        super().__init__(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def linear(self, x: Tensor) -> Tensor:
        return x * self.scale

    def abs_linear(self, x: Tensor) -> Tensor:
        return x * self.scale.abs()

    def transpose(self, a: Tensor) -> tuple[Tensor, Tensor]:
        return a * self.scale, (a * self.shift).flatten(2).sum(-1)

    def error(self, e: Tensor, mag: Tensor, u: float) -> Tensor:
        # float32 rounds 1/sqrt(var + eps), the products and the sums: a few u of every magnitude involved.
        return self.scale.abs() * e + 10 * u * (self.scale.abs() * (mag + e + self.mean_abs) + self.beta_abs)


class _Reshape(_Op):
    """Flatten, zero padding or cropping, the identity: exact, no rounding."""

    def __init__(self, fn: Callable[[Tensor], Tensor], back: Callable[[Tensor], Tensor], in_shape) -> None:
        self.fn, self.back = fn, back
        super().__init__(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def transpose(self, a: Tensor) -> tuple[Tensor, Tensor]:
        bsz, s = a.shape[:2]
        return self.back(_flat(a, self.out_shape)).reshape(bsz, s, *self.in_shape), a.new_zeros(bsz, s)

    def error(self, e: Tensor, mag: Tensor, u: float) -> Tensor:
        return self.fn(e)


class _ReLU(_Op):
    affine = False

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def ibp(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return torch.relu(lo), torch.relu(hi)

    def error(self, e: Tensor, mag: Tensor, u: float) -> Tensor:
        return e

    def relax(self, a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """For a lower bound of ``A relu(z)`` with ``lo <= z <= hi``: ``(A', b)`` with ``A relu(z) >= A' z + b``."""
        unstable = (lo < 0) & (hi > 0)
        width = torch.where(unstable, hi - lo, torch.ones_like(hi))
        up_slope = torch.where(unstable, hi / width, (lo >= 0).to(hi.dtype))  # the chord, or exact
        up_icpt = torch.where(unstable, -lo * hi / width, torch.zeros_like(hi))
        low_slope = torch.where(unstable, (hi > -lo).to(hi.dtype), (lo >= 0).to(hi.dtype))  # CROWN's adaptive alpha
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        a_in = pos * low_slope.unsqueeze(1) + neg * up_slope.unsqueeze(1)
        return a_in, (neg * up_icpt.unsqueeze(1)).flatten(2).sum(-1)


class _MaxPool(_Op):
    affine = False

    def __init__(self, m: nn.MaxPool2d, in_shape: tuple[int, ...]) -> None:
        if m.ceil_mode or m.return_indices or len(in_shape) != 3:
            raise NotImplementedError(f"certify: MaxPool2d with ceil_mode/return_indices or on sample shape {in_shape}")
        pair = nn.modules.utils._pair
        self.k, self.s = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size)
        self.p, self.d = pair(m.padding), pair(m.dilation)
        super().__init__(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.k, self.s, self.p, self.d)

    def ibp(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(lo), self.forward(hi)

    def error(self, e: Tensor, mag: Tensor, u: float) -> Tensor:
        return self.forward(e)

    def _windows(self, x: Tensor, fill: float) -> Tensor:
        """``[B, C, H, W] -> [B, C, k*k, L]``: each output's window, padding filled with ``fill``."""
        b, c = x.shape[:2]
        padded = F.pad(x, (self.p[1], self.p[1], self.p[0], self.p[0]), value=fill)
        return F.unfold(padded, self.k, self.d, 0, self.s).reshape(b, c, self.k[0] * self.k[1], -1)

    def relax(self, a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        bsz, s = a.shape[:2]
        c, h, w = self.in_shape
        lw, hw = self._windows(lo, -math.inf), self._windows(hi, -math.inf)  # [B, C, k*k, L]
        pos = torch.arange(h * w, dtype=_F64, device=lo.device).reshape(1, 1, h, w).expand(bsz, c, h, w)
        where = self._windows(pos, -1.0)  # the flat input index of each window slot (-1: padding)
        lmax, arg = lw.max(2, keepdim=True)  # the lower relaxation: y >= z[arg]
        others = hw.scatter(2, arg, -math.inf).amax(2)  # [B, C, L] the best upper bound of the other slots
        exact = lmax.squeeze(2) >= others  # then y = z[arg] on the whole box
        umax = hw.amax(2)
        index = where.gather(2, arg).squeeze(2).long()  # [B, C, L]
        a = a.reshape(bsz, s, c, -1)  # [B, S, C, L]
        pos_a, neg_a = a.clamp(min=0), a.clamp(max=0)
        to_input = pos_a + neg_a * exact.unsqueeze(1)
        a_in = a.new_zeros(bsz, s, c, h * w).scatter_add_(3, index.unsqueeze(1).expand_as(to_input), to_input)
        bias = (neg_a * torch.where(exact, torch.zeros_like(umax), umax).unsqueeze(1)).flatten(2).sum(-1)
        return a_in.reshape(bsz, s, c, h, w), bias


# ------------------------------------------------------------------------------------------------ the network
def _leaves(module: nn.Module, depth: int = 0) -> list[nn.Module]:
    if depth > 64:
        raise NotImplementedError("certify: as_bound_module() nesting deeper than 64 levels")
    if hasattr(module, "as_bound_module"):
        inner = module.as_bound_module()
        if not isinstance(inner, nn.Module):
            raise NotImplementedError(f"certify: {type(module).__name__}.as_bound_module() returned {type(inner).__name__}")
        if inner is not module:
            return _leaves(inner, depth + 1)
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child, depth + 1)]
    return [module]


def _same_padding(m: nn.Conv2d) -> tuple[int, int]:
    if m.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
    if any(t % 2 for t in total):
        raise NotImplementedError(f"certify: Conv2d(padding='same') with an even receptive field {m.kernel_size}")
    return tuple(t // 2 for t in total)


def _compile(leaf: nn.Module, shape: tuple[int, ...]) -> _Op | None:
    if isinstance(leaf, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        return None  # the identity in evaluation mode
    if isinstance(leaf, nn.Linear):
        return _Linear(leaf, shape)
    if isinstance(leaf, nn.Conv2d):
        if leaf.padding_mode != "zeros":
            raise NotImplementedError(f"certify: Conv2d(padding_mode={leaf.padding_mode!r}) (only zero padding)")
        padding = _same_padding(leaf) if isinstance(leaf.padding, str) else leaf.padding
        w = leaf.weight.detach().to(_F64)
        b = leaf.bias.detach().to(_F64) if leaf.bias is not None else None
        return _Conv(w, b, leaf.stride, padding, leaf.dilation, leaf.groups, shape)
    if isinstance(leaf, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _ChannelAffine(leaf, shape)
    if isinstance(leaf, nn.ReLU):
        return _ReLU(shape)
    if isinstance(leaf, nn.MaxPool2d):
        return _MaxPool(leaf, shape)
    if isinstance(leaf, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _avg_pool(leaf, shape)
    if isinstance(leaf, nn.Flatten):
        start = leaf.start_dim if leaf.start_dim >= 0 else leaf.start_dim + len(shape) + 1
        end = leaf.end_dim if leaf.end_dim >= 0 else leaf.end_dim + len(shape) + 1
        if start < 1:
            raise NotImplementedError(f"certify: Flatten(start_dim={leaf.start_dim}) merges the batch dimension")
        return _Reshape(lambda x: x.flatten(start, end), lambda a: a, shape)
    if isinstance(leaf, nn.ConstantPad2d) and float(leaf.value) == 0.0:  # ZeroPad2d too; negative padding crops
        pad = tuple(int(p) for p in leaf.padding)
        return _Reshape(lambda x: F.pad(x, pad), lambda a: F.pad(a, tuple(-p for p in pad)), shape)
    raise NotImplementedError(
        f"certify: no bounds for {type(leaf).__name__} (supported: Linear, Conv2d, ReLU, BatchNorm1d/2d, MaxPool2d, "
        "AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, ZeroPad2d; give the model an `as_bound_module()` "
        "returning its evaluation-mode network made of these)"
    )


def _avg_pool(leaf: nn.Module, shape: tuple[int, ...]) -> _Op:
    pair = nn.modules.utils._pair
    if len(shape) != 3:
        raise NotImplementedError(f"certify: {type(leaf).__name__} on sample shape {shape}")
    c, h, w = shape
    if isinstance(leaf, nn.AdaptiveAvgPool2d):
        oh, ow = (o if o is not None else d for o, d in zip(pair(leaf.output_size), (h, w)))
        if h % oh or w % ow:
            raise NotImplementedError(f"certify: AdaptiveAvgPool2d({leaf.output_size}) of {h}x{w} (not a plain average pool)")
        k = s = (h // oh, w // ow)
        p = (0, 0)
    else:
        k, p = pair(leaf.kernel_size), pair(leaf.padding)
        s = pair(leaf.stride if leaf.stride is not None else leaf.kernel_size)
        if leaf.ceil_mode or leaf.divisor_override is not None or (not leaf.count_include_pad and any(p)):
            raise NotImplementedError("certify: AvgPool2d with ceil_mode, divisor_override or count_include_pad=False")
    weight = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), dtype=_F64)
    return _Conv(weight, None, s, p, (1, 1), c, shape)


def bound_layers(model: nn.Module, sample_shape: tuple[int, ...]) -> list[_Op]:
    """The model's evaluation-mode network as the float64 layers :func:`certify` bounds.

    Raises:
        NotImplementedError: the model (after ``as_bound_module()``) holds a layer with no bounds here, or is
            neither a Sequential nor has ``as_bound_module()``.
    """
    root = model.as_bound_module() if hasattr(model, "as_bound_module") else model
    if not isinstance(root, nn.Sequential) and not hasattr(root, "as_bound_module") and root is model:
        raise NotImplementedError(
            f"certify: `model` ({type(model).__name__}) must be an nn.Sequential of supported layers or have an "
            "`as_bound_module()` returning one"
        )
    ops: list[_Op] = []
    shape = tuple(sample_shape)
    for leaf in _leaves(root):
        op = _compile(leaf, shape)
        if op is not None:
            ops.append(op)
            shape = op.out_shape
    if len(shape) != 1:
        raise NotImplementedError(f"certify: the network must end with [B, K] logits, got sample shape {shape}")
    return ops


# ------------------------------------------------------------------------------------------------------ bounds
def _concretize(a: Tensor, bias: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The minimum of ``A z + bias`` over the box ``[lo, hi]``: ``[B, S]``."""
    mid, rad = ((lo + hi) / 2).flatten(1).unsqueeze(2), ((hi - lo) / 2).flatten(1).unsqueeze(2)
    a = a.flatten(2)  # [B, S, D]
    return (a @ mid).squeeze(2) - (a.abs() @ rad).squeeze(2) + bias


def _backward(ops: list[_Op], bounds: list[tuple[Tensor, Tensor]], a: Tensor, start: int, stop: int) -> Tensor:
    """A lower bound ``[B, S]`` of ``A z_stop`` (``z_i``: the input of op ``i``) from the box of ``z_start``."""
    bias = a.new_zeros(a.shape[:2])
    for i in range(stop - 1, start - 1, -1):
        op = ops[i]
        a, b = op.transpose(a) if op.affine else op.relax(a, *bounds[i])
        bias = bias + b
    return _concretize(a, bias, *bounds[start])


def _rows(bounds: list[tuple[Tensor, Tensor]], rows: Tensor) -> list[tuple[Tensor, Tensor]]:
    return [(lo[rows], hi[rows]) for lo, hi in bounds]


def _crown_intermediate(ops, bounds, crown_neurons: int, budget: int) -> list[tuple[Tensor, Tensor]]:
    """Tighten the box in front of each nonlinearity that follows an affine op with CROWN, then re-run IBP."""
    bounds = list(bounds)
    for k in range(1, len(ops)):
        if not ops[k].affine and ops[k - 1].affine:
            shape = ops[k].in_shape
            neurons = math.prod(shape)
            if neurons <= crown_neurons and not all(op.affine for op in ops[:k]):  # (affine only: IBP is exact)
                bsz = bounds[0][0].shape[0]
                width = max(math.prod(op.in_shape) for op in ops[:k])
                chunk = max(1, budget // (2 * neurons * width))
                eye = torch.eye(neurons, dtype=_F64, device=bounds[0][0].device).reshape(neurons, *shape)
                specs = torch.cat([eye, -eye])  # [2S, *shape]: the lower and the (negated) upper bounds
                parts = []
                for r in range(0, bsz, chunk):
                    sub = [(lo[r : r + chunk], hi[r : r + chunk]) for lo, hi in bounds[: k + 1]]
                    a = specs.unsqueeze(0).expand(sub[0][0].shape[0], *specs.shape)
                    parts.append(_backward(ops, sub, a, 0, k))
                low_up = torch.cat(parts)  # [B, 2S]
                lo = torch.maximum(bounds[k][0], low_up[:, :neurons].reshape(-1, *shape))
                hi = torch.minimum(bounds[k][1], -low_up[:, neurons:].reshape(-1, *shape))
                bounds[k] = (lo, torch.maximum(hi, lo))
        if k < len(ops):  # the IBP box of the next layer from the (tightened) one, intersected with the old one
            lo, hi = ops[k].ibp(*bounds[k])
            bounds[k + 1] = (torch.maximum(bounds[k + 1][0], lo), torch.minimum(bounds[k + 1][1], hi))
    return bounds


def _certify_chunk(ops, lo, hi, pred, method, crown_neurons, exhaustive, u, budget):
    """``[B]`` margin lower bounds (minus the rounding allowance), ``[B, K]`` logit error bounds and IBP logit box."""
    bounds = [(lo, hi)]
    errors = [torch.zeros_like(lo)]
    for op in ops:
        mag = torch.maximum(bounds[-1][0].abs(), bounds[-1][1].abs())
        errors.append(op.error(errors[-1], mag, u))
        bounds.append(op.ibp(*bounds[-1]))
    k = bounds[-1][0].shape[1]
    eye = torch.eye(k, dtype=_F64, device=lo.device)
    spec = eye[pred].unsqueeze(1) - eye.unsqueeze(0)  # [B, K, K]: row j is e_c - e_j
    e_out = errors[-1]
    allowance = e_out.gather(1, pred[:, None]) + e_out  # [B, K]
    own = eye[pred].bool()  # the trivial margin c - c

    def finish(bound: Tensor, rows: Tensor | None = None) -> Tensor:
        allow, mine = (allowance, own) if rows is None else (allowance[rows], own[rows])
        return (bound - allow).masked_fill(mine, math.inf).amin(1)

    tail = max([i + 1 for i, op in enumerate(ops) if not op.affine], default=0)  # ops[tail:] are affine
    margin = finish(_backward(ops, bounds, spec, tail, len(ops)))  # IBP with the affine tail merged into the spec
    stages = {"ibp": 0, "crown-ibp": 1, "crown": 2}[method]
    for stage in range(1, stages + 1):
        rows = torch.arange(len(pred), device=lo.device) if exhaustive else (margin <= 0).nonzero().squeeze(1)
        if rows.numel() == 0 or tail == 0:
            break
        sub = _rows(bounds, rows)
        if stage == 2:
            sub = _crown_intermediate(ops, sub, crown_neurons, budget)
        margin[rows] = torch.maximum(margin[rows], finish(_backward(ops, sub, spec[rows], 0, len(ops)), rows))
    return margin, e_out, bounds[-1]


# ------------------------------------------------------------------------------------------------------ public
def certify(
    model: nn.Module,
    x: Tensor,
    *,
    radius: float | Tensor,
    clip: tuple[float | Tensor, float | Tensor] | None = None,
    method: Method = "crown",
    crown_neurons: int = 256,
    exhaustive: bool = False,
    batch_size: int | None = None,
) -> CertifyResult:
    """Certify the samples whose predicted class cannot change anywhere in their L-inf box.

    The box is LASS's: ``[x - r, x + r]``, intersected with ``clip`` (widened per coordinate to hold the clean
    point) when given; distances in model-input units, like :func:`~memo_callbacks.functional.lass`. The model runs
    once on ``x`` in evaluation mode (its mode is restored) to give the predicted classes.

    Args:
        model: maps ``[B, ...]`` inputs to ``[B, K]`` logits; a Sequential of supported layers, or with
            ``as_bound_module()`` (see the module docstring).
        x: ``[N, ...]`` clean inputs.
        radius: half-width of the box, a float or a tensor broadcastable to one sample (e.g. ``[C, 1, 1]``).
        clip: ``(low, high)`` valid input range, as in :func:`lass`.
        method: ``"ibp"``, ``"crown-ibp"`` or ``"crown"`` (the tightest; see the module docstring).
        crown_neurons: the widest layer whose pre-activation bounds ``"crown"`` computes by CROWN.
        exhaustive: run every stage on every sample (tightest margins), not only on those still uncertified.
        batch_size: samples bounded at once; default: as many as fit in about 256 MiB of float64 work.

    Returns:
        A :class:`CertifyResult` on the model's device.

    Raises:
        NotImplementedError: the network holds a layer with no bounds here, or ``as_bound_module()`` does not
            reproduce the model's logits at ``x``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        >>> certify(net, x, radius=0.0).certified.tolist()
        [True, True, True, True]
        >>> certify(net, x, radius=100.0).certified.tolist()
        [False, False, False, False]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"`x` must be a floating [N, ...] tensor, got {getattr(x, 'shape', x)!r}")
    check_choice(method, "method", METHODS)
    crown_neurons = check_int(crown_neurons, "crown_neurons", minimum=0)
    check_bool(exhaustive, "exhaustive")
    batch_size = check_int(batch_size, "batch_size", minimum=1, allow_none=True)
    r = _box_tensor("radius", radius, x.shape[1:])
    if bool((r < 0).any()):
        raise ValueError(f"`radius` must be >= 0, got {r.flatten()[:8].tolist()}")
    low = high = None
    if clip is not None:
        if not isinstance(clip, (tuple, list)) or len(clip) != 2:
            raise ValueError(f"`clip` must be a (low, high) pair or None, got {clip!r}")
        low, high = (_box_tensor(f"clip[{i}]", b, x.shape[1:]) for i, b in enumerate(clip))

    ops = bound_layers(model, tuple(x.shape[1:]))
    dtype, device = _dtype_device(model, x)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.finfo(dtype).eps + _BOUND_EPS
    for op in ops:
        _to(op, device)
    n = x.shape[0]
    width = max([math.prod(op.in_shape) for op in ops] + [math.prod(ops[-1].out_shape)])
    budget = 2**25  # float64 elements of the largest backward-pass tensor (256 MiB)
    k = ops[-1].out_shape[0]
    chunk = batch_size or max(1, min(n, 4096, budget // (4 * k * width)))

    certified = torch.zeros(n, dtype=torch.bool, device=device)
    margin = torch.full((n,), -math.inf, dtype=_F64, device=device)
    predicted = torch.zeros(n, dtype=torch.int64, device=device)
    from memo_callbacks.functional.lass import _no_autocast, full_float32_precision  # lazy: lass imports this module

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), full_float32_precision(), _no_autocast(device):
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                clean = x[rows].detach().to(device=device, dtype=work)
                logits = model(clean if dtype == work else clean.to(dtype)).to(_F64)
                pred = logits.argmax(1)
                lo, hi = _box(clean, r.to(device, work), low, high)
                m, e_out, (low_logit, high_logit) = _certify_chunk(
                    ops, lo, hi, pred, method, crown_neurons, exhaustive, u, budget
                )
                # The model's own logits at the clean point lie in the box of the exact ones, up to rounding.
                outside = torch.maximum(low_logit - logits, logits - high_logit)
                if bool((outside > e_out).any()):
                    raise NotImplementedError(
                        f"certify: the bound network does not reproduce the model's logits (one lies {float(outside.max()):.3g} "
                        f"outside its bounds, rounding allowance {float(e_out.max()):.3g}): the model's `as_bound_module()` "
                        "is not its evaluation-mode forward"
                    )
                margin[rows], predicted[rows], certified[rows] = m, pred, m > 0
    finally:
        model.train(was_training)
    return CertifyResult(certified, margin, predicted)


def _box(clean: Tensor, r: Tensor, low: Tensor | None, high: Tensor | None) -> tuple[Tensor, Tensor]:
    """LASS's box in the work dtype (same operations, same rounding), widened by one ulp each side, in float64."""
    lo, hi = clean - r, clean + r
    if low is not None:
        low, high = low.to(clean), high.to(clean)
        lo = torch.maximum(lo, torch.minimum(low, clean))
        hi = torch.minimum(hi, torch.maximum(high, clean))
    lo = torch.nextafter(lo, torch.full_like(lo, -math.inf))
    hi = torch.nextafter(hi, torch.full_like(hi, math.inf))
    return lo.to(_F64), hi.to(_F64)


def _box_tensor(name: str, value: float | Tensor, sample_shape: torch.Size) -> Tensor:
    t = torch.as_tensor(value).detach()
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"`{name}` must be a float or a floating tensor, got dtype {t.dtype}")
    try:
        ok = torch.broadcast_shapes(t.shape, sample_shape) == sample_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"`{name}` must be broadcastable to one sample's shape {tuple(sample_shape)}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` must be finite, got {t.flatten()[:8].tolist()}")
    return t


def _dtype_device(model: nn.Module, x: Tensor) -> tuple[torch.dtype, torch.device]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return (x.dtype if x.is_floating_point() else torch.float32), x.device


def _to(op: _Op, device: torch.device) -> None:
    for name, value in vars(op).items():
        if isinstance(value, Tensor):
            setattr(op, name, value.to(device))
