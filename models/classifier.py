"""The paper's networks as LightningModules: SGD as in the paper, every regulariser a constructor argument.

:class:`MemorizationClassifier` holds what all models share: the optimisation (SGD with optional momentum, weight
decay and step halving of the learning rate), adversarial training on LASS samples, and the metrics that make
memorisation visible (training accuracy on the clean and on the noisy examples separately). :class:`MLPClassifier`
and :class:`CNNClassifier` build the paper's two networks (:mod:`models.networks`) from plain arguments, so that
``save_hyperparameters`` stores everything and ``load_from_checkpoint`` rebuilds the model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import Metric

from datamodules.checks import check_seed
from datamodules.checks import is_int as _is_int  # python or numpy integers, never bools
from datamodules.checks import is_real as _is_real
from memo_callbacks.functional.lass import LASSConfig
from memo_callbacks.utilities import unpack_batch
from models.networks import MLP, Init, PaperCNN


class WeightedMean(Metric):
    """``sum(value * weight) / sum(weight)``, kept as two sums so that a DDP sync is exact.

    Accuracy on a subset of a batch is ``update(correct, weight=mask)``: no boolean indexing, hence no host sync
    per step. :meth:`compute` is NaN while the total weight is 0 (e.g. no noisy example seen).

    Example:
        >>> m = WeightedMean()
        >>> m.update(torch.tensor([1.0, 0.0, 1.0]), weight=torch.tensor([1.0, 1.0, 0.0]))
        >>> m.compute()
        tensor(0.5000)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    total: Tensor
    weight: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: Tensor | float = 1.0) -> None:
        value = value.detach().to(self.total.dtype)
        weight = torch.as_tensor(weight, dtype=self.total.dtype, device=value.device).broadcast_to(value.shape)
        self.total += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> Tensor:
        return self.total / self.weight


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")




def _check_regularisers(dropout: float, input_dropout: float, input_noise_std: float, hidden_noise_std: float) -> None:
    for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
        _check(_is_real(p) and 0 <= p < 1, name, p, "in [0, 1)")
    for name, std in (("input_noise_std", input_noise_std), ("hidden_noise_std", hidden_noise_std)):
        _check(_is_real(std) and std >= 0, name, std, "a finite number >= 0")


def _as_lass_config(lass: Any) -> LASSConfig:
    """``lass`` as a :class:`LASSConfig`: None is the paper's; a mapping is its fields (as checkpoints store them)."""
    if lass is None:
        return LASSConfig()
    if isinstance(lass, LASSConfig):
        return lass
    if isinstance(lass, Mapping):
        return LASSConfig(**lass)
    raise TypeError(f"`lass` must be a LASSConfig, a dict of its fields or None, got {type(lass).__name__}")


