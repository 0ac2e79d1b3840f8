"""The critical sample ratio (Arpit et al., 2017, Section 4) of the model during training, logged to TensorBoard."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import default_collate

from datamodules.checks import check_bool, check_callable, check_int, is_real
from memo_callbacks.functional.lass import LASSConfig, lass, pixels_to_input_units
from memo_callbacks.utilities import BatchAdapter, all_reduce_sum, find_tensorboard, rank_shard, unpack_batch
from memo_callbacks.utilities.tensorboard import add_epoch_layout, log_epoch_scalars


@dataclass
class _Split:
    """The examples of one split this rank searches: inputs, dataset indices and a group (0 clean, 1 noisy)."""

    name: str
    x: Tensor
    ids: Tensor
    noisy: Tensor | None


def log_spaced_epochs(max_epochs: int, num: int) -> list[int]:
    """About ``num`` epochs (0-based, as ``trainer.current_epoch``) log-spaced over ``[0, max_epochs - 1]``.

    Dense early, where the critical sample ratio moves fastest, sparse late: epoch ``e`` is measured where
    ``e + 1`` is on a geometric grid from 1 to ``max_epochs``. Always holds the first and the last epoch; fewer than
    ``num`` entries where the grid rounds two points to one epoch. For ``CriticalSampleRatio(epochs=...)``.

    Example:
        >>> log_spaced_epochs(100, 6)
        [0, 2, 5, 15, 39, 99]
        >>> log_spaced_epochs(3, 10)
        [0, 1, 2]
    """
    max_epochs = check_int(max_epochs, "max_epochs", minimum=1)
    num = check_int(num, "num", minimum=1)
    if num == 1 or max_epochs == 1:
        return [max_epochs - 1]
    grid = (math.exp(math.log(max_epochs) * k / (num - 1)) for k in range(num))  # 1 .. max_epochs, geometric
    return sorted({min(max_epochs, max(1, round(g))) - 1 for g in grid})


def _check_epochs(epochs: object) -> tuple[int, ...] | None:
    if epochs is None:
        return None
    if isinstance(epochs, (str, bytes)) or not isinstance(epochs, Sequence) or len(epochs) == 0:
        raise ValueError(f"`epochs` must be a non-empty sequence of epoch numbers (integers >= 0) or None, got {epochs!r}")
    for e in epochs:
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"`epochs` must hold epoch numbers (integers >= 0, 0-based), got {e!r} in {list(epochs)!r}")
    return tuple(sorted(set(epochs)))


class CriticalSampleRatio(Callback):
    """Logs the share of samples that have an adversarial example within an L-infinity box (found by LASS).

    Every ``every_n_epochs`` epochs (or at exactly the listed ``epochs``), at the end of the epoch's last validation (never during the sanity check nor
    at mid-epoch validations; with ``check_val_every_n_epoch`` it runs only in epochs that validate), it runs
    :func:`~memo_callbacks.functional.lass` on a fixed seeded subset of the clean validation set and logs

    - ``csr/val``: critical samples / samples examined (NaN, with a warning naming the epoch and the count, when any
      examined sample has non-finite clean logits: a diverged model has no critical sample ratio);
    - ``csr/val_iterations``: mean number of LASS steps to a flip, over the critical samples;
    - a TensorBoard histogram ``csr/val_iterations_hist`` of those step counts (when a TensorBoard logger is used);
    - ``csr/val_certified`` (with ``certify=True``): the share of the examined samples proved non-critical by
      :func:`~memo_callbacks.functional.certify.certify` before the search, hence not searched (``csr/val`` is
      the same with or without the screen; a network the bounds do not support is searched whole, certifying none);

    - ``csr/seconds``: the wall time of the measurement (data, search and reduction; the slowest rank's), to see and
      schedule its cost: ``epochs=log_spaced_epochs(max_epochs, num)`` measures densely early and sparsely late;

    and, with ``train=True``, the same for a seeded subset of the training set (``csr/train``), split into
    ``csr/train_clean`` and ``csr/train_noisy`` when the datamodule (or the batches' ``noisy`` flags, as
    :class:`~memo_callbacks.WithIndex` gives them) says which examples are noisy. Lightning logs these at the global
    step; with a TensorBoard logger each is also written against the epoch as ``by_epoch/csr/...`` (``step`` =
    epoch), and the "Custom Scalars" dashboard groups them.

    **Where the data comes from.** If ``trainer.datamodule`` holds the split as tensors (``val_x``/``val_y``,
    ``train_x``/``train_y``, as the datamodules of this project do), the subset is indexed from them directly.
    Otherwise the examples are read from the map-style dataset of the Trainer's (first) validation or training
    dataloader, ``dataset[i]`` for each chosen index, collated with :func:`~torch.utils.data.default_collate` and
    read by :func:`~memo_callbacks.utilities.unpack_batch`: ``(x, y)``, ``(x, y, index)``, ``(x, y, index, noisy)``
    or dicts; pass ``batch_adapter`` for any other format. The subset is ``randperm(N)[:num_samples]`` of a
    generator seeded by ``seed``: the same examples every epoch and on every rank. The noise stream is keyed by
    dataset index, so the same example gets the same noise every epoch (common random numbers: epoch-to-epoch
    changes of the curve come from the model, not from the noise).

    **The search** is set by one :class:`~memo_callbacks.functional.LASSConfig` (``lass``), the paper's by default.
    **Units.** With ``unit="pixel"`` (default) its ``radius``, ``step_size`` and ``noise_std`` are on the 0-255 pixel
    scale (the paper's r = 0.3, alpha = 0.25, beta = 0.2) and converted per channel with the inputs' ``std`` and
    ``pixel_scale``, taken from the arguments or else from the datamodule (``dm.std``, ``dm.pixel_scale``); with
    ``unit="input"`` they are used as given. **Clipping.** By default (``clip=None``) the search explores the whole
    L-inf box, the paper's definition, even where it leaves the valid pixel range; ``clip="auto"`` keeps it inside
    ``dm.input_bounds`` when the datamodule has them (a lower CSR, notably for noise-trained networks), and an
    explicit ``(low, high)`` pair inside those bounds.

    **DDP.** Each rank searches its disjoint strided share of the subset (no padding: every example on exactly one
    rank); the counts are summed exactly (int64) on every rank after the search, so every rank logs the same value.

    Args:
        num_samples: validation examples examined (None: all of them).
        every_n_epochs: run at the end of every n-th epoch's validation.
        epochs: run at exactly these epochs (0-based, as ``trainer.current_epoch``; e.g.
            :func:`log_spaced_epochs`) instead of every n-th; then ``every_n_epochs`` must stay 1.
        lass: LASS's radius, step size, noise, unit, iterations, clipping and seed (its seed also chooses the
            subsets); None: ``LASSConfig()``, the paper's settings.
        batch_size: samples searched at once per rank.
        train: also measure on the training set.
        num_train_samples: training examples examined (None: all of them).
        input_std: ``[C]`` per-channel std of the inputs (pixel units); default from the datamodule.
        pixel_scale: one pixel unit in raw input units; default ``dm.pixel_scale``, else 1/255.
        batch_adapter: turns one collated dataset batch into a :class:`~memo_callbacks.utilities.ParsedBatch`.
        certify: screen each split with certified margin bounds first and search only the samples they cannot
            prove non-critical (the same critical flags, far fewer LASS steps at small radii). ``"auto"``
            (default): screen, but when a measurement certifies less than 10% of a split (bounds too loose at
            this radius and network: the screen would cost more than it saves), search that split without it for
            the next 4 measurements, then try again (decided from the totals summed over ranks, so every rank
            agrees; ``csr/<split>_certified`` is logged when the screen ran). True: always screen; False: plain LASS.

    Example:
        >>> csr = CriticalSampleRatio(num_samples=500, every_n_epochs=5, train=True)  # the paper's LASS
        >>> clipped = CriticalSampleRatio(lass=LASSConfig(radius=3.0, clip="auto"))
        >>> csr.state_key
        "CriticalSampleRatio{'num_samples': 500, 'seed': 0, 'radius': 0.3, 'unit': 'pixel', 'train': True}"
    """

    def __init__(
        self,
        num_samples: int | None = 1000,
        every_n_epochs: int = 1,
        lass: LASSConfig | None = None,
        batch_size: int = 256,
        train: bool = False,
        num_train_samples: int | None = 1000,
        input_std: float | Sequence[float] | Tensor | None = None,
        pixel_scale: float | None = None,
        batch_adapter: BatchAdapter | None = None,
        certify: bool | Literal["auto"] = "auto",
        epochs: Sequence[int] | None = None,
    ) -> None:
        for name, value in (("num_samples", num_samples), ("num_train_samples", num_train_samples)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer or None (all examples), got {value!r}")
        for name, value in (("every_n_epochs", every_n_epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        epochs = _check_epochs(epochs)
        if epochs is not None and every_n_epochs != 1:
            raise ValueError(f"pass `epochs` or `every_n_epochs`, not both: got epochs={list(epochs)} and every_n_epochs={every_n_epochs}")
        #: The epochs to measure at (sorted), or None: every ``every_n_epochs``.
        self.epochs = epochs
        if lass is None:
            lass = LASSConfig()
        if not isinstance(lass, LASSConfig):
            raise TypeError(f"`lass` must be a LASSConfig or None, got {type(lass).__name__}")
        check_bool(train, "train")
        if pixel_scale is not None and not (is_real(pixel_scale) and pixel_scale > 0):
            raise ValueError(f"`pixel_scale` must be a finite number > 0 or None, got {pixel_scale!r}")
        if input_std is not None:
            try:
                input_std = torch.as_tensor(input_std, dtype=torch.float32).flatten()
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"`input_std` must be a positive number or a sequence of them, got {input_std!r}") from None
            if input_std.numel() == 0 or not bool(((input_std > 0) & torch.isfinite(input_std)).all()):
                raise ValueError(f"`input_std` must be non-empty, finite and > 0, got {input_std.tolist()}")
        check_callable(batch_adapter, "batch_adapter")
        if not (isinstance(certify, bool) or (isinstance(certify, str) and certify == "auto")):
            raise ValueError(f"`certify` must be True, False or 'auto', got {certify!r}")
        self.certify = certify
        self._screen_skip: dict[str, int] = {}  # certify="auto": measurements per split left without the screen
        #: The LASS settings (the attributes below are read from it).
        self.lass = lass
        radius, step_size, noise_std, unit = lass.radius, lass.step_size, lass.noise_std, lass.unit
        max_iter, seed, clip = lass.max_iter, lass.seed, lass.clip
        self.num_samples = num_samples
        self._warned_small = False
        self.every_n_epochs = every_n_epochs
        self.radius, self.step_size, self.noise_std = float(radius), float(step_size), float(noise_std)
        self.unit = unit
        self.max_iter = max_iter
        self.seed = seed
        self.batch_size = batch_size
        self.train = train
        self.num_train_samples = num_train_samples
        self.input_std = input_std
        self.pixel_scale = pixel_scale
        self.clip = clip
        self.batch_adapter = batch_adapter
        #: One entry per measurement: ``{"epoch", "global_step", "csr/val", ...}``; saved in checkpoints.
        self.history: list[dict[str, float | int]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            num_samples=self.num_samples, seed=self.seed, radius=self.radius, unit=self.unit, train=self.train
        )

    # ----------------------------------------------------------------------------------------------- Lightning
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.unit == "pixel" and self.input_std is None and not _has(trainer.datamodule, "std"):
            raise ValueError(
                "CriticalSampleRatio(unit='pixel') needs the inputs' per-channel std to convert pixel units (the "
                "default LASSConfig's radius 0.3 is on the 0-255 pixel scale) and there is no datamodule with a "
                "`std` attribute: pass `input_std=[...]` (the std of each input channel, e.g. [1.0] for unnormalised "
                "inputs, and `pixel_scale`, one pixel in input units, default 1/255), or give the radius, step size "
                "and noise in model-input units with `lass=LASSConfig(unit='input', radius=..., step_size=..., "
                "noise_std=...)`"
            )
        if isinstance(self.clip, str) and not _has(trainer.datamodule, "input_bounds"):
            raise ValueError(
                "CriticalSampleRatio with LASSConfig(clip='auto') needs a datamodule with `input_bounds` (as "
                "datamodules.NoisyDataModule has); pass explicit bounds `clip=(low, high)`, or clip=None (the "
                "paper's box)"
            )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        self._measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history], "screen_skip": dict(self._screen_skip)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict["history"]]
        self._screen_skip = dict(state_dict.get("screen_skip", {}))

    # ------------------------------------------------------------------------------------------------ internals
    def _due(self, trainer: Trainer) -> bool:
        if trainer.state.fn != "fit":
            return True  # trainer.validate(): measure once
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return False  # a mid-epoch validation (val_check_interval < 1): measure once per epoch, at its end
        if self.epochs is not None:
            return trainer.current_epoch in self.epochs
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> None:
        start = time.perf_counter()
        splits = [self._load(trainer, "val", self.num_samples)]
        if self.train:
            splits.append(self._load(trainer, "train", self.num_train_samples))
        entry: dict[str, float | int] = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        writer = find_tensorboard(trainer) if trainer.is_global_zero else None
        for split in splits:
            screen = self._screen_due(split.name)
            counts, hist = self._search(pl_module, split, trainer.datamodule, screen)  # [2 groups, 4], [max_iter + 1]
            counts, hist = all_reduce_sum(trainer, counts), all_reduce_sum(trainer, hist)  # every rank, exact
            entry.update(self._summarise(split, counts, screen))
            self._warn_nonfinite(split.name, counts, trainer.current_epoch)
            self._update_screen(split.name, counts, screen)
            if writer is not None and int(hist.sum()) > 0:
                self._log_histogram(writer, f"csr/{split.name}_iterations_hist", hist, trainer.global_step)
        entry["csr/seconds"] = _max_over_ranks(trainer, time.perf_counter() - start)
        self.history.append(entry)
        for key, value in entry.items():
            if key.startswith("csr/"):
                pl_module.log(key, float(value), on_step=False, on_epoch=True, sync_dist=False)
        # the same values against the epoch (rank zero, TensorBoard only): by_epoch/csr/...
        log_epoch_scalars(trainer, {k: v for k, v in entry.items() if k.startswith("csr/")}, entry["epoch"])
        add_epoch_layout(trainer, "memorization: csr", _epoch_charts([s.name for s in splits], self.certify))

    def _screen_due(self, name: str) -> bool:
        if self.certify != "auto":
            return bool(self.certify)
        left = self._screen_skip.get(name, 0)
        if left > 0:
            self._screen_skip[name] = left - 1
            return False
        return True

    def _update_screen(self, name: str, counts: Tensor, screened: bool) -> None:
        """certify="auto": after a screened measurement that certified under 10% of the split, skip the screen for
        the next 4 (the totals are summed over ranks: every rank decides the same)."""
        if self.certify == "auto" and screened:
            total = counts.sum(0)
            self._screen_skip[name] = _AUTO_SKIP if int(total[3]) < _AUTO_MIN_SHARE * int(total[1]) else 0

    def _search(self, pl_module: LightningModule, split: _Split, dm: Any, screen: bool) -> tuple[Tensor, Tensor]:
        x = split.x
        r, alpha, beta = (self._to_input_units(v, x, dm) for v in (self.radius, self.step_size, self.noise_std))
        out = lass(
            pl_module, x, radius=r, step_size=alpha, noise_std=beta, max_iter=self.max_iter, seed=self.seed,
            sample_ids=split.ids, clip=self._clip_bounds(x, dm), batch_size=self.batch_size, certify=screen,
        )
        critical, iterations = out.critical.cpu(), out.iterations.cpu()
        group = split.noisy.long() if split.noisy is not None else torch.zeros(len(x), dtype=torch.long)
        # per group: critical, examined, sum of steps to a flip, certified, non-finite clean logits
        counts = torch.zeros(2, 5, dtype=torch.int64)
        counts[:, 0] = torch.bincount(group, weights=critical.double(), minlength=2).long()
        counts[:, 1] = torch.bincount(group, minlength=2)
        counts[:, 2] = torch.bincount(group, weights=(iterations * critical).double(), minlength=2).long()
        if out.certified is not None:
            counts[:, 3] = torch.bincount(group, weights=out.certified.cpu().double(), minlength=2).long()
        if out.nonfinite is not None:
            counts[:, 4] = torch.bincount(group, weights=out.nonfinite.cpu().double(), minlength=2).long()
        hist = torch.bincount(iterations[critical], minlength=self.max_iter + 1)  # [max_iter + 1], index 0 unused
        return counts, hist

    def _summarise(self, split: _Split, counts: Tensor, screened: bool) -> dict[str, float]:
        total = counts.sum(0)
        out = {f"csr/{split.name}": _ratio(total[0], total[1]), f"csr/{split.name}_iterations": _ratio(total[2], total[0])}
        if screened:
            out[f"csr/{split.name}_certified"] = _ratio(total[3], total[1])
        if split.noisy is not None:
            for g, part in ((0, "clean"), (1, "noisy")):
                if int(counts[g, 1]) > 0:
                    out[f"csr/{split.name}_{part}"] = _ratio(counts[g, 0], counts[g, 1])
        if int(total[4]) > 0:  # a diverged model: no ratio is a result (its samples are neither critical nor not)
            out = {key: float("nan") for key in out}
        return out

    def _warn_nonfinite(self, name: str, counts: Tensor, epoch: int) -> None:
        """One rank-zero warning when some examined samples had non-finite clean logits (counts summed over ranks)."""
        bad = int(counts.sum(0)[4])
        if bad > 0:
            rank_zero_warn(
                f"CriticalSampleRatio: epoch {epoch}, split {name!r}: {bad} of {int(counts.sum(0)[1])} examined "
                f"samples have non-finite (NaN or infinite) logits: the model diverged; csr/{name} is logged as NaN"
            )

    def _log_histogram(self, writer: Any, tag: str, hist: Tensor, step: int) -> None:
        steps = torch.arange(hist.numel(), dtype=torch.float64)
        counts = hist.double()
        nonzero = counts.nonzero().flatten()
        writer.add_histogram_raw(
            tag,
            min=float(nonzero.min()),
            max=float(nonzero.max()),
            num=int(hist.sum()),
            sum=float((steps * counts).sum()),
            sum_squares=float((steps**2 * counts).sum()),
            bucket_limits=(steps[1:] + 0.5).tolist(),  # bucket t holds the samples that flipped at step t
            bucket_counts=counts[1:].tolist(),
            global_step=step,
        )

    # ------------------------------------------------------------------------------------------------- the data
    def _load(self, trainer: Trainer, split: Literal["val", "train"], num: int | None) -> _Split:
        dm = trainer.datamodule
        xs, ys = getattr(dm, f"{split}_x", None), getattr(dm, f"{split}_y", None)
        if isinstance(xs, Tensor) and isinstance(ys, Tensor):
            n = xs.shape[0]
            ids = self._shard(trainer, n, num)
            noisy = None
            if split == "train":
                mask = getattr(dm, "noisy_mask", None)
                if not isinstance(mask, Tensor):
                    mask = getattr(dm, "train_noisy", None)
                noisy = mask[ids.to(mask.device)].cpu().bool() if isinstance(mask, Tensor) else None
            return _Split(split, xs[ids.to(xs.device)], ids, noisy)
        dataset = self._dataset(trainer, split)
        ids = self._shard(trainer, len(dataset), num)
        if len(ids) == 0:  # an empty shard (fewer examples than ranks): shape from one example
            probe = unpack_batch(default_collate([dataset[0]]), self.batch_adapter)
            return _Split(split, probe.x[:0], ids, probe.noisy[:0] if probe.noisy is not None else None)
        batch = unpack_batch(default_collate([dataset[i] for i in ids.tolist()]), self.batch_adapter)
        noisy = batch.noisy.bool().cpu() if (split == "train" and batch.noisy is not None) else None
        return _Split(split, batch.x, ids, noisy)

    def _shard(self, trainer: Trainer, n: int, num: int | None) -> Tensor:
        if num is not None and num > n and not self._warned_small:
            rank_zero_warn(f"CriticalSampleRatio: {num} samples asked for but the split has {n}; examining all {n}")
            self._warned_small = True
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(n, generator=generator)[: min(num, n) if num is not None else n].sort().values
        return rank_shard(chosen, trainer.global_rank, trainer.world_size)

    @staticmethod
    def _dataset(trainer: Trainer, split: Literal["val", "train"]) -> Any:
        loaders = trainer.val_dataloaders if split == "val" else trainer.train_dataloader
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        elif isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        dataset = getattr(loaders, "dataset", None)
        if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"CriticalSampleRatio cannot read the {split} examples: the datamodule has no `{split}_x`/`{split}_y` "
                f"tensors and the {split} dataloader ({type(loaders).__name__}) has no map-style `dataset` "
                "(with __getitem__ and __len__)"
            )
        return dataset

    # ------------------------------------------------------------------------------------------------ the units
    def _to_input_units(self, value: float, x: Tensor, dm: Any) -> float | Tensor:
        if self.unit == "input":
            return value
        std = self.input_std if self.input_std is not None else torch.as_tensor(dm.std, dtype=torch.float32)
        scale = self.pixel_scale or float(getattr(dm, "pixel_scale", 1 / 255))
        return pixels_to_input_units(value, std.cpu(), scale, ndim=x.dim() - 1)

    def _clip_bounds(self, x: Tensor, dm: Any) -> tuple[Tensor, Tensor] | None:
        if self.clip is None:
            return None
        if self.clip == "auto":
            bounds = getattr(dm, "input_bounds", None) if _has(dm, "input_bounds") else None
            if bounds is None:
                return None
            low, high = bounds
        else:
            low, high = self.clip
        shape = (-1, *([1] * (x.dim() - 2)))
        return tuple(torch.as_tensor(b, dtype=torch.float32).cpu().reshape(shape) for b in (low, high))  # [C, 1, ..]


#: certify="auto": a screen certifying less than this share of a split is skipped for the next _AUTO_SKIP measurements.
_AUTO_MIN_SHARE = 0.1
_AUTO_SKIP = 4


def _epoch_charts(splits: Sequence[str], certify: bool) -> dict[str, list[str]]:
    """The custom-scalars charts of the ``by_epoch/csr/*`` tags (see :func:`add_epoch_layout`)."""
    ratios = [f"csr/{name}{part}" for name in splits for part in ("", "_clean", "_noisy")]
    charts = {"critical sample ratio": ratios, "LASS steps to a flip": [f"csr/{name}_iterations" for name in splits]}
    if certify:
        charts["certified non-critical"] = [f"csr/{name}_certified" for name in splits]
    charts["seconds per measurement"] = ["csr/seconds"]
    return charts


def _max_over_ranks(trainer: Trainer, value: float) -> float:
    """The largest ``value`` over the ranks (a collective: called on every rank)."""
    if trainer.world_size == 1:
        return value
    gathered = trainer.strategy.all_gather(torch.tensor([value], dtype=torch.float64, device=trainer.strategy.root_device))
    return float(gathered.max())


def _ratio(num: Tensor, den: Tensor) -> float:
    return float(num) / float(den) if int(den) > 0 else float("nan")


def _has(obj: Any, name: str) -> bool:
    """``hasattr`` that also treats a property raising (e.g. "not set up yet") as present."""
    if obj is None:
        return False
    return hasattr(type(obj), name) or name in getattr(obj, "__dict__", {})
