"""Seeded corruption of a labelled dataset: the noisy variants of Arpit et al. (2017).

Every function here is pure: it takes a local :class:`torch.Generator` and never touches the global RNG, so the
same seed gives the same corruption on every DDP rank, every dataloader worker and every run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from datamodules.checks import check_seed

NoiseKind = Literal["none", "random_labels", "random_inputs"]
LabelNoise = Literal["uniform", "wrong"]
InputNoise = Literal["gaussian", "gaussian_global", "uniform"]

NOISE_KINDS: tuple[str, ...] = ("none", "random_labels", "random_inputs")
LABEL_NOISES: tuple[str, ...] = ("uniform", "wrong")
INPUT_NOISES: tuple[str, ...] = ("gaussian", "gaussian_global", "uniform")


@dataclass(frozen=True)
class Corruption:
    """What was done to a training set, readable after the fact.

    Attributes:
        mask: ``[N]`` bool, True for every example that was corrupted (chosen for noise). With uniform label noise
            about ``1/K`` of these keep their true label by chance; they are still marked.
        clean_targets: ``[N]`` the labels before corruption.
        targets: ``[N]`` the labels after corruption.
    """

    mask: Tensor
    clean_targets: Tensor
    targets: Tensor

    @property
    def indices(self) -> Tensor:
        """Dataset indices of the corrupted examples, ascending."""
        return self.mask.nonzero().flatten()

    @property
    def num_corrupted(self) -> int:
        return int(self.mask.sum())


def derive_seed(seed: int, *keys: object) -> int:
    """A 32-bit seed for the random stream named by ``keys`` under the user's ``seed``.

    Torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so streams cannot be told apart by high
    bits, and ``seed + k`` would make the stream ``k`` of seed 0 the stream 0 of seed ``k``. Hashing avoids both.
    The seed is hashed as text, so it must be an int (:func:`~datamodules.checks.check_seed`): ``0``, ``0.0`` and
    ``tensor(0)`` would otherwise name three different streams.
    """
    text = ":".join(str(k) for k in (check_seed(seed), *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def generator_from_seed(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator for one named random stream of a seed (streams keep noise kinds independent)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g


def choose_corrupted(num_examples: int, fraction: float, generator: torch.Generator) -> Tensor:
    """Bool mask of exactly ``round(fraction * num_examples)`` examples chosen uniformly without replacement."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`noise_fraction` must be in [0, 1], got {fraction}")
    count = round(fraction * num_examples)
    mask = torch.zeros(num_examples, dtype=torch.bool)
    mask[torch.randperm(num_examples, generator=generator)[:count]] = True
    return mask


def corrupt_labels(
    targets: Tensor, mask: Tensor, num_classes: int, mode: LabelNoise, generator: torch.Generator
) -> Tensor:
    """New labels for the masked examples: uniform over the classes, or uniform over the *other* classes."""
    if mode not in LABEL_NOISES:
        raise ValueError(f"`label_noise` must be one of {LABEL_NOISES}, got {mode!r}")
    if mode == "wrong" and num_classes < 2:
        raise ValueError(f"`label_noise='wrong'` needs at least 2 classes, got num_classes={num_classes}")
    out = targets.clone()
    count = int(mask.sum())
    if mode == "uniform":
        new = torch.randint(num_classes, (count,), generator=generator)
    else:
        # An offset in [1, K-1] added modulo K is uniform over the K-1 wrong classes.
        new = (targets[mask] + torch.randint(1, num_classes, (count,), generator=generator)) % num_classes
    out[mask] = new.to(out.dtype)
    return out


def corrupt_inputs(inputs: Tensor, mask: Tensor, mode: InputNoise, generator: torch.Generator) -> Tensor:
    """Replace the masked inputs (``[N, C, H, W]``, raw values in [0, 1]) by noise.

    ``"gaussian"`` draws i.i.d. Gaussian values with the per-channel mean and std of the clean inputs (the paper's
    randX, not clipped); ``"gaussian_global"`` uses one mean and std over all channels; ``"uniform"`` draws from
    U(0, 1) (the paper's Figure 3 "random data").
    """
    if mode not in INPUT_NOISES:
        raise ValueError(f"`input_noise` must be one of {INPUT_NOISES}, got {mode!r}")
    out = inputs.clone()
    count = int(mask.sum())
    shape = (count, *inputs.shape[1:])
    if mode == "uniform":
        noise = torch.rand(shape, generator=generator, dtype=inputs.dtype)
    else:
        if mode == "gaussian":
            mean, std = channel_stats(inputs)
            mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        else:
            mean, std = inputs.mean(), inputs.std()
        noise = torch.randn(shape, generator=generator, dtype=inputs.dtype) * std + mean
    out[mask] = noise
    return out


def channel_stats(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``[N, C, H, W]`` inputs, computed in float64 for accuracy."""
    x = inputs.transpose(0, 1).reshape(inputs.shape[1], -1).double()  # [C, N*H*W]
    return x.mean(1).to(inputs.dtype), x.std(1).to(inputs.dtype)
