"""Figure 1: per-example misclassification rate after one epoch, over many runs, real data vs noise.

Claim (Arpit et al. 2017, Sec. 3.1): with real data some examples are consistently easy and others consistently
hard across runs (new initialisation and data order each run), so the sorted per-example misclassification rates
spread far beyond the Binomial(E, p) curve that examples of equal difficulty would give; with random inputs (randX)
the curve looks binomial: there is no shared structure that makes some examples easier.

The E runs train as one vectorised ensemble (:func:`memo_callbacks.functional.train_ensemble`), not as E Trainers.

    python experiments/fig1.py                       # CIFAR-10, first 1,000 training images, MLP, 100 runs
    python experiments/fig1.py --quick               # scikit-learn digits (1,000 of them), seconds on a CPU

Writes ``runs/fig1/`` (``config.json``, ``rates.pt``, TensorBoard scalars) and ``runs/fig1/fig1.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from common import Dataset, Progress, Variant, make_datamodule, output_folder, parse_config, torch_device
from torch.utils.tensorboard import SummaryWriter

from memo_callbacks.functional import binomial_reference, misclassification_rate, train_ensemble


@dataclass
class Fig1Config:
    dataset: Dataset = "cifar10"
    data_dir: str = "./data"
    variants: tuple[Variant, ...] = ("real", "randX", "randY")
    examples: int = 1000  # the first N training examples
    runs: int = 100  # E: independent runs (initialisation and data order)
    hidden: tuple[int, ...] = (256, 256)  # the paper's MLP size is not stated
    lr: float = 0.01
    batch_size: int = 32  # not stated
    epochs: int = 1
    seed: int = 0


QUICK = dict(dataset="digits")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    cfg, run = parse_config(Fig1Config, QUICK, __doc__.split("\n")[0], argv, figure="fig1",
                            single_process="its E runs train as one vectorised ensemble, outside a Trainer")
    device = torch_device(run)
    progress = Progress("[fig1]", len(cfg.variants), "variant")
    out = output_folder(run, "fig1", cfg)
    writer = SummaryWriter(str(out))
    rates, summary = {}, {}
    for variant in cfg.variants:
        # "first" N as the paper's Figure 3 takes them, except in a class-sorted image folder, where the first N
        # examples are all of one class: a seeded subset of every class there.
        mode = "random" if cfg.dataset == "cifar10-jpg" else "first"
        dm = make_datamodule(cfg.dataset, cfg.data_dir, variant, subset=cfg.examples, subset_mode=mode, seed=cfg.seed)
        dm.prepare_data()
        dm.setup("fit")
        result = train_ensemble(dm.train_x.to(device), dm.train_y.to(device), num_members=cfg.runs,
                                hidden=cfg.hidden, num_classes=dm.num_classes, lr=cfg.lr,
                                batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed)
        rate = misclassification_rate(result.correct).double().cpu()  # [N]
        p = float(rate.mean())
        reference = binomial_reference(cfg.runs, p, rate.numel())
        rates[variant] = {"rate": rate, "binomial": reference}
        # Spread across examples relative to the binomial's: 1 = no shared easy/hard structure.
        summary[variant] = {"mean_rate": p, "std": float(rate.std()), "binomial_std": float(reference.std()),
                            "spread_ratio": float(rate.std() / reference.std().clamp_min(1e-12))}
        for k, v in summary[variant].items():
            writer.add_scalar(f"fig1/{variant}/{k}", v, 0)
        print(f"[fig1] {variant:>5}: mean misclassification {p:.3f}, std across examples {summary[variant]['std']:.3f} "
              f"vs binomial {summary[variant]['binomial_std']:.3f} (ratio {summary[variant]['spread_ratio']:.2f})")
        progress.update(len(summary), f"{variant} done")
    writer.close()
    torch.save(rates, out / "rates.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(out / "fig1.png", rates, cfg)
    print(f"[fig1] figure: {out / 'fig1.png'}")
    return summary


def _plot(path: Path, rates: dict, cfg: Fig1Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (variant, r) in enumerate(rates.items()):
        color = f"C{i}"
        ax.plot(r["rate"].sort().values.numpy(), color=color, label=variant)
        ax.plot(r["binomial"].numpy(), color=color, linestyle="--", alpha=0.6, label=f"{variant}: binomial")
    ax.set_xlabel("example (sorted)")
    ax.set_ylabel(f"misclassification rate over {cfg.runs} runs")
    ax.set_title(f"Fig. 1: {cfg.dataset}, {cfg.examples} examples, MLP {cfg.hidden}, {cfg.epochs} epoch", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
