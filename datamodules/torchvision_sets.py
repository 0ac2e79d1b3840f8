"""MNIST and CIFAR-10 through torchvision's own dataset classes (download, on-disk formats, integrity checks)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import torch
from torchvision import datasets

from datamodules.base import NoisyDataModule, RawSplit
from datamodules.checks import check_bool

_OFFLINE_HINT = (
    "If this machine is offline, put the files in `data_dir` by hand, or use `NoisyImageFolder` on a folder of "
    "images (e.g. the CIFAR-10 JPEGs), or `NoisyDigits` (scikit-learn's bundled digits, no download)."
)


class _TorchvisionDataModule(NoisyDataModule):
    """Shared loading for torchvision datasets: download in ``prepare_data``, read with ``download=False``."""

    dataset_cls: type
    dataset_name: str

    def __init__(self, data_dir: str = "./data", download: bool = False, **kwargs) -> None:
        check_bool(download, "download")
        super().__init__(data_dir=data_dir, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if not self.download:
            return
        for train in (True, False):
            try:
                self.dataset_cls(self.data_dir, train=train, download=True)
            except Exception as err:  # torchvision raises RuntimeError, URLError, OSError... depending on the mirror
                raise RuntimeError(
                    f"Downloading {self.dataset_name} to data_dir={self.data_dir!r} failed ({err}). {_OFFLINE_HINT}"
                ) from err

    def _open(self, train: bool):
        self._check_files(train)
        try:
            return self.dataset_cls(self.data_dir, train=train, download=False)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"{self.dataset_name} was not found in data_dir={self.data_dir!r} ({err}). Pass `download=True` to "
                f"fetch it, or point `data_dir` at a folder that holds it. {_OFFLINE_HINT}"
            ) from err
        except (AssertionError, ValueError, OSError, EOFError, IndexError) as err:  # torchvision's parsers
            raise ValueError(
                f"{self.dataset_name} files in data_dir={self.data_dir!r} are corrupt and cannot be read "
                f"({type(err).__name__}: {err}); delete them and download again"
            ) from err

    def _check_files(self, train: bool) -> None:
        """Check the raw files' headers before torchvision parses them (its errors do not name the file)."""

    def _class_names(self) -> list[str]:
        return list(self.dataset_cls.classes)


class NoisyMNIST(_TorchvisionDataModule):
    """MNIST (60,000 training and 10,000 test digits, 28x28) in the paper's noisy variants.

    Args:
        data_dir: the root torchvision's :class:`~torchvision.datasets.MNIST` reads (``data_dir/MNIST/raw``).
        download: download the files in ``prepare_data`` if missing.
        **kwargs: the noise, subset and batching options of :class:`~datamodules.base.NoisyDataModule`.

    Example:
        >>> dm = NoisyMNIST("./data", download=True, noise="random_labels", noise_fraction=0.4)  # doctest: +SKIP
        >>> fig3 = NoisyMNIST("./data", subset=1000, downscale=2, normalize=False)  # doctest: +SKIP
    """

    dataset_cls = datasets.MNIST
    dataset_name = "MNIST"
    image_shape = (1, 28, 28)
    dataset_num_classes = 10
    train_split_size = 60_000

    def _load_split(self, split: Literal["train", "val"]) -> RawSplit:
        ds = self._open(train=split == "train")
        return RawSplit(ds.data.unsqueeze(1), ds.targets.long())  # [N, 28, 28] -> [N, 1, 28, 28] uint8

    def _check_files(self, train: bool) -> None:
        raw = Path(self.data_dir) / "MNIST" / "raw"  # torchvision's `raw_folder`
        part = "train" if train else "t10k"
        counts = []
        for kind, magic, dims in (("images-idx3-ubyte", 2051, 3), ("labels-idx1-ubyte", 2049, 1)):
            path = raw / f"{part}-{kind}"
            if path.is_file():  # a missing file is torchvision's "not found" below
                counts.append(check_idx_file(path, magic, dims))
        if len(counts) == 2 and counts[0] != counts[1]:
            raise ValueError(
                f"MNIST files in {str(raw)!r} disagree: {part}-images-idx3-ubyte holds {counts[0]} images but "
                f"{part}-labels-idx1-ubyte {counts[1]} labels"
            )


class NoisyCIFAR10(_TorchvisionDataModule):
    """CIFAR-10 (50,000 training and 10,000 test images, 32x32 RGB) in the paper's noisy variants.

    Args:
        data_dir: the root torchvision's :class:`~torchvision.datasets.CIFAR10` reads
            (``data_dir/cifar-10-batches-py``).
        download: download the archive in ``prepare_data`` if missing.
        **kwargs: the noise, subset and batching options of :class:`~datamodules.base.NoisyDataModule`.

    Example:
        >>> dm = NoisyCIFAR10("./data", download=True, noise="random_labels")  # doctest: +SKIP
    """

    dataset_cls = datasets.CIFAR10
    dataset_name = "CIFAR-10"
    image_shape = (3, 32, 32)
    dataset_num_classes = 10
    train_split_size = 50_000

    def _load_split(self, split: Literal["train", "val"]) -> RawSplit:
        ds = self._open(train=split == "train")
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # [N, 32, 32, 3] -> [N, 3, 32, 32] uint8
        return RawSplit(x, torch.as_tensor(ds.targets, dtype=torch.long))


def check_idx_file(path: str | os.PathLike, magic: int, dims: int) -> int:
    """Check the header of an unsigned-byte IDX file (MNIST's format) and that its size matches; return its length.

    Raises:
        ValueError: naming the file, when the magic number or the size is wrong.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 * (dims + 1))
    if len(header) < 4 * (dims + 1):
        raise ValueError(f"the IDX file {str(path)!r} is truncated: {size} bytes, shorter than its header")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise ValueError(
            f"the IDX file {str(path)!r} has magic number {found:#010x}, expected {magic:#010x} "
            "(not an MNIST file, or a compressed one: decompress it)"
        )
    shape = [int.from_bytes(header[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(dims)]
    expected = 4 * (dims + 1) + math.prod(shape)
    if size != expected:
        raise ValueError(
            f"the IDX file {str(path)!r} is {size} bytes, but its header (shape {shape}) says {expected}: "
            "truncated or corrupt"
        )
    return shape[0]
