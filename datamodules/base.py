"""The base datamodule: any labelled image dataset, held in memory as one tensor, in the paper's noisy variants."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningDataModule
from torch import Tensor

from datamodules.checks import check_bool, check_choice, check_int, check_seed, is_int, is_real
from datamodules.loader import IndexSampler, TensorBatchLoader
from datamodules.noise import (
    INPUT_NOISES,
    LABEL_NOISES,
    NOISE_KINDS,
    Corruption,
    InputNoise,
    LabelNoise,
    NoiseKind,
    channel_stats,
    choose_corrupted,
    corrupt_inputs,
    corrupt_labels,
    generator_from_seed,
)

# Independent random streams of one seed, so that changing one option does not reshuffle another.
_STREAM_SUBSET, _STREAM_MASK, _STREAM_LABELS, _STREAM_INPUTS, _STREAM_SPLIT = "subset", "mask", "labels", "inputs", "split"


@dataclass
class RawSplit:
    """A split as loaded from disk: ``x`` is ``[N, C, H, W]`` uint8 (0-255) or float in [0, 1]."""

    x: Tensor
    y: Tensor


class NoisyDataModule(LightningDataModule):
    """A labelled image dataset in the noisy variants of Arpit et al. (2017), batched from memory.

    Subclasses load the raw splits (:meth:`_load_split`); this class does the rest, in this order: hold out a
    validation set if asked, take a subset of the training set, downscale by average pooling, compute the clean
    training set's per-channel statistics, corrupt a seeded fraction of the training set, normalise. The validation
    set is never corrupted. Batches are :class:`~datamodules.loader.NoisyBatch` tuples ``(x, y, index, noisy)``.

    All randomness comes from local generators seeded by ``seed``: the data is identical on every DDP rank and
    every run with the same seed, and the global RNG is never touched.

    Args:
        data_dir: where the dataset lives (or is downloaded to).
        noise: ``"none"``, ``"random_labels"`` (the paper's randY) or ``"random_inputs"`` (randX).
        noise_fraction: fraction of the training set to corrupt; exactly ``round(noise_fraction * N)`` examples.
            Defaults to 1.0 with a noise kind and must be left unset (or 0) with ``noise="none"``.
        label_noise: ``"uniform"`` (new label uniform over the K classes, so about 1/K stay correct) or ``"wrong"``
            (uniform over the K-1 other classes).
        input_noise: ``"gaussian"`` (per-channel mean and std of the clean training set, as in the paper),
            ``"gaussian_global"`` (one mean and std) or ``"uniform"`` (U(0, 1), the paper's Figure 3).
        one_class_per_example: label example ``i`` with class ``i``, so ``num_classes`` is the training set size.
        subset: keep only this many training examples.
        subset_mode: ``"first"`` (the first ``subset`` examples, as the paper's Figure 3) or ``"random"`` (seeded).
        downscale: average-pooling factor (2 turns MNIST's 28x28 into the paper's 14x14).
        normalize: subtract the clean training set's per-channel mean and divide by its std.
        val_size: hold out this many (seeded) training examples as the clean validation set, instead of the
            dataset's own test split.
        batch_size: training batch size (per process).
        val_batch_size: validation batch size; defaults to ``batch_size``.
        shuffle: reshuffle the training set every epoch (seeded by ``seed`` and the epoch).
        drop_last: drop the last incomplete training batch.
        on_device: keep the tensors on the Trainer's device (GPU) so batches never cross the bus.
        seed: seeds the subset, the corruption, the split and the data order.

    Example:
        >>> from datamodules import NoisyDigits
        >>> dm = NoisyDigits(noise="random_labels", noise_fraction=0.2, seed=0)
        >>> dm.setup("fit")
        >>> dm.corruption.num_corrupted == round(0.2 * dm.num_train)
        True
    """

    #: Shape ``(C, H, W)`` of the raw images, when fixed by the dataset (checked before any work).
    image_shape: ClassVar[tuple[int, int, int] | None] = None
    #: Number of classes, when fixed by the dataset.
    dataset_num_classes: ClassVar[int | None] = None
    #: Size of the raw training split, when fixed by the dataset.
    train_split_size: ClassVar[int | None] = None

    def __init__(
        self,
        data_dir: str = "./data",
        noise: NoiseKind = "none",
        noise_fraction: float | None = None,
        label_noise: LabelNoise = "uniform",
        input_noise: InputNoise = "gaussian",
        one_class_per_example: bool = False,
        subset: int | None = None,
        subset_mode: Literal["first", "random"] = "first",
        downscale: int = 1,
        normalize: bool = True,
        val_size: int | None = None,
        batch_size: int = 128,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        on_device: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"`data_dir` must be a path (str or os.PathLike), got {data_dir!r} ({type(data_dir).__name__})")
        check_choice(noise, "noise", NOISE_KINDS)
        if noise == "none":
            if noise_fraction not in (None, 0, 0.0) or isinstance(noise_fraction, bool):
                raise ValueError(
                    f"`noise_fraction` must be left unset with noise='none', got {noise_fraction}; "
                    "choose a noise kind ('random_labels' or 'random_inputs') to corrupt examples"
                )
            noise_fraction = 0.0
        elif noise_fraction is None:
            noise_fraction = 1.0
        if not is_real(noise_fraction) or not 0.0 <= noise_fraction <= 1.0:
            raise ValueError(f"`noise_fraction` must be in [0, 1], got {noise_fraction!r}")
        check_choice(label_noise, "label_noise", LABEL_NOISES)
        check_choice(input_noise, "input_noise", INPUT_NOISES)
        for name, flag in (
            ("one_class_per_example", one_class_per_example), ("normalize", normalize), ("shuffle", shuffle),
            ("drop_last", drop_last), ("on_device", on_device),
        ):  # fmt: skip
            check_bool(flag, name)
        if subset is not None and (not is_int(subset) or subset < 1):
            raise ValueError(f"`subset` must be a positive integer or None, got {subset!r}")
        if subset is not None and self.train_split_size is not None and val_size is None:
            if subset > self.train_split_size:
                raise ValueError(
                    f"`subset` must be at most the training set size {self.train_split_size}, got {subset}"
                )
        if subset_mode not in ("first", "random"):
            raise ValueError(f"`subset_mode` must be 'first' or 'random', got {subset_mode!r}")
        if not is_int(downscale) or downscale < 1:
            raise ValueError(f"`downscale` must be a positive integer, got {downscale!r}")
        if self.image_shape is not None:
            self._check_downscale(downscale, self.image_shape)
        if val_size is not None and (not is_int(val_size) or val_size < 1):
            raise ValueError(f"`val_size` must be a positive integer or None, got {val_size!r}")
        check_int(batch_size, "batch_size", minimum=1)
        check_int(val_batch_size, "val_batch_size", minimum=1, allow_none=True)
        seed = check_seed(seed)

        self.data_dir = data_dir
        self.noise = noise
        self.noise_fraction = float(noise_fraction)
        self.label_noise = label_noise
        self.input_noise = input_noise
        self.one_class_per_example = one_class_per_example
        self.subset = None if subset is None else int(subset)
        self.subset_mode = subset_mode
        self.downscale = int(downscale)
        self.normalize = normalize
        self.val_size = None if val_size is None else int(val_size)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.on_device = on_device
        self.seed = seed
        self.save_hyperparameters()
        self._built = False

    # ----------------------------------------------------------------------------------------------- subclass API
    def _load_split(self, split: Literal["train", "val"]) -> RawSplit | None:
        """Load a raw split from ``data_dir``; return None for ``"val"`` when the dataset has no test split."""
        raise NotImplementedError

    def _class_names(self) -> list[str] | None:
        return None

    # ---------------------------------------------------------------------------------------------- Lightning API
    def setup(self, stage: str | None = None) -> None:
        if not self._built:
            self._build()
            self._built = True
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            for name in ("train_x", "train_y", "train_noisy", "val_x", "val_y", "val_noisy"):
                setattr(self, name, getattr(self, name).to(device))

    def train_dataloader(self) -> TensorBatchLoader:
        self._require_setup()
        rank, world = self._rank_and_world()
        sampler = IndexSampler(self.num_train, self.shuffle, self.seed, rank, world, pad=True)
        loader = TensorBatchLoader(self.train_x, self.train_y, self.train_noisy, self.batch_size, sampler, self.drop_last)
        trainer = self.trainer
        loader.resume_at(self._batches_done_this_epoch(), epoch=trainer.current_epoch if trainer is not None else 0)
        return loader

    def val_dataloader(self) -> TensorBatchLoader:
        self._require_setup()
        rank, world = self._rank_and_world()
        # No padding: every validation example is seen exactly once across ranks, so metrics are exact.
        sampler = IndexSampler(self.num_val, False, self.seed, rank, world, pad=False)
        return TensorBatchLoader(self.val_x, self.val_y, self.val_noisy, self.val_batch_size, sampler)

    def test_dataloader(self) -> TensorBatchLoader:
        return self.val_dataloader()

    def state_dict(self) -> dict[str, Any]:
        # The data is a pure function of the hyperparameters: nothing else to save.
        return {"seed": self.seed}

    # -------------------------------------------------------------------------------------------- what is exposed
    @property
    def num_classes(self) -> int:
        if self._built:
            return self._num_classes
        if self.one_class_per_example:
            if self.subset is not None:
                return self.subset
            if self.train_split_size is not None and self.val_size is None:
                return self.train_split_size
        elif self.dataset_num_classes is not None:
            return self.dataset_num_classes
        raise RuntimeError(f"{type(self).__name__}.num_classes is known after `setup()`; call `dm.setup('fit')` first")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the model's inputs (after downscaling)."""
        if self._built:
            return tuple(self.train_x.shape[1:])  # type: ignore[return-value]
        if self.image_shape is not None:
            c, h, w = self.image_shape
            return (c, h // self.downscale, w // self.downscale)
        raise RuntimeError(f"{type(self).__name__}.input_shape is known after `setup()`; call `dm.setup('fit')` first")

    @property
    def num_train(self) -> int:
        self._require_setup()
        return self.train_x.shape[0]

    @property
    def num_val(self) -> int:
        self._require_setup()
        return self.val_x.shape[0]

    @property
    def pixel_scale(self) -> float:
        """Size of one 0-255 pixel unit in raw input units (raw inputs are in [0, 1])."""
        return 1.0 / 255.0

    @property
    def mean(self) -> Tensor:
        """``[C]`` per-channel mean subtracted from the raw inputs (zeros when ``normalize=False``)."""
        self._require_setup()
        return self._mean

    @property
    def std(self) -> Tensor:
        """``[C]`` per-channel std the raw inputs are divided by (ones when ``normalize=False``)."""
        self._require_setup()
        return self._std

    @property
    def input_bounds(self) -> tuple[Tensor, Tensor]:
        """``([C], [C])`` the model-input values of raw 0 and raw 1, per channel: the valid input range."""
        return (0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std

    def pixels_to_input_units(self, value: float) -> Tensor:
        """``[C]`` a distance in 0-255 pixel units (e.g. LASS's r = 0.3) in model-input units, per channel."""
        return value * self.pixel_scale / self.std

    @property
    def corruption(self) -> Corruption:
        """Which training examples were corrupted, and their labels before and after."""
        self._require_setup()
        return self._corruption

    @property
    def noisy_mask(self) -> Tensor:
        return self.corruption.mask

    # ------------------------------------------------------------------------------------------------- internals
    def _require_setup(self) -> None:
        if not self._built:
            raise RuntimeError(f"{type(self).__name__} is not set up; call `dm.setup('fit')` first")

    def _batches_done_this_epoch(self) -> int:
        """Training batches already done in the current epoch when resuming from a mid-epoch checkpoint, else 0.

        Lightning restarts a plain dataloader from its first batch, replaying some batches and skipping others; the
        order here is a function of (seed, epoch), so the loader can resume exactly where the checkpoint was taken.
        """
        trainer = self.trainer
        fit_loop = getattr(trainer, "fit_loop", None)
        if fit_loop is None or not fit_loop.restarting:
            return 0
        return int(fit_loop.epoch_loop.batch_progress.current.processed)  # trained on (a checkpoint taken in
        # on_train_batch_end, as ModelCheckpoint(every_n_train_steps) does, counts its batch as processed, not completed)

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    @staticmethod
    def _check_downscale(downscale: int, shape: tuple[int, ...]) -> None:
        _, h, w = shape[-3:]
        if h % downscale or w % downscale:
            raise ValueError(f"`downscale` must divide the image size {h}x{w}, got {downscale}")

    @staticmethod
    def _to_float(x: Tensor) -> Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def _build(self) -> None:
        train = self._load_split("train")
        assert train is not None
        val = None if self.val_size is not None else self._load_split("val")
        if self.val_size is not None:
            if self.val_size >= train.x.shape[0]:
                raise ValueError(f"`val_size` must be smaller than the training split ({train.x.shape[0]}), got {self.val_size}")
            perm = torch.randperm(train.x.shape[0], generator=generator_from_seed(self.seed, _STREAM_SPLIT))
            val_idx, train_idx = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
            val = RawSplit(train.x[val_idx], train.y[val_idx])
            train = RawSplit(train.x[train_idx], train.y[train_idx])
        if val is None:
            raise ValueError(
                f"{type(self).__name__} found no validation split in {self.data_dir!r}; "
                "pass `val_size` to hold out part of the training set"
            )
        n = train.x.shape[0]
        if self.subset is not None:
            if self.subset > n:
                raise ValueError(f"`subset` must be at most the training set size {n}, got {self.subset}")
            if self.subset_mode == "first":
                keep = torch.arange(self.subset)
            else:
                g = generator_from_seed(self.seed, _STREAM_SUBSET)
                keep = torch.randperm(n, generator=g)[: self.subset].sort().values
            kept_classes, all_classes = train.y[keep].unique().numel(), train.y.unique().numel()
            if self.subset_mode == "first" and kept_classes < all_classes:
                # A folder read class by class (ImageFolder) puts all of one class first: say so, loudly.
                warnings.warn(
                    f"`subset_mode='first'` kept the first {self.subset} training examples of {type(self).__name__}, "
                    f"which hold only {kept_classes} of its {all_classes} classes (is the data sorted by class?); "
                    "pass `subset_mode='random'` for a seeded subset of every class",
                    UserWarning,
                    stacklevel=2,
                )
            train = RawSplit(train.x[keep], train.y[keep])
        self._check_downscale(self.downscale, tuple(train.x.shape))

        x_train, x_val = self._to_float(train.x), self._to_float(val.x)
        if self.downscale > 1:
            x_train = F.avg_pool2d(x_train, self.downscale)
            x_val = F.avg_pool2d(x_val, self.downscale)
        clean_y = train.y.long()
        val_y = val.y.long()
        n = x_train.shape[0]
        if self.one_class_per_example:
            clean_y = torch.arange(n)
            num_classes = n
        else:
            num_classes = self.dataset_num_classes or int(max(clean_y.max(), val_y.max())) + 1
        mean, std = channel_stats(x_train)

        mask = choose_corrupted(n, self.noise_fraction, generator_from_seed(self.seed, _STREAM_MASK))
        y = clean_y
        if self.noise == "random_labels":
            y = corrupt_labels(clean_y, mask, num_classes, self.label_noise, generator_from_seed(self.seed, _STREAM_LABELS))
        elif self.noise == "random_inputs":
            x_train = corrupt_inputs(x_train, mask, self.input_noise, generator_from_seed(self.seed, _STREAM_INPUTS))

        if not self.normalize:
            mean, std = torch.zeros_like(mean), torch.ones_like(std)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel is left unscaled
        x_train = (x_train - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        x_val = (x_val - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

        self.train_x, self.train_y, self.train_noisy = x_train.contiguous(), y, mask
        self.val_x, self.val_y = x_val.contiguous(), val_y
        self.val_noisy = torch.zeros(x_val.shape[0], dtype=torch.bool)
        self._mean, self._std = mean, std
        self._num_classes = num_classes
        self._corruption = Corruption(mask=mask, clean_targets=clean_y, targets=y)
