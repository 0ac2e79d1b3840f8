"""Shared by Figures 10 and 11: one network per (dataset, regulariser, strength), on real data and on random labels.

Claim (Arpit et al. 2017, Sec. 5): explicit regularisers can hinder the memorisation of noise (lower final training
accuracy on 100% random labels) without hurting generalisation on real data (best validation accuracy); dropout
does this best, especially combined with adversarial training on LASS samples.

Figure 10 plots, per regulariser, the best validation accuracy on real data (y) against the final training accuracy
on random labels (x), one point per strength: a flat curve means the regulariser hinders memorisation for free.
Figure 11 plots training loss curves for selected strengths, random labels vs real data.

Adversarial training only regularises if LASS finds critical samples at its radius: the classifier logs the share of
each batch that flipped (``train/adv_flipped`` every step, ``train/critical`` per epoch) and the sweep prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common import Dataset, Model, Progress, build_classifier, fit, make_datamodule

from memo_callbacks import LASSConfig

#: How a (regulariser, strength) pair becomes classifier arguments.
REGULARISERS = {
    "dropout": lambda s, cfg: dict(dropout=s),
    "input_dropout": lambda s, cfg: dict(input_dropout=s),
    "input_noise": lambda s, cfg: dict(input_noise_std=s),  # std in model-input units (inputs are normalised)
    "hidden_noise": lambda s, cfg: dict(hidden_noise_std=s),
    "weight_decay": lambda s, cfg: dict(weight_decay=s),
    # The paper combines adversarial training (weight 0.2-0.7) with dropout (0.03-0.5).
    "adversarial": lambda s, cfg: dict(adversarial_weight=s, dropout=cfg.adversarial_dropout if s else 0.0,
                                       lass=LASSConfig(radius=cfg.adversarial_radius,
                                                       step_size=cfg.adversarial_radius * 0.25 / 0.3,
                                                       noise_std=cfg.adversarial_radius * 0.2 / 0.3,
                                                       max_iter=cfg.adversarial_max_iter, seed=cfg.seed)),
}


Regulariser = Literal["dropout", "input_dropout", "input_noise", "hidden_noise", "weight_decay", "adversarial"]


@dataclass
class RegulariserConfig:
    dataset: Dataset = "cifar10"
    data_dir: str = "./data"
    model: Model = "cnn"
    width: float = 1.0
    hidden: tuple[int, ...] = (4096, 4096)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    lr_halving_epochs: int = 15
    subset: int = 0
    regularisers: tuple[Regulariser, ...] = ("dropout", "input_dropout", "input_noise", "hidden_noise", "weight_decay",
                                     "adversarial")
    # Strengths per regulariser, within the paper's ranges (its grids are not stated). 0 is the shared baseline.
    dropout: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    input_dropout: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    input_noise: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)
    hidden_noise: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    weight_decay: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    adversarial: tuple[float, ...] = (0.2, 0.45, 0.7)  # the adversarial loss weight w
    adversarial_dropout: float = 0.5
    adversarial_max_iter: int = 100  # LASS steps per training batch (the paper's default search)
    # LASS radius r in 0-255 pixel units (the paper's default 0.3); step and noise keep the paper's ratios to r.
    adversarial_radius: float = 0.3
    seed: int = 0


QUICK = dict(dataset="digits", model="mlp", hidden=(512, 512), epochs=40, batch_size=64, lr=0.05, lr_halving_epochs=0,
             dropout=(0.3, 0.6, 0.9), input_dropout=(0.3, 0.6, 0.9), input_noise=(0.5, 1.0, 2.0),
             hidden_noise=(0.1, 0.2, 0.3), weight_decay=(1e-3, 1e-2, 3e-2), adversarial=(0.2, 0.5, 0.7),
             adversarial_max_iter=10, adversarial_radius=3.0)
# On 8x8 digits LASS at the paper's r = 0.3 flips 0-5% of a batch (measured: ``train/critical`` 0.01 -> 0.00 on
# real data, 0.02 -> 0.05 on random labels over 40 epochs): adversarial training would be inert, so the quick run
# uses r = 3, the radius of the digits CSR runs (Fig. 9 --quick).


def sweep(figure: str, cfg: RegulariserConfig, args, strengths: dict[str, tuple[float, ...]]) -> dict:
    """Train every (regulariser, strength) on real data and on 100% random labels; the unregularised baseline
    (strength 0) once. Returns ``{(regulariser, strength): {"real": EpochMetrics, "randY": EpochMetrics}}``."""
    runs: dict = {}
    baseline = None
    progress, trained = Progress(f"[{figure}]", 2 * (1 + sum(len(v) for v in strengths.values())), "run"), 0
    for reg, values in strengths.items():
        if reg not in REGULARISERS:
            raise SystemExit(f"unknown regulariser {reg!r}; expected one of {sorted(REGULARISERS)}")
        for strength in (0.0, *values):
            if strength == 0.0 and baseline is not None:
                runs[(reg, 0.0)] = baseline
                continue
            pair = {}
            for variant in ("real", "randY"):
                dm = make_datamodule(cfg.dataset, cfg.data_dir, variant, batch_size=cfg.batch_size, seed=cfg.seed,
                                     subset=cfg.subset or None, subset_mode="random")
                dm.prepare_data()
                dm.setup("fit")
                model = build_classifier(cfg.model, dm, seed=cfg.seed, width=cfg.width, hidden=cfg.hidden, lr=cfg.lr,
                                         momentum=cfg.momentum, lr_halving_epochs=cfg.lr_halving_epochs or None,
                                         **REGULARISERS[reg](strength, cfg))
                name = "baseline" if strength == 0 else f"{reg}_{strength:g}"
                pair[variant] = fit(args, figure, f"{name}/{variant}", cfg, dm, model, cfg.epochs,
                                    regulariser=reg, strength=strength, variant=variant)
                trained += 1
                progress.update(trained, f"{name}/{variant} done")
            runs[(reg, strength)] = pair
            if strength == 0.0:
                baseline = pair
            if pair["real"].is_global_zero:
                _, val = pair["real"].series("val/acc")
                _, train_rand = pair["randY"].series("train/acc")
                flipped = ""
                shares = {v: pair[v].series("train/critical")[1] for v in ("real", "randY")}
                if all(shares.values()):  # adversarial training: did LASS find critical samples at its radius?
                    flipped = ", LASS flipped per batch (first -> last epoch): " + ", ".join(
                        f"{v} {s[0]:.2f} -> {s[-1]:.2f}" for v, s in shares.items())
                print(f"[{figure}] {reg} {strength:g}: randY final train acc {train_rand[-1]:.3f}, "
                      f"real best val acc {max(val):.3f}{flipped}")
    return runs
