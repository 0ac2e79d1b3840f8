"""Shared by Figures 7 and 8: one network per noise fraction, CSR and accuracies over training.

Claims (Arpit et al. 2017, Sec. 4, Figs 7 and 8): with 20-80% noise, CSR is higher for noisier data; with label
noise, validation accuracy peaks before training accuracy saturates, and CSR climbs as the network starts fitting
the noise. The scripts ``fig7.py`` (random labels) and ``fig8.py`` (random inputs) call :func:`run` with their noise
kind. (Which noise kind each of the paper's two figures shows is not recorded in our notes; each script plots CSR,
training accuracy, accuracy on the noisy part, and validation accuracy, so both figures' content is covered.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import build_classifier, fit, noisy_datamodule, parse_config, plot_panels

from memo_callbacks import CriticalSampleRatio, LASSConfig


@dataclass
class NoiseLevelConfig:
    dataset: str = "cifar10"  # mnist | cifar10 | cifar10-jpg | digits
    data_dir: str = "./data"
    fractions: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
    model: str = "cnn"
    width: float = 1.0
    hidden: tuple[int, ...] = (4096, 4096)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    lr_halving_epochs: int = 15
    subset: int = 0
    csr_samples: int = 1000
    radius: float = 0.3  # pixel units; step and noise keep the paper's ratios to it
    max_iter: int = 100
    seed: int = 0


QUICK = dict(dataset="digits", model="mlp", hidden=(512, 512), epochs=40, batch_size=64, lr=0.05,
             lr_halving_epochs=0, csr_samples=297, radius=3.0)


def run(figure: str, noise: str, argv: list[str] | None, description: str) -> dict[float, object]:
    cfg, args = parse_config(NoiseLevelConfig, QUICK, description, argv)
    kind = "randY" if noise == "random_labels" else "randX"
    results, csr_curves = {}, {}
    for fraction in cfg.fractions:
        dm = noisy_datamodule(cfg.dataset, cfg.data_dir, kind, fraction, batch_size=cfg.batch_size, seed=cfg.seed,
                              subset=cfg.subset or None, subset_mode="random")
        dm.prepare_data()
        dm.setup("fit")
        model = build_classifier(cfg.model, dm, seed=cfg.seed, width=cfg.width, hidden=cfg.hidden, lr=cfg.lr,
                                 momentum=cfg.momentum, lr_halving_epochs=cfg.lr_halving_epochs or None)
        lass = LASSConfig(radius=cfg.radius, step_size=cfg.radius * 0.25 / 0.3, noise_std=cfg.radius * 0.2 / 0.3,
                          max_iter=cfg.max_iter, seed=cfg.seed)
        csr = CriticalSampleRatio(num_samples=cfg.csr_samples, lass=lass)
        metrics = fit(args, figure, f"{kind}_{fraction:.2f}", cfg, dm, model, cfg.epochs, [csr], noise=noise,
                      fraction=fraction)
        results[fraction] = metrics
        csr_curves[fraction] = [(e["epoch"] + 1, e["csr/val"]) for e in csr.history]
        if metrics.is_global_zero:
            _, val = metrics.series("val/acc")
            best = max(range(len(val)), key=val.__getitem__)
            last = metrics.rows[-1]
            print(f"[{figure}] {kind} {fraction:.0%}: final CSR {csr_curves[fraction][-1][1]:.4f}, "
                  f"train acc {last.get('train/acc', float('nan')):.3f}, noisy-part acc "
                  f"{last.get('train/acc_noisy', float('nan')):.3f}, best val acc {val[best]:.3f} at epoch {best + 1}, "
                  f"final val acc {val[-1]:.3f}")
    if metrics.is_global_zero:
        label = lambda f: f"{kind} {f:.0%}"  # noqa: E731
        out = Path(args.out) / figure / f"{figure}.png"
        plot_panels(out, [
            ("CSR (validation)", {label(f): ([e for e, _ in pts], [v for _, v in pts]) for f, pts in csr_curves.items()}),
            ("training accuracy", {label(f): m.series("train/acc") for f, m in results.items()}),
            ("accuracy on the noisy part", {label(f): m.series("train/acc_noisy") for f, m in results.items() if f}),
            ("validation accuracy", {label(f): m.series("val/acc") for f, m in results.items()}),
        ], title=f"{figure}: {cfg.dataset}, {cfg.model}, {kind} at several fractions, r = {cfg.radius} pixel units")
        print(f"[{figure}] figure: {out}")
    return results
