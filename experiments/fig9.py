"""Figure 9: the critical sample ratio (CSR) during training, real data vs random inputs vs random labels.

Claim (Arpit et al. 2017, Sec. 4): CSR, measured on the clean validation set, is much higher for a network trained
on noise (randX, randY) than for one trained on real data; it rises during training and then plateaus.

    python experiments/fig9.py --gpus 2                          # CIFAR-10 CNN, as in the paper
    python experiments/fig9.py --dataset cifar10-jpg --width 0.25 --subset 10000 --epochs 15   # CPU-sized
    python experiments/fig9.py --quick                           # scikit-learn digits, MLP, a few minutes on a CPU
    python experiments/fig9.py --quick --seeds 0 1 2             # every variant per seed: mean with a min-max band
    python experiments/fig9.py --quick --accelerator cpu --devices 2   # two CPU processes under DDP (gloo)
    tensorboard --logdir runs

Writes ``runs/fig9/<variant>/version_N/`` (``<variant>/seedS/version_N/`` with several seeds) (TensorBoard logs, ``config.json``) and ``runs/fig9/fig9.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import (
    Dataset,
    EpochMetrics,
    Model,
    Progress,
    Variant,
    build_classifier,
    fit,
    make_datamodule,
    parse_config,
    plot_panels,
    seed_band,
)

from memo_callbacks import CriticalSampleRatio, LASSConfig


@dataclass
class Fig9Config:
    dataset: Dataset = "cifar10"
    data_dir: str = "./data"
    variants: tuple[Variant, ...] = ("real", "randX", "randY")
    model: Model = "cnn"  # cnn (the paper's CIFAR-10 network) | mlp
    width: float = 1.0  # CNN width multiplier (1.0 = the paper's 200 channels)
    hidden: tuple[int, ...] = (4096, 4096)  # MLP hidden layers
    epochs: int = 60  # not stated in the paper
    batch_size: int = 128  # not stated in the paper
    lr: float = 0.01
    momentum: float = 0.9
    lr_halving_epochs: int = 15  # 0 = constant learning rate
    subset: int = 0  # training examples (0 = all)
    csr_samples: int = 1000  # validation examples searched each time
    csr_every: int = 1  # epochs between CSR measurements
    radius: float = 0.3  # LASS r on the 0-255 pixel scale; alpha and beta keep the paper's ratios 0.25/0.3, 0.2/0.3
    max_iter: int = 100
    seeds: tuple[int, ...] = (0,)  # one run per seed and variant; several: the figure shows the mean and min-max band


# Digits have only 297 validation examples and 8x8 inputs: at r = 0.3 the real-data network flips about one of
# them, so the quick run uses r = 3 ("other r values did not change results qualitatively", Sec. 4).
QUICK = dict(dataset="digits", model="mlp", hidden=(512, 512), epochs=30, batch_size=64, lr=0.05,
             lr_halving_epochs=0, csr_samples=297, radius=3.0)


def csr_callback(cfg: Fig9Config, seed: int) -> CriticalSampleRatio:
    """LASS at radius ``cfg.radius`` (pixel units), with the paper's ratios of step and noise to radius."""
    lass = LASSConfig(radius=cfg.radius, step_size=cfg.radius * 0.25 / 0.3, noise_std=cfg.radius * 0.2 / 0.3,
                      max_iter=cfg.max_iter, seed=seed)
    return CriticalSampleRatio(num_samples=cfg.csr_samples, every_n_epochs=cfg.csr_every, lass=lass)


def csr_series(csr: CriticalSampleRatio, key: str = "csr/val") -> tuple[list[int], list[float]]:
    """``(epochs, values)`` of the measurements the callback made (epochs counted from 1)."""
    points = [(e["epoch"] + 1, e[key]) for e in csr.history if key in e]
    return [p[0] for p in points], [p[1] for p in points]


def main(argv: list[str] | None = None) -> dict[str, list[EpochMetrics]]:
    """Returns ``{variant: [EpochMetrics per seed]}``."""
    cfg, run = parse_config(Fig9Config, QUICK, __doc__.split("\n")[0], argv, figure="fig9")
    progress = Progress("[fig9]", len(cfg.variants) * len(cfg.seeds), "run")
    results: dict[str, list[EpochMetrics]] = {}
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    for variant in cfg.variants:
        for seed in cfg.seeds:
            dm = make_datamodule(cfg.dataset, cfg.data_dir, variant, batch_size=cfg.batch_size, seed=seed,
                                 subset=cfg.subset or None, subset_mode="random")
            dm.prepare_data()
            dm.setup("fit")
            model = build_classifier(cfg.model, dm, seed=seed, width=cfg.width, hidden=cfg.hidden, lr=cfg.lr,
                                     momentum=cfg.momentum, lr_halving_epochs=cfg.lr_halving_epochs or None)
            csr = csr_callback(cfg, seed)
            name = variant if len(cfg.seeds) == 1 else f"{variant}/seed{seed}"
            metrics = fit(run, "fig9", name, cfg, dm, model, cfg.epochs, [csr], seed=seed)
            results.setdefault(variant, []).append(metrics)
            curves.setdefault(variant, []).append(csr_series(csr))  # only the epochs measured (see --csr-every)
            if metrics.is_global_zero:
                last, csr_values = metrics.rows[-1], curves[variant][-1][1]
                print(f"[fig9] {variant} seed {seed}: CSR {csr_values[-1] if csr_values else float('nan'):.4f}, "
                      f"train acc {last.get('train/acc', float('nan')):.3f}, "
                      f"val acc {last.get('val/acc', float('nan')):.3f}", flush=True)
            progress.update(sum(map(len, results.values())), f"{name} done")
    if metrics.is_global_zero:
        def band(series: list) -> tuple:
            return seed_band(series) if len(series) > 1 else series[0]

        out = Path(run.out) / "fig9" / "fig9.png"
        seeds = (f"mean of seeds {', '.join(map(str, cfg.seeds))} with min-max band" if len(cfg.seeds) > 1
                 else f"seed {cfg.seeds[0]}")
        plot_panels(out, [
            ("CSR (validation)", {v: band(c) for v, c in curves.items()}),
            ("training accuracy", {v: band([m.series("train/acc") for m in ms]) for v, ms in results.items()}),
            ("validation accuracy", {v: band([m.series("val/acc") for m in ms]) for v, ms in results.items()}),
        ], title=f"Fig. 9: {cfg.dataset}, {cfg.model}, r = {cfg.radius} pixel units, {seeds}")
        print(f"[fig9] figure: {out}")
    return results


if __name__ == "__main__":
    main()
