"""Langevin Adversarial Sample Search (LASS), the search behind the critical sample ratio of Arpit et al. (2017).

A sample ``x`` is *critical* when some ``x_hat`` with ``||x_hat - x||_inf <= r`` is classified differently from
``x`` itself. LASS looks for such an ``x_hat`` by noisy signed-gradient ascent of the cross-entropy of the class
predicted at ``x`` (Algorithm 1 of the paper, with the details of the first author's code):

.. code-block:: text

    c  = argmax f(x)                                          # the reference: the predicted class, not the label
    x~ = x
    for t = 1 .. max_iter:
        x~ = x~ + step_size * sign(grad_x~ CE(f(x~), c)) + noise_std * eta_t      # eta_t ~ N(0, I)
        x~ = clip(clamp(x~, x - r, x + r))      # back into the box, and into the valid range (widened to hold x)
        if argmax f(x~) != c: critical, stop (iterations = t)

**Where the check happens.** The forward pass at the iterate ``x~_t`` serves twice: its ``argmax`` is the flip check
of step ``t`` and its cross-entropy is differentiated for step ``t + 1``. The forward at the clean ``x`` gives the
reference and the first gradient. A sample that never flips costs ``max_iter + 1`` forward and backward passes;
one that flips at step ``t`` costs ``t + 1``.

**Engine.** A fixed number of *slots* (``batch_size`` rows) holds samples at different stages of their search; the
moment a sample finishes its slot is refilled from the queue of unstarted samples (and the batch is compacted once
the queue is empty), so no row of any forward pass is spent on a finished sample. Samples stop individually: the
original code's batch-level "stop when fewer than 20 new samples flip" heuristic, which biases the ratio, is not
used. Gradients are taken with :func:`torch.autograd.grad` with respect to the input only: parameters never get a
``.grad``.

**Determinism.** The noise of sample ``i`` at step ``t`` is a counter-based hash of ``(seed, sample_ids[i], t)`` and
the coordinate (:func:`lass_noise`), so results do not depend on the batch size, the order slots are refilled in,
or how samples are sharded over processes (up to rounding differences of the model's forward pass between batch
compositions). The global RNG is never touched.

**Precision.** ``r = 0.3 / 255`` is below one bf16 rounding step of values near 1, so the search runs in float32 (or
float64 for a float64 model) with autocast disabled and TF32/bf16 reduced-precision matmuls and convolutions off,
whatever the Trainer uses; the flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.checks import check_choice, check_int, check_real, check_seed, is_real
from memo_callbacks.utilities.state import preserved_state

__all__ = ["LASSConfig", "LassResult", "lass", "lass_noise", "pixels_to_input_units"]

Unit = Literal["pixel", "input"]
UNITS: tuple[str, ...] = ("pixel", "input")
#: ``None`` (the paper: the L-inf box only), ``"auto"`` (the box intersected with the datamodule's
#: ``input_bounds``) or explicit ``(low, high)`` bounds in model-input units (floats or per-channel tensors).
Clip = Union[None, Literal["auto"], tuple[Union[float, Tensor], Union[float, Tensor]]]

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: the Weyl increment that spreads counters over 32 bits
_WARNED: set[str] = set()


@dataclass(frozen=True)
class LassResult:
    """The outcome of :func:`lass` for ``N`` samples, on the device the search ran on.

    Attributes:
        critical: ``[N]`` bool, the prediction changed within ``max_iter`` steps.
        iterations: ``[N]`` int64, the step (1..max_iter) at which it changed; ``max_iter`` where it never did;
            0 for a certified sample (never searched).
        predicted: ``[N]`` int64, the argmax at the clean input (the reference class).
        adversarial: ``[N, ...]`` the first iterate whose prediction differs (the last iterate where none did; the
            clean point of a certified sample), or None unless ``return_adversarial``.
        certified: ``[N]`` bool, the samples the ``certify`` screen proved non-critical (not searched), or None
            when no screen ran.
        nonfinite: ``[N]`` bool, the samples whose clean logits hold a NaN or an infinity (a diverged model): they
            are neither critical nor non-critical (``critical=False``, ``iterations=0``, never searched) and must be
            left out of any ratio. None only for results built by hand.
    """

    critical: Tensor
    iterations: Tensor
    predicted: Tensor
    adversarial: Tensor | None = None
    certified: Tensor | None = None
    nonfinite: Tensor | None = None


@dataclass(frozen=True)
class LASSConfig:
    """The settings of one LASS search, shared by :class:`~memo_callbacks.CriticalSampleRatio` and the models'
    adversarial training (:class:`models.MemorizationClassifier`). Validated once, here; the defaults are the paper's.

    Attributes:
        radius: the box half-width ``r`` (the paper's 0.3 on the 0-255 pixel scale).
        step_size: the signed-gradient step ``alpha`` (0.25 pixel units).
        noise_std: the std ``beta`` of the Gaussian noise added each step (0.2 pixel units).
        unit: ``"pixel"``: the three above are on the 0-255 pixel scale and converted per channel with the inputs'
            std (``pixel_scale / std``, see :func:`pixels_to_input_units`); ``"input"``: model-input units as given.
        max_iter: steps per sample (the first author's code: 100).
        clip: ``None`` (default, the paper's definition: the L-inf box only, whatever the valid pixel range);
            ``"auto"``: also keep the search inside the datamodule's ``input_bounds`` (the box is widened where a
            clean point lies outside them); or explicit ``(low, high)`` bounds in model-input units.
        seed: seeds the LASS noise (and, in the callback, the choice of the examined subset).

    Example:
        >>> LASSConfig(radius=3.0, max_iter=20).step_size
        0.25
        >>> LASSConfig(radius=float("inf"))
        Traceback (most recent call last):
        ...
        ValueError: `radius` must be a finite number >= 0, got inf
    """

    radius: float = 0.3
    step_size: float = 0.25
    noise_std: float = 0.2
    unit: Unit = "pixel"
    max_iter: int = 100
    clip: Clip = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("radius", "step_size", "noise_std"):
            object.__setattr__(self, name, check_real(getattr(self, name), name, minimum=0))
        check_choice(self.unit, "unit", UNITS)
        object.__setattr__(self, "max_iter", check_int(self.max_iter, "max_iter", minimum=1))
        object.__setattr__(self, "seed", check_seed(self.seed))
        object.__setattr__(self, "clip", _check_clip(self.clip))


def _check_clip(clip: object) -> Clip:
    if clip is None or (isinstance(clip, str) and clip == "auto"):
        return clip  # type: ignore[return-value]
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise ValueError(f"`clip` must be None, 'auto' or a (low, high) pair, got {clip!r}")
    bounds = []
    for name, bound in zip(("clip[0]", "clip[1]"), clip):
        if is_real(bound):
            bounds.append(float(bound))
            continue
        try:
            t = torch.as_tensor(bound, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"`{name}` must be a finite number or a tensor of them, got {bound!r}") from None
        if t.numel() == 0 or not bool(torch.isfinite(t).all()):
            raise ValueError(f"`{name}` must be a finite number or a tensor of them, got {bound!r}")
        bounds.append(t)
    low, high = bounds
    if bool((torch.as_tensor(low) > torch.as_tensor(high)).any()):
        raise ValueError(f"`clip` must have low <= high, got {clip!r}")
    return (low, high)


def pixels_to_input_units(value: float | Tensor, std: float | Tensor, pixel_scale: float = 1 / 255, ndim: int = 3) -> Tensor:
    """Convert a distance in 0-255 pixel units into model-input units, per channel.

    A model fed ``(raw - mean) / std`` with raw values in [0, 1] sees one pixel unit as ``pixel_scale / std``.

    Args:
        value: the distance in pixel units (e.g. LASS's r = 0.3).
        std: ``[C]`` (or scalar) per-channel std the inputs were divided by.
        pixel_scale: one pixel unit in raw input units (1/255 for inputs in [0, 1], 1 for inputs in [0, 255]).
        ndim: number of dimensions of one sample (3 for ``[C, H, W]`` images): the result is ``[C, 1, ..., 1]``.

    Returns:
        ``[C, 1, ..., 1]`` float tensor broadcastable to one sample.

    Example:
        >>> pixels_to_input_units(0.3, torch.tensor([0.5, 0.25])).flatten()
        tensor([0.0024, 0.0047])
    """
    if pixel_scale <= 0:
        raise ValueError(f"`pixel_scale` must be > 0, got {pixel_scale}")
    std = torch.as_tensor(std, dtype=torch.float64).flatten()
    if std.numel() == 0 or bool((std <= 0).any()):
        raise ValueError(f"`std` must be non-empty and > 0, got {std.tolist()}")
    if ndim < 1:
        raise ValueError(f"`ndim` must be >= 1, got {ndim}")
    value = torch.as_tensor(value, dtype=torch.float64)
    out = value * pixel_scale / std  # [C]
    return out.to(torch.float32).reshape(-1, *([1] * (ndim - 1)))  # [C, 1, ..., 1]


# ---------------------------------------------------------------------------------------------------------- noise
# The noise is counter-based: coordinate j of sample i at step t is a fixed function of (seed, id_i, t, j), so it
# does not depend on the batch, the slot or the process a sample is searched in. The hashing is split in three so
# that the per-step work over all coordinates is one 32-bit hash per pair of coordinates:
#   once per search, per sample:      id key   = fmix32 chain of (seed, id)                       [N] int64
#   once per search, per pair p:      counter  = lowbias32(p + 1)                                 [P] int32
#   per step, per sample:             step key = fmix32(id key + t * golden)                      [B] int64
#   per step, per sample and pair:    h        = lowbias32(step key ^ counter)                    [B, P] int32
# and Box-Muller turns the two 16-bit halves of h into the normals of coordinates p and p + P (P = ceil(numel / 2)).
_M1, _M2 = 0x7FEB352D, 0x846CA68B  # lowbias32's multipliers (Wellons' hash prospector: bias 0.17)


def _as_int32(c: int) -> int:
    """The int32 of the 32-bit pattern ``c``."""
    return c - (1 << 32) if c >= 1 << 31 else c


_M1_32, _M2_32 = _as_int32(_M1), _as_int32(_M2)


def _fmix32(h: Tensor) -> Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding 32-bit values (products wrap; the mask keeps 32 bits)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def _lowbias32(h: Tensor) -> Tensor:
    """Wellons' lowbias32 integer hash on int32 tensors: products wrap modulo 2^32 (two's complement, on CPU and
    CUDA alike) and each right shift is made logical by a mask (torch's ``>>`` is arithmetic on signed ints)."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _M1_32
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * _M2_32
    return h ^ ((h >> 16) & 0xFFFF)


def _id_keys(seed: int, sample_ids: Tensor) -> Tensor:
    """``[N]`` one 32-bit key per (seed, sample id), in int64 (computed once per search)."""
    ids = sample_ids.long()
    h = _fmix32(torch.full_like(ids, (seed & _MASK32) ^ ((seed >> 32) & _MASK32) * 0x27D4EB2F & _MASK32))
    h = _fmix32(h ^ (ids & _MASK32))
    return _fmix32(h ^ ((ids >> 32) & _MASK32))


def _step_keys(id_keys: Tensor, step: Tensor | int) -> Tensor:
    """``[B]`` int32 keys of the (seed, id, step) streams from ``[B]`` id keys."""
    step = torch.as_tensor(step, dtype=torch.int64, device=id_keys.device)
    return _fmix32((id_keys + step * _GOLDEN) & _MASK32).to(torch.int32)  # to int32: keeps the 32-bit pattern


def _counters(numel: int, device: torch.device) -> Tensor:
    """``[P]`` int32, P = ceil(numel / 2): the hashed counter of each pair of coordinates (computed once per search)."""
    return _lowbias32(torch.arange(1, (numel + 1) // 2 + 1, dtype=torch.int32, device=device))


def _normals(keys: Tensor, counters: Tensor, numel: int, dtype: torch.dtype) -> Tensor:
    """``[B, numel]`` standard normals from ``[B]`` int32 step keys and ``[P]`` int32 pair counters.

    One lowbias32 hash per pair: its high 16 bits give ``u1`` in (0, 1], its low 16 bits ``u2`` in [0, 1) (two
    independent uniforms when the hash is uniform), and Box-Muller gives ``sqrt(-2 ln u1) * (cos, sin)(2 pi u2)``
    for coordinates ``p`` and ``p + P``. The 16-bit ``u1`` bounds the normals by ``sqrt(32 ln 2) = 4.71``
    (a standard normal exceeds that with probability 2.5e-6).
    """
    h = _lowbias32(keys[:, None] ^ counters[None, :])  # [B, P] int32
    u1 = ((h >> 16) & 0xFFFF).to(dtype).add_(1.0).mul_(2.0**-16)
    angle = (h & 0xFFFF).to(dtype).mul_(2.0 * math.pi * 2.0**-16)
    radius = u1.log_().mul_(-2.0).sqrt_()
    pairs = counters.numel()
    out = torch.empty((keys.shape[0], 2 * pairs), dtype=dtype, device=keys.device)  # [B, 2P]: cos half, sin half
    torch.mul(torch.cos(angle), radius, out=out[:, :pairs])
    torch.mul(torch.sin(angle), radius, out=out[:, pairs:])
    return out if 2 * pairs == numel else out[:, :numel]


def lass_noise(seed: int, sample_ids: Tensor, step: int | Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """The noise ``eta`` LASS adds at ``step`` to each sample: ``[B, *shape]`` standard normals.

    Coordinate ``j`` of sample ``i`` depends only on ``(seed, sample_ids[i], step, j)``: a murmur3 ``fmix32`` chain
    gives one 32-bit key per (seed, id) and one per step, ``lowbias32(step key ^ lowbias32(p + 1))`` gives 32 bits
    for the pair ``p = j mod P`` of coordinates ``p`` and ``p + P`` (``P = ceil(numel / 2)``), and Box-Muller turns
    its two 16-bit halves into their normals (``|eta| <= 4.71``). Integer arithmetic only, in int32/int64: identical
    bits on CPU and CUDA. ``step`` is an int or a ``[B]`` tensor (one step per sample). This is exactly the noise
    :func:`lass` adds (it computes the same keys once per search instead of once per call).

    Example:
        >>> a = lass_noise(0, torch.tensor([3, 7]), 1, (2, 2))
        >>> torch.equal(a[1], lass_noise(0, torch.tensor([7]), 1, (2, 2))[0])
        True
    """
    numel = math.prod(shape)
    keys = _step_keys(_id_keys(check_seed(seed), sample_ids), step)
    return _normals(keys, _counters(numel, sample_ids.device), numel, dtype).reshape(-1, *shape)


# ------------------------------------------------------------------------------------------------------ precision
def _precision_targets() -> list:
    b = torch.backends
    return [t for t in (b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn, b.mkldnn.matmul, b.mkldnn.conv, b.mkldnn.rnn)
            if hasattr(t, "fp32_precision")]


@contextlib.contextmanager
def full_float32_precision() -> Iterator[None]:
    """Turn TF32 (and oneDNN bf16) reduced-precision float32 matmuls and convolutions off; restore them on exit.

    Uses the per-backend ``fp32_precision`` settings where torch has them (mixing them with the legacy
    ``allow_tf32`` flags makes torch raise), else the legacy flags.
    """
    targets = _precision_targets()
    if targets:
        saved = [(t, t.fp32_precision) for t in targets]
        try:
            for t, _ in saved:
                t.fp32_precision = "ieee"
            yield
        finally:
            for t, value in saved:
                t.fp32_precision = value
    else:  # pragma: no cover - torch < 2.9
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------- validation
def _as_box_tensor(name: str, value: float | Tensor, sample_shape: torch.Size, allow_negative: bool = False) -> Tensor:
    t = torch.as_tensor(value).detach()
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"`{name}` must be a float or a floating tensor, got dtype {t.dtype}")
    try:
        broadcast = torch.broadcast_shapes(t.shape, sample_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != sample_shape:
        raise ValueError(
            f"`{name}` must be a float or a tensor broadcastable to one sample's shape {tuple(sample_shape)}, "
            f"got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` must be finite, got {t.flatten()[:8].tolist()}")
    if not allow_negative and bool((t < 0).any()):
        raise ValueError(f"`{name}` must be >= 0, got {t.flatten()[:8].tolist()}")
    return t


def _model_dtype_device(model: nn.Module, x: Tensor) -> tuple[torch.dtype, torch.device]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    for b in model.buffers():
        if b.is_floating_point():
            return b.dtype, b.device
    return (x.dtype if x.is_floating_point() else torch.float32), x.device


# ---------------------------------------------------------------------------------------------------------- engine
def lass(
    model: nn.Module,
    x: Tensor,
    *,
    radius: float | Tensor,
    step_size: float | Tensor,
    noise_std: float | Tensor,
    max_iter: int = 100,
    seed: int = 0,
    sample_ids: Tensor | None = None,
    clip: tuple[float | Tensor, float | Tensor] | None = None,
    batch_size: int | None = None,
    return_adversarial: bool = False,
    certify: bool | Literal["ibp", "crown-ibp", "crown"] = False,
) -> LassResult:
    """Search each sample's L-infinity box for an input the model classifies differently (LASS).

    All distances are in model-input units (see :func:`pixels_to_input_units` for the paper's pixel units:
    r = 0.3, step 0.25, noise 0.2 on the 0-255 scale). The model is run in eval mode; its train/eval modes, the
    grad mode, the RNGs and the float32 precision flags are restored afterwards. Works inside
    ``torch.inference_mode()`` and ``torch.no_grad()``.

    Args:
        model: maps ``[B, ...]`` inputs to ``[B, K]`` logits.
        x: ``[N, ...]`` clean inputs (any device; moved batch by batch to the model's device).
        radius: half-width ``r`` of the box, a float or a tensor broadcastable to ``x.shape[1:]`` (e.g. ``[C, 1, 1]``).
        step_size: ``alpha``, the size of the signed-gradient step, same forms as ``radius``.
        noise_std: ``beta``, the std of the Gaussian noise added each step, same forms as ``radius``.
        max_iter: maximum number of steps per sample.
        seed: seeds the noise stream.
        sample_ids: ``[N]`` integer ids (e.g. dataset indices) that key each sample's noise; default ``arange(N)``.
        clip: ``(low, high)`` valid input range (floats or tensors broadcastable to one sample), widened per
            coordinate to contain the clean point (a sample outside the range keeps its own box), applied after the
            box projection.
        batch_size: number of samples searched at once (slots); default ``min(N, 256)``.
        return_adversarial: also return the iterate at which each sample flipped (the last one where it did not).
        certify: first screen the batch with :func:`~memo_callbacks.functional.certify.certify` (True: its
            default ``"crown"`` bounds, or a method name) and search only the samples it cannot prove
            non-critical: the certified ones get ``critical=False`` and ``iterations=0``, and no result changes.
            A network the bounds do not support (``NotImplementedError``) is searched without a screen (one
            warning).

    Returns:
        A :class:`LassResult` on the model's device.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> out = lass(net, torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0)),
        ...            radius=10.0, step_size=1.0, noise_std=0.1, max_iter=20)
        >>> out.critical.tolist()
        [True, True, True, True, True]
    """
    # ----- checks before any work
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"`x` must be a [N, ...] tensor with at least 2 dimensions, got {getattr(x, 'shape', x)!r}")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"`x` must be finite, got {bad} NaN or infinite value(s) in a tensor of shape {tuple(x.shape)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be an integer >= 1, got {max_iter!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be an integer >= 1 or None, got {batch_size!r}")
    seed = check_seed(seed)
    if not (isinstance(certify, bool) or certify in ("ibp", "crown-ibp", "crown")):
        raise ValueError(f"`certify` must be a bool or one of 'ibp', 'crown-ibp', 'crown', got {certify!r}")
    n, sample_shape = x.shape[0], x.shape[1:]
    r = _as_box_tensor("radius", radius, sample_shape)
    alpha = _as_box_tensor("step_size", step_size, sample_shape)
    beta = _as_box_tensor("noise_std", noise_std, sample_shape)
    if sample_ids is None:
        sample_ids = torch.arange(n)
    elif not isinstance(sample_ids, Tensor) or sample_ids.shape != (n,) or sample_ids.is_floating_point() or sample_ids.dtype == torch.bool:
        raise ValueError(
            f"`sample_ids` must be an [N]=[{n}] integer tensor, got "
            f"{tuple(sample_ids.shape) if isinstance(sample_ids, Tensor) else type(sample_ids).__name__}"
            f"{' of dtype ' + str(sample_ids.dtype) if isinstance(sample_ids, Tensor) else ''}"
        )
    low = high = None
    if clip is not None:
        if not isinstance(clip, (tuple, list)) or len(clip) != 2:
            raise ValueError(f"`clip` must be a (low, high) pair or None, got {clip!r}")
        low = _as_box_tensor("clip[0]", clip[0], sample_shape, allow_negative=True)
        high = _as_box_tensor("clip[1]", clip[1], sample_shape, allow_negative=True)
        if bool((torch.broadcast_tensors(low, high)[0] > torch.broadcast_tensors(low, high)[1]).any()):
            raise ValueError(f"`clip` must have low <= high, got {clip!r}")

    dtype, device = _model_dtype_device(model, x)
    work_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if dtype in (torch.float16, torch.bfloat16):
        _warn_once(
            f"LASS: the model's weights are {dtype}; its forward pass rounds inputs more coarsely than LASS's radius "
            "(r = 0.3/255 is below one bf16 step near 1), so the critical sample ratio is unreliable. Evaluate a "
            "float32 copy of the model (keep mixed precision to autocast, which LASS turns off)."
        )
    batch = min(n, 256) if batch_size is None else batch_size

    with preserved_state(model), full_float32_precision(), torch.inference_mode(False), _no_autocast(device):
        model.eval()
        torch.set_grad_enabled(True)
        screen, clean = (_screen(model, x, r, low, high, certify) if certify else None), x
        if screen is not None:  # search only the samples the bounds could not certify
            rest = (~screen.certified).nonzero().squeeze(1).cpu()
            x, sample_ids = x[rest.to(x.device)], sample_ids[rest.to(sample_ids.device)]
        out = _search(
            model, x, sample_ids, r, alpha, beta, low, high, max_iter, seed, batch, return_adversarial,
            dtype, work_dtype, device,
        )
        return out if screen is None else _merge_screened(out, screen, rest, clean, work_dtype)


def _screen(model: nn.Module, x: Tensor, r: Tensor, low: Tensor | None, high: Tensor | None, method: bool | str):
    """The certify screen's result, or None (with one warning) when the network has no bounds."""
    from memo_callbacks.functional.certify import certify  # lazy: certify imports this module's precision helpers

    try:
        return certify(model, x, radius=r, clip=None if low is None else (low, high), method="crown" if method is True else method)
    except NotImplementedError as err:
        _warn_once(f"LASS: no certify screen, every sample is searched ({err})")
        return None


def _merge_screened(out: LassResult, screen, rest: Tensor, clean: Tensor, dtype: torch.dtype) -> LassResult:
    """The searched samples' results ``out`` (rows ``rest``) and the certified ones' (not critical, 0 steps)."""
    certified = screen.certified
    device = certified.device
    rest = rest.to(device)
    critical = torch.zeros_like(certified)
    critical[rest] = out.critical
    iterations = torch.zeros(certified.shape, dtype=torch.int64, device=device)
    iterations[rest] = out.iterations
    predicted = screen.predicted.clone()
    predicted[rest] = out.predicted
    adversarial = None
    if out.adversarial is not None:
        adversarial = clean.detach().to(device=device, dtype=dtype).clone()  # a certified sample's: its clean point
        adversarial[rest] = out.adversarial
    nonfinite = torch.zeros_like(certified)
    nonfinite[rest] = out.nonfinite
    return LassResult(critical, iterations, predicted, adversarial, certified, nonfinite)


def _no_autocast(device: torch.device):
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # pragma: no cover


#: Iterations between the checks of an accelerator search (the sync that retires finished samples and refills
#: their slots); on CPU every iteration checks (a check costs no sync there).
_SYNC_EVERY = 8
#: Tests set this to run the accelerator path (device-side masks, a check every ``_SYNC_EVERY`` iterations) on CPU.
_FORCE_DEVICE_PATH = False


def _search(
    model: nn.Module, x: Tensor, sample_ids: Tensor, r: Tensor, alpha: Tensor, beta: Tensor, low: Tensor | None,
    high: Tensor | None, max_iter: int, seed: int, batch: int, return_adversarial: bool, model_dtype: torch.dtype,
    dtype: torch.dtype, device: torch.device,
) -> LassResult:
    n, sample_shape = x.shape[0], x.shape[1:]
    numel = math.prod(sample_shape)
    put = dict(device=device, dtype=dtype)
    r, alpha, beta = r.to(**put), alpha.to(**put), beta.to(**put)
    low = low.to(**put) if low is not None else None
    high = high.to(**put) if high is not None else None
    use_noise = bool((beta != 0).any())
    id_keys = _id_keys(seed, sample_ids.to(device, torch.int64))  # [N]: the noise keys, once per search
    counters = _counters(numel, device)
    # On an accelerator a check (which rows finished?) is a host sync: check every `_SYNC_EVERY` iterations only,
    # and in between freeze finished rows on the device (no step, no move), so results equal a check every step.
    sync_every = _SYNC_EVERY if (device.type != "cpu" or _FORCE_DEVICE_PATH) else 1

    critical = torch.zeros(n, dtype=torch.bool, device=device)
    iterations = torch.full((n,), max_iter, dtype=torch.int64, device=device)
    predicted = torch.zeros(n, dtype=torch.int64, device=device)
    nonfinite = torch.zeros(n, dtype=torch.bool, device=device)
    adversarial = torch.empty((n, *sample_shape), **put) if return_adversarial else None
    if n == 0:
        return LassResult(critical, iterations, predicted, adversarial, nonfinite=nonfinite)

    def load(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Clean points and box bounds ``[b, ...]`` of the samples ``rows`` (indices into x)."""
        clean = x[rows.to(x.device)].detach().to(**put)  # a copy: never an inference tensor
        lo, hi = clean - r, clean + r
        if low is not None:
            # The box intersected with the valid range, widened where needed so that it always holds the clean point:
            # a sample that starts outside the range (e.g. unclipped Gaussian randX inputs) keeps its own box and is
            # never pushed onto the bound, which may lie many radii away.
            lo = torch.maximum(lo, torch.minimum(low, clean))
            hi = torch.minimum(hi, torch.maximum(high, clean))
        return clean, lo, hi

    # Slot state: rows [0, active) are live. `slot` holds each row's sample (index into x), `step` its number of
    # completed steps (0 = the clean point, whose forward pass sets the reference), `frozen` whether it finished
    # (then `flip` says whether by a flip); a frozen row neither moves nor counts steps until the next check retires it.
    active = min(batch, n)
    slot = torch.arange(active, device=device)
    point, lo, hi = load(slot)
    step = torch.zeros(active, dtype=torch.int64, device=device)
    ref = torch.zeros(active, dtype=torch.int64, device=device)
    frozen = torch.zeros(active, dtype=torch.bool, device=device)
    flip = torch.zeros(active, dtype=torch.bool, device=device)
    bad = torch.zeros(active, dtype=torch.bool, device=device)  # non-finite clean logits: retired at step 0
    queued = active  # next sample to start
    tick = 0

    while active > 0:
        point.requires_grad_(True)
        logits = model(point if model_dtype == dtype else point.to(model_dtype))
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != point.shape[0]:
            raise ValueError(
                f"`model` must return [B, K] logits for a [B, ...] input, got "
                f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__} for B={point.shape[0]}"
            )
        logits = logits.to(dtype)
        pred = logits.detach().argmax(1)
        fresh = step == 0
        ref = torch.where(fresh, pred, ref)
        flipped = (pred != ref) & ~fresh  # the check of step `step` (the clean point cannot flip)
        bad = bad | (fresh & ~frozen & ~torch.isfinite(logits.detach()).all(1))
        finishing = (flipped | (step >= max_iter) | bad) & ~frozen
        flip = flip | (finishing & flipped)
        frozen = frozen | finishing
        tick += 1
        check = tick % sync_every == 0
        done_rows = frozen.nonzero().squeeze(1) if check else None  # the host sync: decides the refill
        n_done = done_rows.numel() if check else 0
        if n_done < active:
            loss = F.cross_entropy(logits, ref, reduction="sum")
            (grad,) = torch.autograd.grad(loss, point)
        point = point.detach()

        if n_done > 0:
            finished = slot[done_rows]
            critical[finished] = flip[done_rows]
            iterations[finished] = step[done_rows]
            predicted[finished] = ref[done_rows]
            nonfinite[finished] = bad[done_rows]
            if adversarial is not None:
                adversarial[finished] = point[done_rows]
        if n_done < active:  # rows retired now are stepped too, then replaced: cheaper than selecting
            keys = _step_keys(id_keys[slot], step + 1) if use_noise else None
            _ascend(point, grad, alpha, beta if use_noise else None, lo, hi, keys, counters, None if check else frozen)
        step = step + 1 if check else step + (~frozen).long()
        if n_done == 0:
            continue
        # Refill retired slots from the queue; compact once it is empty.
        refill = min(n_done, n - queued)
        if refill > 0:
            rows, new = done_rows[:refill], torch.arange(queued, queued + refill, device=device)
            queued += refill
            point[rows], lo[rows], hi[rows] = load(new)
            slot[rows], step[rows] = new, 0
            frozen[rows] = flip[rows] = bad[rows] = False
        if refill < n_done:
            live = (~frozen).nonzero().squeeze(1)
            point, lo, hi, slot, step, ref, frozen, flip, bad = (
                t[live] for t in (point, lo, hi, slot, step, ref, frozen, flip, bad)
            )
            active = live.numel()

    return LassResult(critical, iterations, predicted, adversarial, nonfinite=nonfinite)


@torch.no_grad()
def _ascend(point: Tensor, grad: Tensor, alpha: Tensor, beta: Tensor | None, lo: Tensor, hi: Tensor,
            keys: Tensor | None, counters: Tensor, frozen: Tensor | None) -> None:
    """In place: ``x~ <- clamp(x~ + alpha * sign(grad) + beta * eta, lo, hi)`` with ``eta`` the noise of the step
    keys ``keys``; rows ``frozen`` (finished, awaiting retirement) are left exactly where they are."""
    direction = grad.sign()
    still = None if frozen is None else frozen.view(-1, *([1] * (point.dim() - 1)))  # [B, 1, ...]
    if still is not None:
        direction.masked_fill_(still, 0.0)
    point.addcmul_(alpha, direction)
    if beta is not None:
        eta = _normals(keys, counters, point[0].numel(), point.dtype).reshape(point.shape)  # [B, ...]
        if still is not None:
            eta.masked_fill_(still, 0.0)
        point.addcmul_(beta, eta)
    torch.maximum(torch.minimum(point, hi, out=point), lo, out=point)
