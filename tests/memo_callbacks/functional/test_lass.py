"""LASS against a slow per-sample reference, its edge cases, and the state it must leave untouched."""

import importlib
import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memo_callbacks.functional import lass, lass_noise, pixels_to_input_units

MASK = 0xFFFFFFFF


def fmix32_py(h: int) -> int:
    """murmur3's fmix32 in plain Python integers: the independent reference of the engine's int64 version."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK
    return h ^ (h >> 16)


def lowbias32_py(h: int) -> int:
    """Wellons' lowbias32 in plain Python integers: the reference of the engine's int32 version."""
    h ^= h >> 16
    h = (h * 0x7FEB352D) & MASK
    h ^= h >> 15
    h = (h * 0x846CA68B) & MASK
    return h ^ (h >> 16)


def noise_py(seed: int, sample_id: int, step: int, j: int, numel: int) -> float:
    """Coordinate j (of numel) of the noise of (seed, sample_id, step), one scalar at a time, from the documented
    hash chain: one 32-bit hash per pair p = j mod P of the coordinates (p, p + P), P = ceil(numel / 2)."""
    h = fmix32_py((seed & MASK) ^ ((((seed >> 32) & MASK) * 0x27D4EB2F) & MASK))
    h = fmix32_py(h ^ (sample_id & MASK))
    h = fmix32_py(h ^ ((sample_id >> 32) & MASK))
    key = fmix32_py((h + step * 0x9E3779B9) & MASK)
    pairs = (numel + 1) // 2
    z = lowbias32_py(key ^ lowbias32_py(j % pairs + 1))
    u1, u2 = ((z >> 16) + 1) * 2.0**-16, (z & 0xFFFF) * 2.0**-16
    r = math.sqrt(-2.0 * math.log(u1))
    return r * (math.cos if j < pairs else math.sin)(2.0 * math.pi * u2)


@pytest.mark.parametrize("numel", [5, 6])
def test_noise_matches_scalar_reference(numel):
    ids = torch.tensor([0, 5, 2**33 + 7])
    for seed in (3, 2**40 + 1):
        eta = lass_noise(seed, ids, 4, (numel,), dtype=torch.float64)
        per_row = lass_noise(seed, ids, torch.tensor([1, 2, 9]), (numel,), dtype=torch.float64)  # a step per sample
        for i, sid in enumerate(ids.tolist()):
            for j in range(numel):
                assert eta[i, j].item() == pytest.approx(noise_py(seed, sid, 4, j, numel), rel=1e-12, abs=1e-12)
                want = noise_py(seed, sid, [1, 2, 9][i], j, numel)
                assert per_row[i, j].item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    # the float32 noise is the float64 noise rounded: the same bits drawn
    torch.testing.assert_close(lass_noise(3, ids, 4, (numel,)), lass_noise(3, ids, 4, (numel,), torch.float64).float())


def test_noise_is_standard_normal_and_independent_across_ids_steps_and_coordinates():
    stats = pytest.importorskip("scipy.stats")
    ids = torch.arange(2000)
    big = lass_noise(0, ids, 1, (500,), dtype=torch.float64)  # [2000, 500]
    flat = big.flatten()
    se = 1 / math.sqrt(flat.numel())  # 1e6 draws
    assert abs(flat.mean().item()) < 5 * se and abs(flat.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs(stats.skew(flat.numpy())) < 5 * math.sqrt(6) * se
    assert abs(stats.kurtosis(flat.numpy())) < 5 * math.sqrt(24) * se
    assert stats.kstest(flat[::5].numpy(), "norm").pvalue > 1e-3  # normal at 2e5 draws
    assert flat.abs().max().item() <= math.sqrt(32 * math.log(2)) + 1e-9  # the documented bound
    # uncorrelated across steps, seeds, neighbouring ids, neighbouring coordinates and the two halves of a pair
    for other in (lass_noise(0, ids, 2, (500,), torch.float64), lass_noise(1, ids, 1, (500,), torch.float64),
                  lass_noise(0, ids + 1, 1, (500,), torch.float64)):
        assert abs((big * other).mean().item()) < 5 * se
        assert abs(((big**2 - 1) * (other**2 - 1)).mean().item()) < 5 * math.sqrt(8) * se  # and beyond linear
    for a, b in ((big[1:], big[:-1]), (big[:, 1:], big[:, :-1]), (big[:, :250], big[:, 250:])):
        assert abs((a * b).mean().item()) < 5 / math.sqrt(a.numel())
    # sums of 4 coordinates of one sample are N(0, 4) (variance of 125 * 2000 sums)
    assert abs(big.view(2000, 125, 4).sum(2).var().item() - 4) < 5 * 4 * math.sqrt(2 / 250_000)
    assert not torch.equal(lass_noise(1, torch.arange(3), 1, (4,)), lass_noise(0, torch.arange(3), 1, (4,)))


def reference_lass(model, x, r, alpha, beta, max_iter, seed, ids, clip=None):
    """Per sample, per iteration, exactly as the paper's Algorithm 1 reads (no batching, no slots)."""
    model.eval()
    flags, iters, preds, advs = [], [], [], []
    for i in range(x.shape[0]):
        x0 = x[i : i + 1].clone()
        with torch.no_grad():
            c = model(x0).argmax(1)
        xt, crit, it = x0.clone(), False, max_iter
        for t in range(1, max_iter + 1):
            xt.requires_grad_(True)
            loss = F.cross_entropy(model(xt), c)
            (g,) = torch.autograd.grad(loss, xt)
            eta = lass_noise(seed, ids[i : i + 1], t, x0.shape[1:], dtype=x.dtype)  # the public noise
            xt = xt.detach() + alpha * g.sign() + beta * eta.view_as(x0)
            xt = torch.minimum(torch.maximum(xt, x0 - r), x0 + r)
            if clip is not None:  # into the valid range, widened to hold the clean point itself
                low, high = clip
                xt = torch.maximum(torch.minimum(xt, x0.clamp(min=high)), x0.clamp(max=low))
            with torch.no_grad():
                if model(xt).argmax(1).item() != c.item():
                    crit, it = True, t
                    break
        flags.append(crit), iters.append(it), preds.append(c.item()), advs.append(xt[0])
    return torch.tensor(flags), torch.tensor(iters), torch.tensor(preds), torch.stack(advs)


