"""Any folder of images in torchvision's ``ImageFolder`` layout, decoded once and cached as a uint8 tensor."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import torch
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from datamodules.base import NoisyDataModule, RawSplit
from datamodules.checks import check_str, is_int


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "memo_callbacks"


class NoisyImageFolder(NoisyDataModule):
    """Images in ``root/<split>/<class>/<file>`` folders, in the paper's noisy variants.

    Classes are the sub-folder names in sorted order, as :class:`torchvision.datasets.ImageFolder` finds them.
    The images are decoded once (in parallel threads) and cached as one uint8 tensor under ``cache_dir``, keyed by
    the files' paths, sizes and modification times, so a changed folder is decoded again.

    Args:
        data_dir: the root folder.
        train_dir: sub-folder of the training split.
        val_dir: sub-folder of the validation split; None to hold out ``val_size`` training images instead.
        image_size: resize every image to this ``(H, W)`` (or ``H`` for square); None requires equal sizes.
        mode: ``"RGB"`` or ``"L"`` (grey).
        cache_dir: where decoded tensors are cached (default ``$XDG_CACHE_HOME/memo_callbacks``).
        **kwargs: the noise, subset and batching options of :class:`~datamodules.base.NoisyDataModule`.

    Example:
        >>> dm = NoisyImageFolder("data/cifar10-jpg", val_dir="test", noise="random_labels")  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str,
        train_dir: str = "train",
        val_dir: str | None = "test",
        image_size: int | tuple[int, int] | None = None,
        mode: Literal["RGB", "L"] = "RGB",
        cache_dir: str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"`mode` must be 'RGB' or 'L', got {mode!r}")
        check_str(train_dir, "train_dir")
        check_str(val_dir, "val_dir", allow_none=True)
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"`cache_dir` must be a path (str or os.PathLike) or None, got {cache_dir!r}")
        if is_int(image_size):
            image_size = (image_size, image_size)
        if image_size is not None and (
            not isinstance(image_size, (tuple, list)) or len(image_size) != 2 or not all(is_int(v) and v >= 1 for v in image_size)
        ):
            raise ValueError(f"`image_size` must be a positive int or (H, W), got {image_size!r}")
        if image_size is not None:
            image_size = (int(image_size[0]), int(image_size[1]))
        if val_dir is None and kwargs.get("val_size") is None:
            raise ValueError("`val_dir` is None: pass `val_size` to hold out part of the training images instead")
        super().__init__(data_dir=data_dir, **kwargs)
        self.train_dir, self.val_dir = train_dir, val_dir
        self.image_size = image_size
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._classes: list[str] | None = None

    def _folder(self, sub: str) -> Path:
        path = Path(self.data_dir) / sub
        if not path.is_dir():
            raise FileNotFoundError(f"image folder {str(path)!r} does not exist (data_dir={self.data_dir!r}, split folder {sub!r})")
        return path

    def _load_split(self, split: Literal["train", "val"]) -> RawSplit | None:
        if split == "val" and self.val_dir is None:
            return None
        if split == "train" and self.val_dir is not None:
            self._folder(self.val_dir)  # a missing validation folder fails before the training images are decoded
        folder = self._folder(self.train_dir if split == "train" else self.val_dir)
        ds = datasets.ImageFolder(str(folder))
        if self._classes is None:
            self._classes = list(ds.classes)
        elif ds.classes != self._classes:
            raise ValueError(f"class folders of {str(folder)!r} {ds.classes} differ from the training split's {self._classes}")
        x, y = self._decode_cached(folder, ds.samples)
        return RawSplit(x, y)

    def _class_names(self) -> list[str] | None:
        return self._classes

    def _decode_cached(self, folder: Path, samples: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        h = hashlib.sha1(f"{folder.resolve()}|{self.image_size}|{self.mode}".encode())
        for path, target in samples:
            st = os.stat(path)
            h.update(f"{path}|{target}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        cache = self.cache_dir / f"imagefolder-{h.hexdigest()[:20]}.pt"
        if cache.exists():
            blob = torch.load(cache, weights_only=True)
            return blob["x"], blob["y"]
        x = self._decode(samples)
        y = torch.tensor([t for _, t in samples], dtype=torch.long)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save({"x": x, "y": y}, tmp)
        os.replace(tmp, cache)  # atomic: concurrent ranks never read a half-written file
        return x, y

    def _decode(self, samples: list[tuple[str, int]]) -> torch.Tensor:
        from concurrent.futures import ThreadPoolExecutor

        read_mode = ImageReadMode.RGB if self.mode == "RGB" else ImageReadMode.GRAY

        def one(path: str) -> torch.Tensor:
            try:
                img = decode_image(read_file(path), mode=read_mode)  # [C, H, W] uint8
            except (RuntimeError, ValueError, OSError) as err:  # torchvision names neither the file nor the folder
                raise ValueError(f"cannot decode the image file {path!r} (corrupt or not an image): {err}") from err
            if self.image_size is not None and tuple(img.shape[1:]) != self.image_size:
                img = TF.resize(img, list(self.image_size), antialias=True)
            return img

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            images = list(pool.map(one, [p for p, _ in samples]))
        if not images:
            raise ValueError("the image folder holds no images")
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise ValueError(f"images have different sizes {sorted(shapes)[:4]}; pass `image_size` to resize them")
        return torch.stack(images)
