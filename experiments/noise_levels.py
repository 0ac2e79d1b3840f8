"""Shared by Figures 7 and 8: one network per (noise kind, noise fraction, seed), CSR and accuracies over training.

Claims (Arpit et al. 2017, Sec. 4, Figs 7 and 8): with 20-80% noise, CSR is higher for noisier data; with label
noise, validation accuracy peaks before training accuracy saturates, and CSR climbs as the network starts fitting
the noise. Figure 7 shows MNIST (the MLP) and Figure 8 CIFAR-10 (the CNN), each with both randX (random inputs) and
randY (random labels) at 0-80% noise: ``fig7.py`` and ``fig8.py`` call :func:`run` with their figure's defaults.

Every condition is trained once per seed of ``--seeds`` (the clean 0% run is shared by both noise kinds); the
figure plots, per noise kind, the mean over the seeds with a min-max band. CSR uses LASS at ``--radius`` pixel
units (the paper's r = 0.3 on the 0-255 scale), with the paper's ratios of step and noise to the radius.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import (
    Dataset,
    Model,
    NoiseKind,
    Progress,
    build_classifier,
    fit,
    noisy_datamodule,
    parse_config,
    plot_panels,
    seed_band,
)

from memo_callbacks import CriticalSampleRatio, LASSConfig


@dataclass
class NoiseLevelConfig:
    dataset: Dataset = "cifar10"
    data_dir: str = "./data"
    noises: tuple[NoiseKind, ...] = ("randY", "randX")  # both noise kinds, as each of the paper's two figures
    fractions: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
    model: Model = "cnn"
    width: float = 1.0
    hidden: tuple[int, ...] = (4096, 4096)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    lr_halving_epochs: int = 15
    subset: int = 0
    csr_samples: int = 1000
    csr_every: int = 1  # epochs between CSR measurements (1 = every epoch, as the paper's curves)
    radius: float = 0.3  # pixel units (the paper's r); step and noise keep the paper's ratios to it
    max_iter: int = 100
    seeds: tuple[int, ...] = (0,)  # one run per seed and condition; the figure shows the mean and the min-max band


# Digits are 8x8 with 297 validation examples: at r = 0.3 pixel units almost no sample flips (the real-data
# network's CSR is about 1/297), so the quick run uses r = 3 ("other r values did not change results
# qualitatively", Sec. 4). The full-size defaults of fig7/fig8 keep r = 0.3.
QUICK = dict(dataset="digits", model="mlp", hidden=(512, 512), epochs=40, batch_size=64, lr=0.05, momentum=0.9,
             lr_halving_epochs=0, csr_samples=297, radius=3.0)

KINDS = {"randY": "random_labels", "randX": "random_inputs"}


def run(figure: str, config_cls: type[NoiseLevelConfig], argv: list[str] | None, description: str) -> dict:
    """Train every (noise kind, fraction, seed); returns ``{kind: {fraction: [EpochMetrics per seed]}}`` (the 0%
    runs appear under every kind) and writes ``<out>/<figure>/<figure>.png``."""
    cfg, args = parse_config(config_cls, QUICK, description, argv, figure=figure)
    noisy = sum(1 for f in cfg.fractions if f)  # the 0% runs are shared by both kinds: trained once per seed
    trained = len(cfg.seeds) * (len(cfg.noises) * noisy + (noisy < len(cfg.fractions)))
    progress, done = Progress(f"[{figure}]", trained, "run"), 0
    results: dict[str, dict[float, list]] = {kind: {} for kind in cfg.noises}
    csr_curves: dict[str, dict[float, list]] = {kind: {} for kind in cfg.noises}
    clean: dict[int, tuple] = {}  # seed -> (metrics, csr curve) of the shared 0% run
    metrics = None
    for kind in cfg.noises:
        for fraction in cfg.fractions:
            for seed in cfg.seeds:
                if fraction == 0 and seed in clean:
                    metrics, curve = clean[seed]
                else:
                    metrics, curve = _one_run(figure, cfg, args, kind, fraction, seed)
                    done += 1
                    progress.update(done, f"{kind if fraction else 'real'} {fraction:.0%} seed {seed} done")
                    if fraction == 0:
                        clean[seed] = (metrics, curve)
                results[kind].setdefault(fraction, []).append(metrics)
                csr_curves[kind].setdefault(fraction, []).append(curve)
    if metrics is not None and metrics.is_global_zero:
        _plot(Path(args.out) / figure / f"{figure}.png", figure, cfg, results, csr_curves)
    return results


def _one_run(figure: str, cfg: NoiseLevelConfig, args, kind: str, fraction: float, seed: int):
    dm = noisy_datamodule(cfg.dataset, cfg.data_dir, kind, fraction, batch_size=cfg.batch_size, seed=seed,
                          subset=cfg.subset or None, subset_mode="random")
    dm.prepare_data()
    dm.setup("fit")
    model = build_classifier(cfg.model, dm, seed=seed, width=cfg.width, hidden=cfg.hidden, lr=cfg.lr,
                             momentum=cfg.momentum, lr_halving_epochs=cfg.lr_halving_epochs or None)
    lass = LASSConfig(radius=cfg.radius, step_size=cfg.radius * 0.25 / 0.3, noise_std=cfg.radius * 0.2 / 0.3,
                      max_iter=cfg.max_iter, seed=seed)
    csr = CriticalSampleRatio(num_samples=cfg.csr_samples, every_n_epochs=cfg.csr_every, lass=lass)
    name = ("real" if fraction == 0 else f"{kind}_{fraction:.2f}") + f"/seed{seed}"
    metrics = fit(args, figure, name, cfg, dm, model, cfg.epochs, [csr], noise=KINDS[kind] if fraction else "none",
                  fraction=fraction, seed=seed)
    curve = ([e["epoch"] + 1 for e in csr.history], [e["csr/val"] for e in csr.history])
    if metrics.is_global_zero:
        _, val = metrics.series("val/acc")
        best = max(range(len(val)), key=val.__getitem__)
        last = metrics.rows[-1]
        print(f"[{figure}] {kind if fraction else 'real'} {fraction:.0%} seed {seed}: final CSR {curve[1][-1]:.4f}, "
              f"train acc {last.get('train/acc', float('nan')):.3f}, noisy-part acc "
              f"{last.get('train/acc_noisy', float('nan')):.3f}, best val acc {val[best]:.3f} at epoch {best + 1}, "
              f"final val acc {val[-1]:.3f}", flush=True)
    return metrics, curve


def _plot(path: Path, figure: str, cfg: NoiseLevelConfig, results: dict, csr_curves: dict) -> None:
    def band(curves: list) -> tuple:
        return seed_band(curves) if len(curves) > 1 else curves[0]

    panels = []
    for kind in cfg.noises:
        label = lambda f: f"{kind} {f:.0%}"  # noqa: E731
        runs = results[kind]
        panels += [
            (f"{kind}: CSR (validation)", {label(f): band(c) for f, c in csr_curves[kind].items()}),
            (f"{kind}: training accuracy", {label(f): band([m.series("train/acc") for m in ms]) for f, ms in runs.items()}),
            (f"{kind}: accuracy on the noisy part",
             {label(f): band([m.series("train/acc_noisy") for m in ms]) for f, ms in runs.items() if f}),
            (f"{kind}: validation accuracy", {label(f): band([m.series("val/acc") for m in ms]) for f, ms in runs.items()}),
        ]
    seeds = f"mean of seeds {', '.join(map(str, cfg.seeds))} with min-max band" if len(cfg.seeds) > 1 else f"seed {cfg.seeds[0]}"
    plot_panels(path, panels, ncols=4,
                title=f"{figure}: {cfg.dataset}, {cfg.model}, r = {cfg.radius} pixel units, {seeds}")
    print(f"[{figure}] figure: {path}")
