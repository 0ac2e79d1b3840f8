"""scikit-learn's handwritten digits: real data that ships inside the sklearn wheel, so it works offline."""

from __future__ import annotations

from typing import Literal

import torch

from datamodules.base import NoisyDataModule, RawSplit


class NoisyDigits(NoisyDataModule):
    """The 1,797 8x8 digits of :func:`sklearn.datasets.load_digits`, in the paper's noisy variants.

    The digits have no official test split: ``val_size`` examples (default 297, leaving 1,500 for training) are held
    out by a seeded split. Pixel values 0-16 are scaled to [0, 1].

    Example:
        >>> dm = NoisyDigits(noise="random_inputs", input_noise="uniform", normalize=False)
        >>> dm.setup()
        >>> dm.input_shape, dm.num_classes, dm.num_train
        ((1, 8, 8), 10, 1500)
    """

    image_shape = (1, 8, 8)
    dataset_num_classes = 10

    def __init__(self, data_dir: str = "./data", val_size: int | None = 297, **kwargs) -> None:
        super().__init__(data_dir=data_dir, val_size=val_size, **kwargs)

    def _load_split(self, split: Literal["train", "val"]) -> RawSplit | None:
        if split == "val":
            return None
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.as_tensor(data.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # [N, 8, 8] -> [N, 1, 8, 8]
        return RawSplit(x, torch.as_tensor(data.target, dtype=torch.long))