def tiny_mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def data(n=24, dtype=torch.float64, seed=1):
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("batch_size", [1, 5, 24, 64])
def test_agrees_with_per_sample_reference_at_any_batch_size(batch_size):
    model, x = tiny_mlp(), data()
    ids = torch.arange(100, 124)
    r = torch.tensor([0.3, 0.2, 0.4], dtype=torch.float64).view(3, 1, 1)  # per channel
    ref = reference_lass(model, x, r, 0.05, 0.05, 15, seed=7, ids=ids, clip=(-1.5, 1.5))
    out = lass(model, x, radius=r, step_size=0.05, noise_std=0.05, max_iter=15, seed=7, sample_ids=ids,
               clip=(-1.5, 1.5), batch_size=batch_size, return_adversarial=True)
    assert 0 < int(ref[0].sum()) < len(x)  # both outcomes occur, so the comparison means something
    assert torch.equal(out.critical, ref[0])
    assert torch.equal(out.iterations, ref[1])
    assert torch.equal(out.predicted, ref[2])
    torch.testing.assert_close(out.adversarial, ref[3])
    assert out.iterations.dtype == torch.int64 and out.critical.dtype == torch.bool


def test_float32_model_matches_reference():
    model, x = tiny_mlp(torch.float32), data(dtype=torch.float32)
    ref = reference_lass(model, x, 0.3, 0.05, 0.05, 10, seed=0, ids=torch.arange(24))
    out = lass(model, x, radius=0.3, step_size=0.05, noise_std=0.05, max_iter=10, batch_size=7)
    assert torch.equal(out.critical, ref[0]) and torch.equal(out.iterations, ref[1])


def test_results_independent_of_order_given_ids():
    model, x = tiny_mlp(), data()
    kw = dict(radius=0.3, step_size=0.05, noise_std=0.05, max_iter=15, seed=3)
    full = lass(model, x, **kw, batch_size=4)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    shuffled = lass(model, x[perm], sample_ids=perm, **kw, batch_size=9)
    assert torch.equal(shuffled.critical, full.critical[perm])
    assert torch.equal(shuffled.iterations, full.iterations[perm])
    half = lass(model, x[1::2], sample_ids=torch.arange(1, 24, 2), **kw)  # one rank's shard
    assert torch.equal(half.iterations, full.iterations[1::2])


