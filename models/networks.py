"""The paper's networks as plain ``nn.Module`` s, with its noise and dropout regularisers built in.

Regularisers act in training mode only (``model.eval()`` turns every one of them off):

- ``input_dropout``: dropout on the input pixels;
- ``input_noise``: additive Gaussian noise of this std on the inputs (in model-input units);
- ``dropout``: dropout after every hidden layer's activation;
- ``hidden_noise``: additive Gaussian noise of this std after every hidden layer's activation.

Weight decay and adversarial training belong to the optimisation and live in :mod:`models.classifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from datamodules.checks import check_int, check_real, is_int

Init = Literal["default", "glorot_uniform"]


class GaussianNoise(nn.Module):
    """Adds ``N(0, std^2)`` noise in training mode; the identity in evaluation mode."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = check_real(std, "std", minimum=0)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.std == 0:
            return x
        return x + torch.randn_like(x) * self.std

    def extra_repr(self) -> str:
        return f"std={self.std}"

    def as_bound_module(self) -> nn.Module:
        """The evaluation-mode layer for bound propagation (:func:`memo_callbacks.functional.certify.certify`): the identity."""
        return nn.Identity()


class Crop(nn.Module):
    """Removes ``pixels`` rows and columns from each side of ``[B, C, H, W]`` images (the paper's Crop(2, 2))."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.pixels = check_int(pixels, "pixels", minimum=0)

    def forward(self, x: Tensor) -> Tensor:
        p = self.pixels
        return x[..., p : x.shape[-2] - p, p : x.shape[-1] - p] if p else x

    def extra_repr(self) -> str:
        return f"pixels={self.pixels}"

    def as_bound_module(self) -> nn.Module:
        """This crop as a standard layer for bound propagation: zero padding by ``-pixels`` on each side."""
        p = self.pixels
        return nn.ZeroPad2d((-p, -p, -p, -p)) if p else nn.Identity()


def _check_regularisers(dropout: float, input_dropout: float, input_noise: float, hidden_noise: float) -> None:
    for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
        check_real(p, name, 0.0, 1.0, strict_maximum=True)
    for name, s in (("input_noise", input_noise), ("hidden_noise", hidden_noise)):
        check_real(s, name, minimum=0.0)


def _input_layers(input_dropout: float, input_noise: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    if input_dropout > 0:
        layers.append(nn.Dropout(input_dropout))
    if input_noise > 0:
        layers.append(GaussianNoise(input_noise))
    return layers


def _hidden_regularisers(dropout: float, hidden_noise: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    if hidden_noise > 0:
        layers.append(GaussianNoise(hidden_noise))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


def glorot_uniform_(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every linear and conv layer (the paper's Figure 3 setting)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLP(nn.Sequential):
    """Fully connected ReLU network: flatten, hidden layers, linear output (logits).

    The paper uses 2 x 4096 units for MNIST and 2 x 16 for Figure 3.

    Args:
        in_features: number of input values (e.g. 784 for MNIST).
        num_classes: number of outputs.
        hidden: width of each hidden layer.
        dropout, input_dropout, input_noise, hidden_noise: the regularisers (see the module docstring).
        init: ``"default"`` (PyTorch's) or ``"glorot_uniform"`` (Glorot-uniform weights, zero biases).

    Example:
        >>> net = MLP(784, 10, hidden=(16, 16), init="glorot_uniform")
        >>> net(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (4096, 4096),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        input_noise: float = 0.0,
        hidden_noise: float = 0.0,
        init: Init = "default",
    ) -> None:
        in_features = check_int(in_features, "in_features", minimum=1)
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        if not isinstance(hidden, Sequence) or isinstance(hidden, str) or not all(is_int(h) and h >= 1 for h in hidden):
            raise ValueError(f"`hidden` widths must be >= 1, got {tuple(hidden) if isinstance(hidden, Sequence) else hidden!r}")
        hidden = tuple(int(h) for h in hidden)
        if init not in ("default", "glorot_uniform"):
            raise ValueError(f"`init` must be 'default' or 'glorot_uniform', got {init!r}")
        _check_regularisers(dropout, input_dropout, input_noise, hidden_noise)
        layers: list[nn.Module] = [nn.Flatten(), *_input_layers(input_dropout, input_noise)]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), *_hidden_regularisers(dropout, hidden_noise)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        if init == "glorot_uniform":
            glorot_uniform_(self)


