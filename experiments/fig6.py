"""Figure 6: epochs to reach 100% training accuracy against capacity and against the number of training examples.

Claim (Arpit et al. 2017, Sec. 3.3): fitting noise takes longer than fitting real data, and the gap grows when the
network is smaller or the training set larger: with less capacity or more examples, noisy data slows down much more
than real data does.

    python experiments/fig6.py --gpus 1                          # MNIST, 2 hidden layers, as in the paper
    python experiments/fig6.py --quick                           # scikit-learn digits, a few minutes on a CPU
    tensorboard --logdir runs

Two sweeps per noise level: hidden units at ``examples`` training examples, and training examples at ``hidden``
units. Each run trains until its epoch-level training accuracy (on the labels it is given, noisy ones included) is
exactly 1.0, or for ``max_epochs`` epochs: those runs are reported as "not reached", never as a number of epochs.
Runs are logged to ``runs/fig6/<noise>_h<width>_n<examples>/version_N/`` (TensorBoard, ``config.json``); the
figure's curves to ``runs/fig6/summary``, ``runs/fig6/results.json`` and ``runs/fig6/fig6.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common import (
    Dataset,
    EpochMetrics,
    NoiseKind,
    Progress,
    StopWhenReached,
    make_trainer,
    noise_name,
    noisy_datamodule,
    parse_config,
    quiet_lightning,
    save_config,
    write_summary,
)

from models import MLPClassifier


@dataclass
class Fig6Config:
    dataset: Dataset = "mnist"
    data_dir: str = "./data"
    variants: tuple[NoiseKind, ...] = ("randY", "randX")  # noise kinds, one row of panels each
    fractions: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)  # noise levels, one curve each (0 = real data)
    hidden_units: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)  # width sweep (units per hidden layer) ...
    examples: int = field(default=50000, metadata={"help": "training examples of the width sweep"})
    dataset_sizes: tuple[int, ...] = (10000, 20000, 30000, 40000, 50000)  # size sweep ...
    hidden: int = field(default=4096, metadata={"help": "units per hidden layer of the size sweep"})
    layers: int = 2  # hidden layers
    max_epochs: int = 1000  # runs that have not fitted by then are reported as "not reached"
    batch_size: int = 128  # not stated in the paper
    lr: float = 0.01
    momentum: float = 0.0  # plain SGD
    seed: int = 0


# Digits: 1,500 training images of 8x8; widths and sizes scaled down with the data.
QUICK = dict(dataset="digits", hidden_units=(32, 64, 128, 256, 512), examples=1500,
             dataset_sizes=(250, 500, 1000, 1500), hidden=64, max_epochs=150, batch_size=32, lr=0.3)


def train_one(cfg: Fig6Config, run: Any, variant: str, fraction: float, hidden: int, examples: int
              ) -> tuple[dict[str, Any], int]:
    """Train until the training accuracy is 1.0 or ``max_epochs``; the row of results and the global rank."""
    dm = noisy_datamodule(cfg.dataset, cfg.data_dir, variant, fraction, batch_size=cfg.batch_size, seed=cfg.seed,
                          subset=examples, subset_mode="random")
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(cfg.seed)  # the same initial weights for every noise level of a width
    model = MLPClassifier(dm.input_shape, dm.num_classes, hidden=(hidden,) * cfg.layers, lr=cfg.lr,
                          momentum=cfg.momentum)
    metrics, stop = EpochMetrics(), StopWhenReached("train/acc", 1.0)
    name = f"{noise_name(variant, fraction)}_h{hidden}_n{examples}"
    # Only the training accuracy matters here: no validation, no checkpoints.
    trainer = make_trainer(run, "fig6", name, cfg.max_epochs, [metrics, stop], limit_val_batches=0,
                           enable_checkpointing=False)
    save_config(trainer, cfg, run, variant=variant, fraction=fraction, hidden=hidden, examples=examples)
    with quiet_lightning():
        trainer.fit(model, dm)
    epochs, train_acc = metrics.series("train/acc")
    row = dict(variant=variant, fraction=fraction, hidden=hidden, examples=examples,
               epochs_to_fit=stop.reached_epoch, epochs_run=epochs[-1], final_train_acc=train_acc[-1])
    return row, trainer.global_rank


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    cfg, run = parse_config(Fig6Config, QUICK, __doc__.split("\n")[0], argv, figure="fig6")
    levels = [("real", 0.0)] + [(v, f) for v in cfg.variants for f in cfg.fractions if f > 0]
    points = [(h, cfg.examples) for h in cfg.hidden_units]
    points += [(cfg.hidden, n) for n in cfg.dataset_sizes if (cfg.hidden, n) not in points]
    results: list[dict[str, Any]] = []
    progress = Progress("[fig6]", len(levels) * len(points), "run")
    for variant, fraction in levels:
        for hidden, examples in points:
            row, rank = train_one(cfg, run, variant, fraction, hidden, examples)
            results.append(row)
            progress.update(len(results), f"{noise_name(variant, fraction)} h{hidden} n{examples} done")
    if rank == 0:
        report(cfg, run, results)
    return results


def sweep(cfg: Fig6Config, results: list[dict[str, Any]], name: str, axis: str) -> list[dict[str, Any]]:
    """The rows of one noise level along one sweep: ``axis="hidden"`` (at ``examples``) or ``"examples"``."""
    rows = [r for r in results if noise_name(r["variant"], r["fraction"]) == name]
    if axis == "hidden":
        return sorted((r for r in rows if r["examples"] == cfg.examples and r["hidden"] in cfg.hidden_units),
                      key=lambda r: r["hidden"])
    return sorted((r for r in rows if r["hidden"] == cfg.hidden and r["examples"] in cfg.dataset_sizes),
                  key=lambda r: r["examples"])


def plot(path: Path, cfg: Fig6Config, results: list[dict[str, Any]]) -> None:
    """One row per variant: epochs to fit against width and against examples; unreached runs as open markers
    on a dashed line at ``max_epochs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({0.0, *cfg.fractions})
    fig, axes = plt.subplots(len(cfg.variants), 2, figsize=(10, 3.8 * len(cfg.variants)), squeeze=False)
    for row_axes, variant in zip(axes, cfg.variants):
        for ax, axis, xlabel in ((row_axes[0], "hidden", f"hidden units per layer ({cfg.examples} examples)"),
                                 (row_axes[1], "examples", f"training examples ({cfg.hidden} units per layer)")):
            for i, fraction in enumerate(levels):
                name = noise_name(variant, fraction)
                rows = sweep(cfg, results, name, axis)
                color = f"C{i}"
                xs = [r[axis] for r in rows]
                ys = [r["epochs_to_fit"] if r["epochs_to_fit"] is not None else cfg.max_epochs for r in rows]
                ax.plot(xs, ys, color=color, label=name)
                reached = [(x, y) for x, y, r in zip(xs, ys, rows) if r["epochs_to_fit"] is not None]
                missed = [(x, y) for x, y, r in zip(xs, ys, rows) if r["epochs_to_fit"] is None]
                if reached:
                    ax.plot(*zip(*reached), "o", color=color, markersize=4)
                if missed:
                    ax.plot(*zip(*missed), "o", color=color, markersize=7, markerfacecolor="none")
            ax.axhline(cfg.max_epochs, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{variant}: epochs to 100% train acc")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Fig. 6: {cfg.dataset} MLP, batch {cfg.batch_size}, lr {cfg.lr}; open markers on the dashed line: "
                 f"100% not reached in {cfg.max_epochs} epochs", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(cfg: Fig6Config, run: Any, results: list[dict[str, Any]]) -> None:
    out = Path(run.out) / "fig6" / "fig6.png"
    plot(out, cfg, results)
    names = list(dict.fromkeys(noise_name(r["variant"], r["fraction"]) for r in results))
    # Unreached runs are left out of the TensorBoard curves (they have no epoch count); results.json has them.
    scalars = {f"fig6/{name}/epochs_to_fit_vs_{axis}": [(r[axis], r["epochs_to_fit"])
                                                      for r in sweep(cfg, results, name, axis)
                                                      if r["epochs_to_fit"] is not None]
               for name in names for axis in ("hidden", "examples")}
    write_summary(run, "fig6", scalars, results)

    def cell(r: dict[str, Any]) -> str:
        if r["epochs_to_fit"] is None:
            return f">{cfg.max_epochs} ({r['final_train_acc']:.2f})"
        return str(r["epochs_to_fit"])

    for axis, label, values in (("hidden", f"hidden units, {cfg.examples} examples", cfg.hidden_units),
                                ("examples", f"training examples, {cfg.hidden} units", cfg.dataset_sizes)):
        print(f"[fig6] epochs to 100% training accuracy by {label} (>max: not reached, final train acc)")
        print(f"[fig6] {'noise':>10} " + " ".join(f"{v:>12}" for v in values))
        for name in names:
            rows = {r[axis]: r for r in sweep(cfg, results, name, axis)}
            print(f"[fig6] {name:>10} " + " ".join(f"{cell(rows[v]):>12}" for v in values))
    print(f"[fig6] figure: {out}")


if __name__ == "__main__":
    main()