def step_seed(seed: int, step: int) -> int:
    """The LASS seed of one training step: a 63-bit hash of ``(seed, step)``, so each step draws fresh noise.

    Example:
        >>> step_seed(0, 1) == step_seed(0, 1) != step_seed(0, 2)
        True
    """
    digest = hashlib.blake2b(f"memo-callbacks/adversarial/{check_seed(seed)}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class MemorizationClassifier(LightningModule):
    """A classifier trained with SGD on noisy data, logging how much of the noise it memorises.

    ``forward`` returns logits. Batches may be :class:`datamodules.NoisyBatch` tuples ``(x, y, index, noisy)``,
    ``(x, y)``, ``(x, y, index)`` or dicts (see :func:`memo_callbacks.utilities.unpack_batch`).

    **Metrics** (torchmetrics, kept as sums and counts, so exact under DDP; one value per epoch, no host sync per
    step): ``train/loss`` (the loss optimised), ``train/acc``, ``train/acc_clean`` and ``train/acc_noisy`` (accuracy
    on the clean and on the noisy examples of the training set, against the labels trained on; each is logged only
    in epochs that saw such examples), ``val/loss``, ``val/acc`` (and ``test/...``). When the datamodule exposes a
    ``corruption`` with relabelled examples (:class:`datamodules.NoisyDataModule` with ``noise="random_labels"``),
    ``train/acc_noisy_original`` is the accuracy of the noisy examples against their original labels. With
    adversarial training, also ``train/loss_clean``, ``train/loss_adversarial``, ``train/critical`` (epoch mean of
    the share of samples for which LASS found a flip) and, every step, ``train/adv_flipped`` (that share in the
    step's global batch: whether adversarial training sees critical samples at all at its radius). Training accuracies are those of the training-mode forward pass (dropout and
    noise on), as Keras reports them; padded duplicates of a distributed sampler count twice in them.

    **Adversarial training** (``adversarial_weight = w > 0``): each step runs LASS
    (:func:`memo_callbacks.functional.lass.lass`) on the current batch, from the predicted class at the clean input,
    in evaluation mode; the point it returns for each sample (the first flip found, else its last iterate) is
    trained on with the sample's *true* label: ``loss = (1 - w) * CE(f(x), y) + w * CE(f(x_adv), y)``, both
    forward passes in training mode. The search is set by one :class:`~memo_callbacks.functional.LASSConfig`
    (``lass``, the paper's "default LASS parameters" by default); its noise depends only on ``(lass.seed,
    global_step)`` and the examples' dataset indices (their position in the batch when the batch carries none).
    LASS parameters are in 0-255 pixel units by default (the paper's r = 0.3, alpha = 0.25, beta = 0.2), converted
    per channel with ``pixel_scale / std`` of the datamodule (``dm.std``, ``dm.pixel_scale``) or of ``input_std`` /
    ``pixel_scale``; with ``LASSConfig(unit="input")`` they are used as given. By default (``clip=None``) the
    search explores the whole L-inf box, as the paper's critical samples do; ``clip="auto"`` keeps adversarial
    inputs inside the datamodule's ``input_bounds``, an explicit ``(low, high)`` pair inside those bounds.

    **Input-gradient hook**: ``training_step`` feeds the batch's ``x`` to the network as given (no copy, no
    ``detach``), so a callback whose ``on_train_batch_start`` calls ``batch.x.requires_grad_(True)`` (for a dict,
    the tensor under its input key) finds ``d loss / d x`` in ``x.grad`` after the backward pass. With adversarial
    training that gradient is the clean term's only: the adversarial inputs are built from ``x.detach()``.

    Args:
        network: the module mapping inputs to logits (rebuilt by the subclasses from their arguments; when you pass
            your own, pass it again to ``load_from_checkpoint(path, network=...)``).
        lr: SGD learning rate.
        momentum: SGD momentum (0 is plain SGD).
        weight_decay: SGD ``weight_decay`` (an L2 penalty ``weight_decay / 2 * ||theta||^2`` on every parameter).
        lr_halving_epochs: halve the learning rate every this many epochs (``StepLR(k, 0.5)``); None keeps it fixed.
        adversarial_weight: ``w`` in [0, 1); 0 turns adversarial training off.
        lass: the LASS search of adversarial training (a :class:`~memo_callbacks.functional.LASSConfig`, or the
            dict of its fields, as checkpoints store it); None: ``LASSConfig()``, the paper's settings.
        input_std: per-channel std the inputs were divided by (overrides the datamodule's ``std``).
        pixel_scale: one pixel unit in raw input units (overrides the datamodule's; 1/255 with ``input_std``).

    Example:
        >>> model = MemorizationClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), lr=0.1)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_halving_epochs: int | None = None,
        adversarial_weight: float = 0.0,
        lass: LASSConfig | Mapping[str, Any] | None = None,
        input_std: float | Sequence[float] | None = None,
        pixel_scale: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"`network` must be an nn.Module, got {type(network).__name__}")
        _check(_is_real(lr) and lr > 0, "lr", lr, "> 0")
        _check(_is_real(momentum) and 0 <= momentum < 1, "momentum", momentum, "in [0, 1)")
        _check(_is_real(weight_decay) and weight_decay >= 0, "weight_decay", weight_decay, ">= 0")
        _check(
            lr_halving_epochs is None or (_is_int(lr_halving_epochs) and lr_halving_epochs >= 1),
            "lr_halving_epochs", lr_halving_epochs, "a positive integer or None",
        )
        _check(
            _is_real(adversarial_weight) and 0 <= adversarial_weight < 1,
            "adversarial_weight", adversarial_weight, "in [0, 1)",
        )
        lass = _as_lass_config(lass)
        if input_std is not None:
            stds = [input_std] if _is_real(input_std) else list(input_std)
            _check(
                len(stds) > 0 and all(_is_real(s) and s > 0 for s in stds),
                "input_std", input_std, "a positive number or a sequence of them (one per channel)",
            )
        _check(pixel_scale is None or (_is_real(pixel_scale) and pixel_scale > 0), "pixel_scale", pixel_scale, "> 0")
        self.save_hyperparameters(ignore=["network"])
        self.hparams["lass"] = asdict(lass)  # plain values: readable in hparams.yaml, rebuilt by load_from_checkpoint
        #: The LASS settings of adversarial training.
        self.lass = lass
        self.network = network

        # Per-channel size of one pixel unit in model-input units ([C]), and the valid input range ([C], [C]);
        # filled from the arguments here or from the datamodule in `setup`. Not saved: they follow from the data.
        self.register_buffer("_pixel_unit", None, persistent=False)
        self.register_buffer("_clip_low", None, persistent=False)
        self.register_buffer("_clip_high", None, persistent=False)
        # Labels before corruption of the training set ([N]), to score noisy examples against them.
        self.register_buffer("_original_targets", None, persistent=False)
        if input_std is not None:
            scale = 1.0 / 255.0 if pixel_scale is None else pixel_scale
            self._pixel_unit = scale / torch.as_tensor(input_std, dtype=torch.float32).reshape(-1)

        self.train_loss, self.train_acc = WeightedMean(), WeightedMean()
        self.train_acc_clean, self.train_acc_noisy, self.train_acc_noisy_original = (
            WeightedMean(), WeightedMean(), WeightedMean(),
        )
        self.train_loss_clean, self.train_loss_adversarial, self.train_critical = (
            WeightedMean(), WeightedMean(), WeightedMean(),
        )
        self.val_loss, self.val_acc = WeightedMean(), WeightedMean()
        self.test_loss, self.test_acc = WeightedMean(), WeightedMean()

    # ------------------------------------------------------------------------------------------------------ model
    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def as_bound_module(self) -> nn.Module:
        """The network ``forward`` runs, for bound propagation (:func:`memo_callbacks.functional.certify.certify`).

        Its noise and crop layers expose their own evaluation-mode form (``as_bound_module``), dropout is the
        identity in evaluation mode. A subclass that overrides ``forward`` must override this too.
        """
        if type(self).forward is not MemorizationClassifier.forward:
            raise NotImplementedError(f"{type(self).__name__} overrides `forward`: it must override `as_bound_module` too")
        return self.network

    # ------------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        corruption = getattr(dm, "corruption", None)
        relabelled = corruption is not None and bool((corruption.targets != corruption.clean_targets).any())
        self._original_targets = corruption.clean_targets.to(self.device) if relabelled else None
        if self.hparams.adversarial_weight > 0:
            self._resolve_adversarial_units(dm)

    def _resolve_adversarial_units(self, dm: Any) -> None:
        """Per-channel pixel unit and clipping bounds from the datamodule, unless given as arguments."""
        hp = self.hparams
        if self.lass.unit == "pixel" and hp.input_std is None:
            if dm is None or not hasattr(dm, "std"):
                raise ValueError(
                    "adversarial training with `LASSConfig(unit='pixel')` needs the inputs' per-channel std to convert "
                    "LASS's radius, step and noise: train with a datamodule exposing `std` and `pixel_scale` (as "
                    "datamodules.NoisyDataModule does), pass `input_std=`, or give them in model-input units with "
                    "`lass=LASSConfig(unit='input', ...)`"
                )
            scale = dm.pixel_scale if hp.pixel_scale is None else hp.pixel_scale
            self._pixel_unit = (scale / torch.as_tensor(dm.std, dtype=torch.float32).reshape(-1)).to(self.device)
        if self.lass.clip is not None:
            if isinstance(self.lass.clip, str):
                if dm is None or not hasattr(dm, "input_bounds"):
                    raise ValueError(
                        "adversarial training with `LASSConfig(clip='auto')` needs the valid input range: train with a "
                        "datamodule exposing `input_bounds` (as datamodules.NoisyDataModule does), or pass explicit "
                        "bounds `clip=(low, high)`"
                    )
                low, high = dm.input_bounds
            else:
                low, high = self.lass.clip
            self._clip_low = torch.as_tensor(low, dtype=torch.float32).reshape(-1).to(self.device)
            self._clip_high = torch.as_tensor(high, dtype=torch.float32).reshape(-1).to(self.device)

    # --------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, index, noisy = unpack_batch(batch)
        logits = self(x)  # x exactly as given: see "Input-gradient hook" in the class docstring
        loss = clean_loss = F.cross_entropy(logits, y)
        n = y.shape[0]
        w = self.hparams.adversarial_weight
        if w > 0:
            x_adv, critical = self.adversarial_examples(x.detach(), index)
            adversarial_loss = F.cross_entropy(self(x_adv), y)
            loss = (1 - w) * clean_loss + w * adversarial_loss
            self.train_loss_clean.update(clean_loss, n)
            self.train_loss_adversarial.update(adversarial_loss, n)
            self.train_critical.update(critical)
            self.log("train/loss_clean", self.train_loss_clean, on_step=False, on_epoch=True)
            self.log("train/loss_adversarial", self.train_loss_adversarial, on_step=False, on_epoch=True)
            self.log("train/critical", self.train_critical, on_step=False, on_epoch=True)
            self.log("train/adv_flipped", self._flipped_share(critical), on_step=True, on_epoch=False)

        correct = logits.detach().argmax(dim=1) == y  # [B] bool
        self.train_loss.update(loss, n)
        self.train_acc.update(correct)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        if noisy is not None:
            noisy = noisy.to(torch.bool)
            self.train_acc_clean.update(correct, ~noisy)
            self.train_acc_noisy.update(correct, noisy)
            if self._original_targets is not None and index is not None:
                original = self._original_targets[index]  # [B] labels before corruption
                self.train_acc_noisy_original.update(logits.detach().argmax(dim=1) == original, noisy)
        return loss

    def _flipped_share(self, critical: Tensor) -> Tensor:
        """Share of this step's (global) batch whose LASS search flipped the prediction within the radius: a count
        and a size summed over ranks, divided once (every rank gets the same value)."""
        stats = torch.stack([critical.sum(), torch.tensor(critical.numel(), device=critical.device)]).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        return stats[0] / stats[1].clamp_min(1)

    def on_train_epoch_end(self) -> None:
        # Logged only when some rank saw such examples: a NaN (no noisy example at all) would spoil the curve.
        subsets = {
            "train/acc_clean": self.train_acc_clean,
            "train/acc_noisy": self.train_acc_noisy,
            "train/acc_noisy_original": self.train_acc_noisy_original,
        }
        subsets = {name: m for name, m in subsets.items() if m.update_called}  # batches without `noisy`: none
        if not subsets:
            return
        values = torch.stack([m.compute() for m in subsets.values()])  # synced across ranks, cached for `log`
        for (name, metric), present in zip(subsets.items(), (~values.isnan()).tolist()):
            if present:
                self.log(name, metric, on_step=False, on_epoch=True)
            else:
                metric.reset()

    def adversarial_examples(self, x: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """LASS on ``x`` with this model's settings: the adversarial inputs ``[B, ...]`` and the critical flags ``[B]``.

        The search's noise is seeded by ``(lass.seed, global_step)`` and ``index`` (the examples' dataset
        indices; their positions in the batch when None).
        """
        from memo_callbacks.functional.lass import lass  # lazy: only adversarial training needs the LASS engine

        cfg = self.lass
        if cfg.unit == "pixel":
            if self._pixel_unit is None:
                self._resolve_adversarial_units(None)  # raises: no datamodule to read the std from
            unit = self._pixel_unit.to(x.device).reshape(-1, *[1] * (x.dim() - 2))  # [C] -> [C, 1, ..., 1]
            radius, step, noise = cfg.radius * unit, cfg.step_size * unit, cfg.noise_std * unit
        else:
            radius, step, noise = cfg.radius, cfg.step_size, cfg.noise_std
        clip = None
        if cfg.clip is not None:
            if self._clip_low is None:
                self._resolve_adversarial_units(None)  # raises: no datamodule to read the bounds from
            shape = (-1, *[1] * (x.dim() - 2))
            clip = (self._clip_low.to(x.device).reshape(shape), self._clip_high.to(x.device).reshape(shape))
        ids = index if index is not None else torch.arange(x.shape[0], device=x.device)
        result = lass(
            self,
            x,
            radius=radius,
            step_size=step,
            noise_std=noise,
            max_iter=cfg.max_iter,
            seed=step_seed(cfg.seed, self.global_step),
            sample_ids=ids,
            clip=clip,
            return_adversarial=True,
        )
        return result.adversarial.detach(), result.critical

    # ------------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch: Any, loss_metric: WeightedMean, acc_metric: WeightedMean, stage: str) -> Tensor:
        x, y, _, _ = unpack_batch(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        loss_metric.update(loss, y.shape[0])
        acc_metric.update(logits.argmax(dim=1) == y)
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.val_loss, self.val_acc, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.test_loss, self.test_acc, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch if isinstance(batch, Tensor) else unpack_batch(batch).x
        return self(x)

    # -------------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.lr_halving_epochs is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_halving_epochs, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _optimiser_kwargs(local: dict[str, Any]) -> dict[str, Any]:
    names = ("lr", "momentum", "weight_decay", "lr_halving_epochs", "adversarial_weight", "lass", "input_std", "pixel_scale")
    return {k: local[k] for k in names}


class MLPClassifier(MemorizationClassifier):
    """The paper's MNIST MLP (any number and width of ReLU layers) as a :class:`MemorizationClassifier`.

    Paper defaults: 2 x 4096 units, plain SGD with lr 0.01. Figure 3 uses ``hidden=(16, 16)``,
    ``init="glorot_uniform"`` and lr 0.05. Arguments not listed here are :class:`MemorizationClassifier` 's.

    Args:
        in_shape: ``(C, H, W)`` of the inputs, or the number of input values.
        num_classes: number of outputs.
        hidden: width of each hidden layer.
        init: ``"default"`` (PyTorch's) or ``"glorot_uniform"``.
        dropout: dropout after every hidden layer (the CNN's dense ones).
        input_dropout: dropout on the input pixels.
        input_noise_std: std of Gaussian noise added to the inputs (model-input units). Named ``*_std`` (the
            networks' ``input_noise``) so as not to clash with the datamodules' ``input_noise`` (the kind of
            randX noise) when Lightning logs both sets of hyperparameters.
        hidden_noise_std: std of Gaussian noise added after every hidden layer.

    Example:
        >>> model = MLPClassifier((1, 8, 8), 10, hidden=(32, 32), dropout=0.5, adversarial_weight=0.5)
        >>> model(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (4096, 4096),
        init: Init = "default",
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        input_noise_std: float = 0.0,
        hidden_noise_std: float = 0.0,
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_halving_epochs: int | None = None,
        adversarial_weight: float = 0.0,
        lass: LASSConfig | Mapping[str, Any] | None = None,
        input_std: float | Sequence[float] | None = None,
        pixel_scale: float | None = None,
    ) -> None:
        _check_regularisers(dropout, input_dropout, input_noise_std, hidden_noise_std)
        _check(
            _is_int(in_shape) or (isinstance(in_shape, Sequence) and len(in_shape) > 0 and all(_is_int(v) for v in in_shape)),
            "in_shape", in_shape, "an int or a sequence of ints such as (C, H, W)",
        )
        in_features = in_shape if _is_int(in_shape) else math.prod(in_shape)
        network = MLP(
            in_features, num_classes, tuple(hidden), dropout, input_dropout, input_noise_std, hidden_noise_std, init
        )
        super().__init__(network, **_optimiser_kwargs(locals()))


class CNNClassifier(MemorizationClassifier):
    """The paper's CIFAR-10 CNN (with a width multiplier) as a :class:`MemorizationClassifier`.

    Paper defaults: SGD with lr 0.01 and momentum 0.9, the learning rate halved every 15 epochs. Arguments not
    listed here are :class:`MemorizationClassifier` 's.

    Args:
        in_shape: ``(C, H, W)`` of the inputs.
        num_classes: number of outputs.
        width: multiplies every channel and unit count (1.0 is the paper's network).
        crop: pixels removed from each side of the image (the paper's Crop(2, 2)).
        dropout: dropout after every hidden layer (the CNN's dense ones).
        input_dropout: dropout on the input pixels.
        input_noise_std: std of Gaussian noise added to the inputs (model-input units). Named ``*_std`` (the
            networks' ``input_noise``) so as not to clash with the datamodules' ``input_noise`` (the kind of
            randX noise) when Lightning logs both sets of hyperparameters.
        hidden_noise_std: std of Gaussian noise added after every hidden layer.

    Example:
        >>> model = CNNClassifier((3, 32, 32), 10, width=0.05, dropout=0.5, weight_decay=1e-3)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        width: float = 1.0,
        crop: int = 2,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        input_noise_std: float = 0.0,
        hidden_noise_std: float = 0.0,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_halving_epochs: int | None = 15,
        adversarial_weight: float = 0.0,
        lass: LASSConfig | Mapping[str, Any] | None = None,
        input_std: float | Sequence[float] | None = None,
        pixel_scale: float | None = None,
    ) -> None:
        _check(
            isinstance(in_shape, Sequence) and len(in_shape) == 3 and all(_is_int(v) and v >= 1 for v in in_shape),
            "in_shape", in_shape, "(C, H, W)",
        )
        _check_regularisers(dropout, input_dropout, input_noise_std, hidden_noise_std)
        network = PaperCNN(
            tuple(in_shape), num_classes, width, dropout, input_dropout, input_noise_std, hidden_noise_std, crop
        )
        super().__init__(network, **_optimiser_kwargs(locals()))