class PaperCNN(nn.Sequential):
    """The paper's CIFAR-10 network (the "small AlexNet" of Zhang et al. 2017), with a width multiplier.

    Crop(2, 2) -> Conv(200w, 5x5) -> BN -> ReLU -> MaxPool(3x3, stride 2) -> Conv(200w, 5x5) -> BN -> ReLU
    -> MaxPool(3x3, stride 2) -> Dense(384w) -> BN -> ReLU -> Dense(192w) -> BN -> ReLU -> Dense(K).

    Convolutions and pools use "same"-style padding (the paper does not say; our default), so a 32x32 image is
    cropped to 28x28, pooled to 14x14 and then 7x7.

    Args:
        in_shape: ``(C, H, W)`` of the inputs.
        num_classes: number of outputs.
        width: multiplies every channel and unit count (1.0 is the paper's network; 0.25 runs on a CPU); each layer
            gets ``round(n * width)`` channels or units, and every one must keep at least one, so
            ``width > 1/384`` (the smallest layer, Dense(192), rounds to at least 1 above it).
        dropout, input_dropout, input_noise, hidden_noise: the regularisers; ``dropout`` and ``hidden_noise``
            act after the two dense hidden layers.
        crop: pixels removed from each side.

    Example:
        >>> net = PaperCNN((3, 32, 32), 10, width=0.1)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        width: float = 1.0,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        input_noise: float = 0.0,
        hidden_noise: float = 0.0,
        crop: int = 2,
    ) -> None:
        width = check_real(width, "width", minimum=0.0, strict_minimum=True)
        ch, d1, d2 = round(200 * width), round(384 * width), round(192 * width)
        if min(ch, d1, d2) < 1:
            raise ValueError(
                f"`width` must give every layer at least one channel or unit (Conv 200w, Dense 384w, Dense 192w, "
                f"rounded: width > 1/384 = {1 / 384:.6f}), got {width!r}, which gives {ch}, {d1} and {d2}"
            )
        if not isinstance(in_shape, Sequence) or len(in_shape) != 3 or not all(is_int(v) and v >= 1 for v in in_shape):
            raise ValueError(f"`in_shape` must be (C, H, W) of positive ints, got {in_shape!r}")
        c, h, w = (int(v) for v in in_shape)
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        crop = check_int(crop, "crop", minimum=0)
        if min(h, w) - 2 * crop < 1:
            raise ValueError(f"`crop`={crop} leaves nothing of a {h}x{w} image")
        _check_regularisers(dropout, input_dropout, input_noise, hidden_noise)
        side_h, side_w = h - 2 * crop, w - 2 * crop
        for _ in range(2):  # each MaxPool(3, stride 2, padding 1) maps n to ceil(n / 2)
            side_h, side_w = (side_h + 1) // 2, (side_w + 1) // 2
        super().__init__(
            Crop(crop),
            *_input_layers(input_dropout, input_noise),
            nn.Conv2d(c, ch, 5, padding=2),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(ch, ch, 5, padding=2),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Flatten(),  # [B, ch, side_h, side_w] -> [B, ch * side_h * side_w]
            nn.Linear(ch * side_h * side_w, d1),
            nn.BatchNorm1d(d1),
            nn.ReLU(),
            *_hidden_regularisers(dropout, hidden_noise),
            nn.Linear(d1, d2),
            nn.BatchNorm1d(d2),
            nn.ReLU(),
            *_hidden_regularisers(dropout, hidden_noise),
            nn.Linear(d2, num_classes),
        )
