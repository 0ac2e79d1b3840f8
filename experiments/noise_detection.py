"""Which per-example signal finds the noisy labels best: training-dynamics signals against cleanlab.

For each random-label (randY) fraction and seed, one ordinary training run of an MLP on all the training data is
evaluated on every training example after each epoch; from that history come the forgetting score (Toneva et al.
2019), the area under the margin (Pleiss et al. 2020), the data-map confidence / variability / correctness
(Swayamdipta et al. 2020) and the mean loss; EL2N and GraNd (Paul et al. 2021) are taken at ``early_epoch``. The
baseline is cleanlab's confident learning on out-of-sample probabilities from ``folds``-fold cross-validation of the
same MLP trained for the same number of epochs. A combination, the mean of the rank-normalised AUM and forgetting
scores, is also scored. Each is reported as AUROC and average precision of detecting the datamodule's noisy
examples, mean ± std over seeds.

    python experiments/noise_detection.py --quick   # digits, randY 20% and 40%, 3 seeds

Writes ``runs/noise_detection/`` (``config.json``, ``results.json``, ``table.md``, ``noise_detection.png``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from common import Dataset, Progress, UsageError, mean_std, noisy_datamodule, output_folder, parse_config, write_table
from torch import nn

from memo_callbacks.functional import init_mlp_params
from memo_callbacks.functional.baselines import confident_learning, cross_val_probabilities
from memo_callbacks.functional.signals import (
    NOISE_SCORE_SIGN,
    area_under_margin,
    assigned_probability,
    data_map,
    el2n,
    forgetting_score,
    grand,
    margins,
    noise_detection,
)

SIGNALS = ("forgetting", "aum", "el2n", "grand", "confidence", "variability", "correctness", "loss", "aum+forgetting",
           "cleanlab")


@dataclass
class NoiseDetectionConfig:
    dataset: Dataset = "digits"  # digits: 1,500 training images, offline
    data_dir: str = "./data"
    fractions: tuple[float, ...] = (0.2, 0.4)  # random-label (randY) fractions of the training set
    seeds: tuple[int, ...] = (0, 1, 2)  # each seeds the noise, the initialisation, the data order and the folds
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 30  # the training budget of every model (the dynamics run and each cross-validation fold)
    lr: float = 0.1  # plain SGD
    batch_size: int = 32
    early_epoch: int = 3  # EL2N / GraNd after this many epochs (Paul et al. use ~10-20 of 200 on CIFAR)
    folds: int = 5  # cross-validation folds for cleanlab's out-of-sample probabilities


QUICK: dict = {}


def _mlp(in_features: int, hidden: tuple[int, ...], k: int, seed: int) -> nn.Sequential:
    widths = [in_features, *hidden, k]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for lin, (w, b) in zip([m for m in model if isinstance(m, nn.Linear)],
                               init_mlp_params(in_features, hidden, k, 1, seed).member(0)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    return model


def train(x: torch.Tensor, y: torch.Tensor, k: int, cfg: NoiseDetectionConfig, seed: int, on_epoch=None) -> nn.Module:
    """Plain-SGD training of the MLP for ``cfg.epochs``; ``on_epoch(epoch, model)`` after each epoch."""
    model = _mlp(x[0].numel(), cfg.hidden, k, seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch, model)
    return model


def signal_scores(x: torch.Tensor, y: torch.Tensor, k: int, cfg: NoiseDetectionConfig, seed: int) -> dict:
    """Every signal of one run, ``{name: [N]}``."""
    correct, margin, prob, loss, early = [], [], [], [], {}

    def record(epoch: int, model: nn.Module) -> None:
        with torch.no_grad():
            logits = model(x)  # [N, K]
        correct.append(logits.argmax(1) == y)
        margin.append(margins(logits, y))
        prob.append(assigned_probability(logits, y))
        loss.append(nn.functional.cross_entropy(logits, y, reduction="none"))
        if epoch + 1 == cfg.early_epoch:
            early["el2n"] = el2n(logits, y)
            early["grand"] = grand(model, x, y)

    train(x, y, k, cfg, seed, record)
    hist = torch.stack(correct)  # [T, N]
    dm = data_map(torch.stack(prob), hist)
    scores = {"forgetting": forgetting_score(hist), "aum": area_under_margin(torch.stack(margin)), **early,
              "confidence": dm.confidence, "variability": dm.variability, "correctness": dm.correctness,
              "loss": torch.stack(loss).double().mean(0)}
    scores["aum+forgetting"] = (_rank01(scores["aum"], "aum") + _rank01(scores["forgetting"], "forgetting")) / 2
    return scores | {"train_acc": hist[-1].double().mean()}


def _rank01(values: torch.Tensor, name: str) -> torch.Tensor:
    """``[N]`` rank of the signed score in [0, 1] (1 = most likely noisy), for averaging signals on one scale."""
    signed = values.double() * NOISE_SCORE_SIGN[name]
    return signed.argsort().argsort().double() / max(values.numel() - 1, 1)


def cleanlab_scores(x: torch.Tensor, y: torch.Tensor, k: int, cfg: NoiseDetectionConfig, seed: int):
    def fit_predict(tx, ty, vx, fold):
        model = train(tx, ty, k, cfg, seed * 1000 + fold)
        model.eval()
        with torch.no_grad():
            return model(vx).softmax(1)

    return confident_learning(cross_val_probabilities(fit_predict, x, y, cfg.folds, seed), y)


def main(argv: list[str] | None = None) -> dict:
    cfg, run = parse_config(NoiseDetectionConfig, QUICK, __doc__.split("\n")[0], argv, figure="noise_detection",
                            single_process="small MLPs trained in plain PyTorch, outside a Trainer")
    for name, value, low in (("--early-epoch", cfg.early_epoch, 1), ("--folds", cfg.folds, 2), ("--epochs", cfg.epochs, 1)):
        if value < low:
            raise UsageError(f"{name} must be an int >= {low}, got {value}")
    if cfg.early_epoch > cfg.epochs:
        raise UsageError(f"--early-epoch must be at most --epochs ({cfg.epochs}), got {cfg.early_epoch}")
    progress = Progress("[noise_detection]", len(cfg.fractions) * len(cfg.seeds), "run")
    out = output_folder(run, "noise_detection", cfg)
    rows, first_seed = [], {}
    for fraction in cfg.fractions:
        for seed in cfg.seeds:
            dm = noisy_datamodule(cfg.dataset, cfg.data_dir, "randY", fraction, seed=seed)
            dm.prepare_data()
            dm.setup("fit")
            x, y, noisy = dm.train_x.float().cpu(), dm.train_y.cpu(), dm.noisy_mask.cpu()
            k = int(dm.train_y.max()) + 1
            scores = signal_scores(x, y, k, cfg, seed)
            cl = cleanlab_scores(x, y, k, cfg, seed)
            scores["cleanlab"] = cl.score
            row = {"fraction": fraction, "seed": seed, "noisy": int(noisy.sum()), "examples": int(noisy.numel()),
                   "train_acc": float(scores.pop("train_acc")), "cleanlab_flagged": int(cl.issues.sum()),
                   "cleanlab_flag_precision": float(noisy[cl.issues].double().mean()) if cl.issues.any() else 0.0,
                   "cleanlab_flag_recall": float(cl.issues[noisy].double().mean())}
            for name in SIGNALS:
                sign = 1.0 if name == "aum+forgetting" else NOISE_SCORE_SIGN[name]
                res = noise_detection(scores[name], noisy, sign)
                row[f"auroc_{name}"], row[f"ap_{name}"] = res.auroc, res.average_precision
            rows.append(row)
            if seed == cfg.seeds[0]:
                first_seed[fraction] = (scores, noisy)
            print(f"[noise_detection] randY {fraction:g} seed {seed}: AUROC "
                  + ", ".join(f"{n} {row[f'auroc_{n}']:.3f}" for n in SIGNALS))
            progress.update(len(rows), f"randY {fraction:g} seed {seed} done")
    table = _table(rows, cfg)
    write_table(out, rows, table)
    _plot(out / "noise_detection.png", first_seed, cfg)
    print(f"[noise_detection] figure: {out / 'noise_detection.png'}")
    return {"rows": rows, "table": table}


def _table(rows: list[dict], cfg: NoiseDetectionConfig) -> str:
    lines = [f"{cfg.dataset}, randY; mean ± std over seeds {list(cfg.seeds)}; MLP {cfg.hidden}, {cfg.epochs} epochs, "
             f"SGD lr {cfg.lr:g}, batch {cfg.batch_size}; EL2N/GraNd after epoch {cfg.early_epoch}; cleanlab on "
             f"{cfg.folds}-fold out-of-sample probabilities of the same MLP and epochs.", ""]
    for metric, title in (("auroc", "AUROC"), ("ap", "average precision")):
        lines += [f"{title} of detecting the noisy examples:", "",
                  "| randY | " + " | ".join(SIGNALS) + " |", "| --- " * (1 + len(SIGNALS)) + "|"]
        for f in cfg.fractions:
            rs = [r for r in rows if r["fraction"] == f]
            lines.append(f"| {f:g} | " + " | ".join(mean_std([r[f"{metric}_{n}"] for r in rs]) for n in SIGNALS) + " |")
        lines.append("")
    lines += ["cleanlab's own flags (find_label_issues):", "", "| randY | flagged | precision | recall | final train acc |",
              "| --- | --- | --- | --- | --- |"]
    for f in cfg.fractions:
        rs = [r for r in rows if r["fraction"] == f]
        lines.append(f"| {f:g} | " + " | ".join(mean_std([float(r[k]) for r in rs]) for k in
                                                 ("cleanlab_flagged", "cleanlab_flag_precision", "cleanlab_flag_recall",
                                                  "train_acc")) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, first_seed: dict, cfg: NoiseDetectionConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(first_seed), figsize=(5 * len(first_seed), 8), squeeze=False)
    for col, (fraction, (scores, noisy)) in enumerate(first_seed.items()):
        ax = axes[0, col]
        for name in SIGNALS:
            sign = 1.0 if name == "aum+forgetting" else NOISE_SCORE_SIGN[name]
            s = (scores[name].double() * sign).nan_to_num(nan=-math.inf)
            order = s.argsort(descending=True)
            hits = noisy[order].double().cumsum(0)
            ax.plot((hits / noisy.sum()).numpy(), (hits / torch.arange(1, len(s) + 1)).numpy(), label=name,
                    lw=2 if name in ("cleanlab", "aum+forgetting") else 1)
        ax.set_xlabel("recall of noisy examples")
        ax.set_ylabel("precision")
        ax.set_title(f"randY {fraction:g}, seed {cfg.seeds[0]}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        for sel, name, color in ((~noisy, "clean", "C0"), (noisy, "noisy", "C3")):
            ax.scatter(scores["variability"][sel].numpy(), scores["confidence"][sel].numpy(), s=4, alpha=0.5,
                       color=color, label=name)
        ax.set_xlabel("variability")
        ax.set_ylabel("confidence")
        ax.set_title("data map", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