def test_zero_radius_is_never_critical_and_spanning_radius_always_is():
    model, x = tiny_mlp(), data()
    zero = lass(model, x, radius=0.0, step_size=0.1, noise_std=0.1, max_iter=10)
    assert not zero.critical.any() and (zero.iterations == 10).all()
    # Inputs live in [-1, 1] after clipping; a box of radius 2 spans that range, so ascent reaches another class
    # for a linear model (whose regions are convex and all meet the cube's corners).
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
    torch.manual_seed(0)
    nn.init.normal_(lin[1].weight)
    xc = data().clamp(-1, 1)
    # Only samples whose predicted class is not the only class present in the cube can flip: check all 3 occur.
    corners = torch.tensor([[1.0 if (k >> j) & 1 else -1.0 for j in range(12)] for k in range(4096)]).double()
    assert lin(corners.view(-1, 3, 2, 2)).argmax(1).unique().numel() == 3
    full = lass(lin, xc, radius=2.0, step_size=0.5, noise_std=0.0, max_iter=10, clip=(-1.0, 1.0))
    assert full.critical.all()


def test_state_restored_and_parameters_untouched():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train()
    model[2].eval()
    running = model[3].running_mean.clone()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with torch.no_grad():
        lass(model, data(dtype=torch.float32), radius=0.3, step_size=0.1, noise_std=0.1, max_iter=5)
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.rand(3), expected[0]) and np.random.rand() == expected[1] and random.random() == expected[2]
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[3].running_mean, running)  # evaluated in eval mode: no BN statistics update


def test_works_in_inference_mode_and_under_autocast():
    model, x = tiny_mlp(torch.float32), data(dtype=torch.float32)
    kw = dict(radius=0.3, step_size=0.05, noise_std=0.05, max_iter=10)
    plain = lass(model, x, **kw)
    with torch.inference_mode():
        inside = lass(model, x, **kw)
        assert torch.is_inference_mode_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = lass(model, x, **kw)
        assert torch.is_autocast_enabled("cpu")
    for out in (inside, cast):
        assert torch.equal(out.critical, plain.critical) and torch.equal(out.iterations, plain.iterations)


def test_precision_flags_restored():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        seen = []

        class Probe(nn.Module):
            def forward(self, x):
                seen.append(torch.backends.mkldnn.matmul.fp32_precision)
                return x.flatten(1)[:, :3]

        lass(Probe(), data(2, torch.float32), radius=0.1, step_size=0.1, noise_std=0.0, max_iter=2)
        assert set(seen) == {"ieee"} and torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = before


