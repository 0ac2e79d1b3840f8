"""Figure 2: first-layer filters of the CIFAR-10 CNN trained on real data and on random labels (randY).

Claim (Arpit et al. 2017, Sec. 3.1): the filters learned on real data are structured (smooth edge and colour
detectors), while those learned on random labels look noisier, closer to their random initialisation.

    python experiments/fig2.py --gpus 1                          # CIFAR-10 CNN (200 filters), as in the paper
    python experiments/fig2.py --quick                           # CIFAR-10 JPEGs, a small CNN, minutes on a CPU
    tensorboard --logdir runs                                    # IMAGES tab: filters/conv1 at every epoch

Both variants start from the same initial weights (seeded), so the figure shows what training on each made of the
same filters. Besides the images, each filter gets a number: its *smoothness*, the correlation between spatially
adjacent weights (about 0 for the i.i.d. initialisation, near 1 for a smooth edge or colour blob), and the run gets
the relative distance of its filters from their initialisation. Writes ``runs/fig2/<variant>/version_N/``
(TensorBoard logs with the filter images, ``config.json``), ``runs/fig2/results.json`` and ``runs/fig2/fig2.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from common import (
    SHARED_CIFAR_ARCHIVE,
    Dataset,
    EpochMetrics,
    Progress,
    Variant,
    make_datamodule,
    make_trainer,
    parse_config,
    quiet_lightning,
    save_config,
    write_summary,
)
from torch import Tensor, nn

from models import CNNClassifier


@dataclass
class Fig2Config:
    dataset: Dataset = "cifar10"
    data_dir: str = "./data"
    variants: tuple[Variant, ...] = ("real", "randY")
    width: float = 1.0  # CNN width multiplier (1.0 = the paper's 200 filters)
    crop: int = 2  # the paper's Crop(2, 2)
    epochs: int = 60  # not stated in the paper
    batch_size: int = 128  # not stated in the paper
    lr: float = 0.01
    momentum: float = 0.9
    lr_halving_epochs: int = 15  # 0 = constant learning rate
    subset: int = 0  # training examples (0 = all)
    val_every: int = 1  # validate every this many epochs; 0 = after the last epoch only
    max_filters: int = 64  # filters shown per variant (0 = all)
    seed: int = 0


def _jpeg_available(data_dir: str = "./data") -> bool:
    return SHARED_CIFAR_ARCHIVE.exists() or (Path(data_dir) / "cifar10-jpg" / "train").is_dir()


# The CIFAR-10 JPEGs when they are here (see ../shared/data/README.md), else scikit-learn's 8x8 grey digits (no
# crop: 8x8 is small enough). A larger learning rate than the paper's, so that 10 short epochs shape the filters;
# validation only after the last epoch (it is context here, and 10,000 test images cost more than the training).
QUICK = (
    dict(dataset="cifar10-jpg", width=0.1, subset=5000, epochs=10, batch_size=64, lr=0.05, lr_halving_epochs=0,
         val_every=0, max_filters=0)
    if _jpeg_available()
    else dict(dataset="digits", width=0.1, crop=0, epochs=30, batch_size=32, lr=0.05, lr_halving_epochs=0,
              max_filters=0)
)


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The network's first convolution."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")


def smoothness(weight: Tensor) -> Tensor:
    """``[F]`` for each filter of a ``[F, C, kH, kW]`` convolution, the Pearson correlation over all pairs of
    horizontally or vertically adjacent weights (in every channel): about 0 for i.i.d. weights, near 1 for a smooth
    filter (an edge or a colour blob).

    Example:
        >>> smoothness(torch.arange(25.0).reshape(1, 1, 5, 5))  # a ramp
        tensor([0.9538])
    """
    w = weight.detach().double()
    left, right = w[..., :, :-1].flatten(1), w[..., :, 1:].flatten(1)  # [F, C * kH * (kW - 1)]
    top, bottom = w[..., :-1, :].flatten(1), w[..., 1:, :].flatten(1)  # [F, C * (kH - 1) * kW]
    a, b = torch.cat([left, top], dim=1), torch.cat([right, bottom], dim=1)  # [F, P]: the P pairs (a, b)
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return r.to(weight.dtype)


def filter_grid(weight: Tensor, max_filters: int = 0) -> Tensor:
    """``[C, H, W]`` in [0, 1]: the filters of a ``[F, C, kH, kW]`` convolution side by side, each scaled
    symmetrically so that a zero weight is mid-grey (C is 3 for RGB filters, else 1)."""
    from torchvision.utils import make_grid

    w = weight.detach().float().cpu()
    if max_filters:
        w = w[:max_filters]
    if w.shape[1] not in (1, 3):
        w = w[:, :1]  # neither grey nor RGB: show the first input channel
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    w = 0.5 + 0.5 * w / scale
    grid = make_grid(w, nrow=math.ceil(math.sqrt(w.shape[0])), padding=1, pad_value=1.0)  # [3, H, W]
    return grid[:1] if weight.shape[1] != 3 else grid


class FilterImages(pl.Callback):
    """Logs the first convolution's filters to TensorBoard (``filters/conv1``) before training and after every
    epoch, on rank 0."""

    def __init__(self, max_filters: int = 0) -> None:
        self.max_filters = max_filters

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if trainer.global_rank != 0 or trainer.logger is None:
            return
        trainer.logger.experiment.add_image(
            "filters/conv1", filter_grid(first_conv(pl_module).weight, self.max_filters), global_step=step
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, trainer.current_epoch + 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, run = parse_config(Fig2Config, QUICK, __doc__.split("\n")[0], argv, figure="fig2")
    progress = Progress("[fig2]", len(cfg.variants), "run")
    filters: dict[str, Tensor] = {}
    results: dict[str, Any] = {}
    for variant in cfg.variants:
        dm = make_datamodule(cfg.dataset, cfg.data_dir, variant, batch_size=cfg.batch_size, seed=cfg.seed,
                             subset=cfg.subset or None, subset_mode="random")
        dm.prepare_data()
        dm.setup("fit")
        torch.manual_seed(cfg.seed)  # the same initial filters for every variant
        model = CNNClassifier(dm.input_shape, dm.num_classes, width=cfg.width, crop=cfg.crop, lr=cfg.lr,
                              momentum=cfg.momentum, lr_halving_epochs=cfg.lr_halving_epochs or None)
        initial = first_conv(model).weight.detach().clone()
        filters.setdefault("initialisation", initial)
        metrics = EpochMetrics()
        trainer = make_trainer(run, "fig2", variant, cfg.epochs, [metrics, FilterImages(cfg.max_filters)],
                               check_val_every_n_epoch=cfg.val_every or cfg.epochs)
        save_config(trainer, cfg, run, variant=variant)
        with quiet_lightning():
            trainer.fit(model, dm)
        final = first_conv(model).weight.detach().cpu()
        filters[variant] = final
        last = metrics.rows[-1]
        results[variant] = dict(
            smoothness=smoothness(final).mean().item(),
            distance_from_init=((final - initial.cpu()).norm() / initial.norm()).item(),
            train_acc=last.get("train/acc", float("nan")),
            val_acc=last.get("val/acc", float("nan")),
        )
        progress.update(len(results), f"{variant} done")
    results["initialisation"] = dict(smoothness=smoothness(filters["initialisation"]).mean().item(),
                                     distance_from_init=0.0, train_acc=None, val_acc=None)
    if trainer.global_rank == 0:
        report(cfg, run, filters, results)
    return results


def report(cfg: Fig2Config, run: Any, filters: dict[str, Tensor], results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["initialisation", *cfg.variants]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 4.0))
    for ax, name in zip(axes, names):
        grid = filter_grid(filters[name], cfg.max_filters)  # [C, H, W]
        ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if grid.shape[0] == 1 else None,
                  interpolation="nearest", vmin=0, vmax=1)
        r = results[name]
        ax.set_title(f"{name}\nsmoothness {r['smoothness']:.2f}, moved {r['distance_from_init']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Fig. 2: first-layer filters, {cfg.dataset} CNN (width {cfg.width}), {cfg.epochs} epochs",
                 fontsize=10)
    fig.tight_layout()
    out = Path(run.out) / "fig2" / "fig2.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    write_summary(run, "fig2", {f"fig2/{name}/smoothness": [(0, results[name]["smoothness"])] for name in names},
                  results)
    def acc(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"[fig2] {'filters':>14} {'smoothness':>10} {'moved':>6} {'train acc':>9} {'val acc':>8}")
    for name in names:
        r = results[name]
        print(f"[fig2] {name:>14} {r['smoothness']:>10.3f} {r['distance_from_init']:>6.2f} {acc(r['train_acc']):>9} "
              f"{acc(r['val_acc']):>8}")
    print(f"[fig2] figure: {out}")


if __name__ == "__main__":
    main()
