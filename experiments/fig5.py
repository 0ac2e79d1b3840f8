"""Figure 5: validation accuracy against the number of hidden units of the MNIST MLP, one curve per noise level.

Claim (Arpit et al. 2017, Sec. 3.3): on real data the validation accuracy is already near its best at a modest width
(4096 units per layer on MNIST), while with noise in the training set (a fraction of random labels, randY, or of
random inputs, randX) the network needs more capacity to reach its best: the curves of noisier data keep rising
with width after the real-data curve has flattened.

    python experiments/fig5.py --gpus 1                          # MNIST, 2 hidden layers, as in the paper
    python experiments/fig5.py --quick                           # scikit-learn digits, a few minutes on a CPU
    tensorboard --logdir runs

Each (noise level, width) is one training run, logged to ``runs/fig5/<noise>_h<width>/version_N/`` (TensorBoard
logs, ``config.json``); the figure's curves go to ``runs/fig5/summary`` (TensorBoard, step = hidden units),
``runs/fig5/results.json`` and ``runs/fig5/fig5.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common import (
    Dataset,
    EpochMetrics,
    NoiseKind,
    Progress,
    make_trainer,
    noise_name,
    noisy_datamodule,
    parse_config,
    plot_panels,
    quiet_lightning,
    save_config,
    write_summary,
)

from models import MLPClassifier


@dataclass
class Fig5Config:
    dataset: Dataset = "mnist"
    data_dir: str = "./data"
    variants: tuple[NoiseKind, ...] = ("randY", "randX")  # noise kinds, one panel each
    fractions: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)  # noise levels, one curve each (0 = real data)
    hidden_units: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)  # units per hidden layer (x axis)
    layers: int = 2  # hidden layers
    epochs: int = 1000
    batch_size: int = 128  # not stated in the paper
    lr: float = 0.01
    momentum: float = 0.0  # plain SGD
    subset: int = 0  # training examples (0 = all)
    seed: int = 0


# Digits: 1,500 training images of 8x8, so the widths are scaled down with the data; 1 s a run on one core.
QUICK = dict(dataset="digits", hidden_units=(8, 16, 32, 64, 128, 256, 512), epochs=50, batch_size=32, lr=0.1)


def train_one(cfg: Fig5Config, run: Any, variant: str, fraction: float, hidden: int) -> tuple[dict[str, Any], int]:
    """One MLP of ``hidden`` units per layer on one noise level: its final and best validation accuracy, and the
    process's global rank."""
    dm = noisy_datamodule(cfg.dataset, cfg.data_dir, variant, fraction, batch_size=cfg.batch_size, seed=cfg.seed,
                          subset=cfg.subset or None, subset_mode="random")
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(cfg.seed)  # the same initial weights for every noise level of a width
    model = MLPClassifier(dm.input_shape, dm.num_classes, hidden=(hidden,) * cfg.layers, lr=cfg.lr,
                          momentum=cfg.momentum)
    metrics = EpochMetrics()
    name = f"{noise_name(variant, fraction)}_h{hidden}"
    trainer = make_trainer(run, "fig5", name, cfg.epochs, [metrics], enable_checkpointing=False)
    save_config(trainer, cfg, run, variant=variant, fraction=fraction, hidden=hidden)
    with quiet_lightning():
        trainer.fit(model, dm)
    _, val = metrics.series("val/acc")
    _, train = metrics.series("train/acc")
    return dict(variant=variant, fraction=fraction, hidden=hidden, final_val_acc=val[-1], best_val_acc=max(val),
                best_epoch=val.index(max(val)) + 1, final_train_acc=train[-1]), trainer.global_rank


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    cfg, run = parse_config(Fig5Config, QUICK, __doc__.split("\n")[0], argv, figure="fig5")
    # The real-data runs (fraction 0) are shared by every variant's panel.
    levels = [("real", 0.0)] + [(v, f) for v in cfg.variants for f in cfg.fractions if f > 0]
    results: list[dict[str, Any]] = []
    progress = Progress("[fig5]", len(levels) * len(cfg.hidden_units), "run")
    for variant, fraction in levels:
        for hidden in cfg.hidden_units:
            row, rank = train_one(cfg, run, variant, fraction, hidden)
            results.append(row)
            progress.update(len(results), f"{noise_name(variant, fraction)} h{hidden} done")
    if rank == 0:
        report(cfg, run, results)
    return results


def curves(cfg: Fig5Config, results: list[dict[str, Any]], variant: str, key: str) -> dict[str, tuple[list, list]]:
    """``{noise level: (hidden units, results[key])}`` for one variant's panel, real data first."""
    out = {}
    for fraction in sorted({0.0, *cfg.fractions}):
        name = noise_name(variant, fraction)
        rows = [r for r in results if noise_name(r["variant"], r["fraction"]) == name]
        out[name] = ([r["hidden"] for r in rows], [r[key] for r in rows])
    return out


def report(cfg: Fig5Config, run: Any, results: list[dict[str, Any]]) -> None:
    panels = [(f"{v}: {label} validation accuracy", curves(cfg, results, v, f"{metric}_val_acc"))
              for v in cfg.variants for metric, label in (("best", "best"), ("final", "final-epoch"))]
    out = Path(run.out) / "fig5" / "fig5.png"
    plot_panels(out, panels, xlabel=f"hidden units per layer ({cfg.layers} layers)", logx=True, ncols=2,
                title=f"Fig. 5: {cfg.dataset} MLP, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}")
    scalars = {}  # the real-data curve is in every variant's panel, once in TensorBoard
    for v in cfg.variants:
        for metric in ("best", "final"):
            for name, (xs, ys) in curves(cfg, results, v, f"{metric}_val_acc").items():
                scalars[f"fig5/{name}/{metric}_val_acc"] = list(zip(xs, ys))
    write_summary(run, "fig5", scalars, results)
    widths = list(cfg.hidden_units)
    names = list(dict.fromkeys(noise_name(r["variant"], r["fraction"]) for r in results))
    tables = (("best validation accuracy (its epoch)", lambda r: f"{r['best_val_acc']:.3f} ({r['best_epoch']:>3})"),
              ("final validation accuracy (final train acc)",
               lambda r: f"{r['final_val_acc']:.3f} ({r['final_train_acc']:.2f})"))
    for title, fmt in tables:
        print(f"[fig5] {title}, by hidden units per layer")
        print(f"[fig5] {'noise':>10} " + " ".join(f"{h:>12}" for h in widths))
        for name in names:
            rows = {r["hidden"]: r for r in results if noise_name(r["variant"], r["fraction"]) == name}
            print(f"[fig5] {name:>10} " + " ".join(f"{fmt(rows[h]):>12}" for h in widths))
    print(f"[fig5] figure: {out}")


if __name__ == "__main__":
    main()