def test_half_precision_model_warns_once():
    importlib.import_module("memo_callbacks.functional.lass")._WARNED.clear()  # the module (its name is the function's)
    model = tiny_mlp(torch.bfloat16)
    with pytest.warns(UserWarning, match="weights are torch.bfloat16"):
        out = lass(model, data(4, torch.float32), radius=0.3, step_size=0.1, noise_std=0.1, max_iter=3)
    assert out.iterations.shape == (4,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lass(model, data(4, torch.float32), radius=0.3, step_size=0.1, noise_std=0.1, max_iter=3)


def test_empty_input_and_pixel_units():
    out = lass(tiny_mlp(), data(0), radius=0.1, step_size=0.1, noise_std=0.1, return_adversarial=True)
    assert out.critical.shape == (0,) and out.adversarial.shape == (0, 3, 2, 2)
    units = pixels_to_input_units(0.3, torch.tensor([0.5, 0.25, 1.0]))
    assert units.shape == (3, 1, 1)
    torch.testing.assert_close(units.flatten(), torch.tensor([0.6, 1.2, 0.3]) / 255)
    assert pixels_to_input_units(0.3, 1.0, pixel_scale=1.0, ndim=1).shape == (1,)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(radius=-0.1), ValueError, r"`radius` must be >= 0, got \[-0.1"),
        (dict(step_size=-1.0), ValueError, "`step_size` must be >= 0"),
        (dict(noise_std=float("nan")), ValueError, "`noise_std` must be finite"),
        (dict(max_iter=0), ValueError, "`max_iter` must be an integer >= 1, got 0"),
        (dict(batch_size=0), ValueError, "`batch_size` must be an integer >= 1 or None, got 0"),
        (dict(radius=torch.ones(4, 1, 1)), ValueError, r"broadcastable to one sample's shape \(3, 2, 2\)"),
        (dict(sample_ids=torch.arange(3)), ValueError, r"`sample_ids` must be an \[N\]=\[24\] integer tensor"),
        (dict(clip=(1.0, -1.0)), ValueError, "`clip` must have low <= high"),
        (dict(clip=(0.0,)), ValueError, r"`clip` must be a \(low, high\) pair"),
        (dict(seed=1.5), TypeError, "`seed` must be an int"),
        (dict(seed="x"), TypeError, r"`seed` must be an int \(a python or numpy integer, not a bool\), got 'x'"),
        (dict(seed=True), TypeError, r"`seed` must be an int .*got True \(bool\)"),
        (dict(seed=2**64), ValueError, r"`seed` must be in \[-2\*\*63, 2\*\*64 - 1\]"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = dict(radius=0.1, step_size=0.1, noise_std=0.1) | kwargs
    with pytest.raises(error, match=match):
        lass(tiny_mlp(), data(), **args)


def test_bad_inputs_and_model_outputs():
    with pytest.raises(ValueError, match="`x` must be a \\[N, ...\\] tensor"):
        lass(tiny_mlp(), torch.zeros(5), radius=0.1, step_size=0.1, noise_std=0.1)
    with pytest.raises(TypeError, match="`x` must be a floating tensor"):
        lass(tiny_mlp(), torch.zeros(2, 3, 2, 2, dtype=torch.long), radius=0.1, step_size=0.1, noise_std=0.1)
    with pytest.raises(ValueError, match=r"must return \[B, K\] logits"):
        lass(nn.Flatten(0), data(), radius=0.1, step_size=0.1, noise_std=0.1)
    with pytest.raises(ValueError, match="`std` must be non-empty and > 0"):
        pixels_to_input_units(0.3, torch.tensor([0.0]))


def test_clip_never_moves_a_sample_outside_its_box():
    """A clean point outside the valid range (unclipped randX noise) keeps its own box: the search never jumps to
    the bound, which may be many radii away, and so never calls such a sample critical for a far-away flip."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
    with torch.no_grad():  # class 1 iff x > 1.5
        net[1].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        net[1].bias.copy_(torch.tensor([1.5, -1.5]))
    x = torch.tensor([[[[-1.0]]], [[[0.5]]], [[[3.0]]]])  # below, inside and above the valid range [0, 1]
    out = lass(net, x, radius=1e-3, step_size=1e-3, noise_std=0.0, max_iter=5, clip=(0.0, 1.0),
               return_adversarial=True)
    assert out.critical.tolist() == [False, False, False]
    assert (out.adversarial - x).abs().max() <= 1e-3 + 1e-7
    ref = reference_lass(net, x, 1e-3, 1e-3, 0.0, 5, seed=0, ids=torch.arange(3), clip=(0.0, 1.0))
    assert ref[0].tolist() == out.critical.tolist()


@pytest.mark.parametrize("batch_size", [1, 5, 24])
def test_accelerator_path_checks_every_k_steps_and_matches_every_step(monkeypatch, batch_size):
    """The accelerator path (a host sync every `_SYNC_EVERY` iterations, finished rows frozen on the device in
    between), forced on CPU, gives exactly the results of a check at every step: refills, compaction and
    max_iter not a multiple of the check interval included."""
    module = importlib.import_module("memo_callbacks.functional.lass")
    model, x = tiny_mlp(), data()
    kw = dict(radius=0.3, step_size=0.05, noise_std=0.05, max_iter=13, seed=5, sample_ids=torch.arange(7, 31),
              clip=(-1.5, 1.5), batch_size=batch_size, return_adversarial=True)
    every_step = lass(model, x, **kw)
    monkeypatch.setattr(module, "_FORCE_DEVICE_PATH", True)
    calls = []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(len(out)))
    synced = lass(model, x, **kw)
    hook.remove()
    assert 0 < int(every_step.critical.sum()) < len(x)
    for name in ("critical", "iterations", "predicted", "adversarial"):
        assert torch.equal(getattr(synced, name), getattr(every_step, name)), name
    assert len(calls) % module._SYNC_EVERY == 0  # forward passes: the loop ends at a check only
    ref = reference_lass(model, x, 0.3, 0.05, 0.05, 13, seed=5, ids=torch.arange(7, 31), clip=(-1.5, 1.5))
    assert torch.equal(synced.iterations, ref[1])
