"""Feldman-Zhang memorization and C-scores on label noise, against training-dynamics signals of one ordinary run.

For each random-label fraction and seed: E MLPs, each trained on its own random 70% subset (one vectorised
ensemble, :func:`memo_callbacks.functional.memorization_scores`), give per example mem = P(correct | in) -
P(correct | out) and the C-score P(correct | out). One ordinary training run of the same MLP on all the data,
evaluated on every training example after each epoch, gives forgetting counts, the area under the margin (AUM)
and the mean confidence. The script reports how well each score detects the datamodule's noisy examples (AUROC)
and the Spearman rank correlations between the subset scores and the training-dynamics signals.

    python experiments/memorization_scores.py           # digits, randY 20% and 40%, 3 seeds, 64 models each
    python experiments/memorization_scores.py --quick   # 1 seed, 32 models

Writes ``runs/memorization_scores/`` (``config.json``, ``results.json``, ``table.md``, ``scores.pt``,
``memorization_scores.png``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from common import Dataset, Progress, mean_std, noisy_datamodule, output_folder, parse_config, torch_device, write_table
from torch import nn

from memo_callbacks.functional import init_mlp_params, memorization_scores
from memo_callbacks.functional.signals import (
    area_under_margin,
    assigned_probability,
    data_map,
    forgetting_score,
    margins,
)

#: Scores and how to orient them so that a higher value means "more likely noisy".
DIRECTIONS = {"mem": 1.0, "cscore": -1.0, "forgetting": 1.0, "aum": -1.0, "confidence": -1.0}
SIGNALS = ("forgetting", "aum", "confidence")


@dataclass
class MemorizationConfig:
    dataset: Dataset = "digits"  # digits: 1,500 training images, offline
    data_dir: str = "./data"
    fractions: tuple[float, ...] = (0.2, 0.4)  # random-label (randY) fractions of the training set
    seeds: tuple[int, ...] = (0, 1, 2)  # each seeds the noise, the subsets, the initialisations and the data orders
    num_models: int = 64  # E, models trained on random subsets per (fraction, seed)
    subset_ratio: float = 0.7  # Feldman and Zhang's subset ratio
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 30  # enough for a 2x64 MLP to fit most random labels of its subset on digits
    lr: float = 0.5  # plain SGD
    batch_size: int = 32


QUICK = dict(seeds=(0,), num_models=32)


def dynamics_signals(x: torch.Tensor, y: torch.Tensor, cfg: MemorizationConfig, seed: int) -> dict[str, torch.Tensor]:
    """One ordinary run of the same MLP on all of ``(x, y)`` (plain SGD, initialisation of ensemble member 0 of
    ``seed``, a seeded data order), evaluated on every example after each epoch.

    The three signals follow the definitions of ``forgetting_events``, ``area_under_margin`` and ``data_map``
    (confidence) in ``memo_callbacks/functional/signals.py`` (issue 11): forgetting = number of epochs at which an
    example goes from correct to incorrect, with never-learned examples counted as forgotten more often than any
    learned one (Toneva et al.); AUM = mean over epochs of (logit of the assigned label - largest other logit);
    confidence = mean over epochs of the softmax probability of the assigned label. Here correctness is read once
    per epoch on all examples, not at each presentation.
    """
    n, k = x.shape[0], int(y.max()) + 1
    flat = x.reshape(n, -1).double()  # [N, D]
    widths = [flat.shape[1], *cfg.hidden, k]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for lin, (w, b) in zip([m for m in model if isinstance(m, nn.Linear)],
                               init_mlp_params(widths[0], cfg.hidden, k, 1, seed, dtype=torch.float64).member(0)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    correct, margin, prob = [], [], []
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(flat[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            logits = model(flat)  # [N, K]
            correct.append(logits.argmax(1) == y)
            margin.append(margins(logits, y))
            prob.append(assigned_probability(logits, y))
    hist = torch.stack(correct)  # [T, N]
    # never learned: one above the largest count of a learned example (Toneva et al. rank them as infinitely forgotten)
    return {"forgetting": forgetting_score(hist), "aum": area_under_margin(torch.stack(margin)),
            "confidence": data_map(torch.stack(prob), hist).confidence, "final_train_acc": hist[-1].double().mean()}


def main(argv: list[str] | None = None) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    cfg, run = parse_config(MemorizationConfig, QUICK, __doc__.split("\n")[0], argv, figure="memorization_scores",
                            single_process="its E models train as one vectorised ensemble, outside a Trainer")
    device = torch_device(run)
    progress = Progress("[memorization_scores]", len(cfg.fractions) * len(cfg.seeds), "run")
    out = output_folder(run, "memorization_scores", cfg)
    rows, saved = [], {}
    for fraction in cfg.fractions:
        for seed in cfg.seeds:
            dm = noisy_datamodule(cfg.dataset, cfg.data_dir, "randY", fraction, seed=seed)
            dm.prepare_data()
            dm.setup("fit")
            x, y, noisy = dm.train_x, dm.train_y, dm.noisy_mask.cpu()
            s = memorization_scores(x.to(device), y.to(device), num_models=cfg.num_models,
                                    subset_ratio=cfg.subset_ratio, hidden=cfg.hidden, epochs=cfg.epochs, lr=cfg.lr,
                                    batch_size=cfg.batch_size, seed=seed)
            signals = dynamics_signals(x, y, cfg, seed)
            scores = {"mem": s.mem.cpu(), "cscore": s.cscore.cpu(), **{k: signals[k] for k in SIGNALS}}
            ok = torch.stack([v.isfinite() for v in scores.values()]).all(0)  # mem is NaN only if never held in/out
            row = {"fraction": fraction, "seed": seed, "examples": int(ok.sum()), "noisy": int(noisy.sum()),
                   "mem_clean": float(s.mem[~noisy & ok].mean()), "mem_noisy": float(s.mem[noisy & ok].mean()),
                   "mem_stderr": float(s.mem_stderr[ok].mean()), "train_acc": float(signals["final_train_acc"])}
            for name, v in scores.items():
                row[f"auroc_{name}"] = float(roc_auc_score(noisy[ok].numpy(), DIRECTIONS[name] * v[ok].numpy()))
            for subset_score in ("mem", "cscore"):
                for sig in SIGNALS:
                    for part, sel in (("all", ok), ("clean", ok & ~noisy)):
                        rho = spearmanr(scores[subset_score][sel].numpy(), scores[sig][sel].numpy()).statistic
                        row[f"rho_{subset_score}_{sig}_{part}"] = float(rho)
            rows.append(row)
            saved[f"randY{fraction:g}_seed{seed}"] = {**scores, "noisy": noisy, "mem_stderr": s.mem_stderr.cpu(),
                                                      "cscore_stderr": s.cscore_stderr.cpu()}
            print(f"[memorization_scores] randY {fraction:g} seed {seed}: mem clean {row['mem_clean']:.3f} noisy "
                  f"{row['mem_noisy']:.3f}; AUROC " + ", ".join(f"{k} {row[f'auroc_{k}']:.3f}" for k in DIRECTIONS))
            progress.update(len(rows), f"randY {fraction:g} seed {seed} done")
    torch.save(saved, out / "scores.pt")
    table = _table(rows, cfg)
    write_table(out, rows, table)
    _plot(out / "memorization_scores.png", saved, cfg)
    print(f"[memorization_scores] figure: {out / 'memorization_scores.png'}")
    return {"rows": rows, "table": table}


def _table(rows: list[dict], cfg: MemorizationConfig) -> str:
    """Markdown: noise-detection AUROC per score, and Spearman correlations, mean ± std over seeds."""
    lines = [f"Mean ± std over seeds {list(cfg.seeds)}; {cfg.num_models} models per run on {cfg.subset_ratio:g} "
             f"subsets, MLP {cfg.hidden}, {cfg.epochs} epochs, SGD lr {cfg.lr:g}, batch {cfg.batch_size}.", "",
             "| randY | mem clean | mem noisy | mean stderr(mem) | " + " | ".join(f"AUROC {k}" for k in DIRECTIONS)
             + " |", "| --- " * (4 + len(DIRECTIONS)) + "|"]
    for f in cfg.fractions:
        rs = [r for r in rows if r["fraction"] == f]
        cells = [mean_std([r[k] for r in rs]) for k in ("mem_clean", "mem_noisy", "mem_stderr")]
        cells += [mean_std([r[f"auroc_{k}"] for r in rs]) for k in DIRECTIONS]
        lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
    lines += ["", "Spearman rank correlation of the subset scores with the signals of one ordinary run, over all "
              "training examples (and over the clean ones only):", "",
              "| randY | score | " + " | ".join(SIGNALS) + " |", "| --- " * (2 + len(SIGNALS)) + "|"]
    for f in cfg.fractions:
        rs = [r for r in rows if r["fraction"] == f]
        for score in ("mem", "cscore"):
            cells = [f"{mean_std([r[f'rho_{score}_{s}_all'] for r in rs])} "
                     f"({mean_std([r[f'rho_{score}_{s}_clean'] for r in rs])})" for s in SIGNALS]
            lines.append(f"| {f:g} | {score} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, saved: dict, cfg: MemorizationConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [k for k in saved if k.endswith(f"_seed{cfg.seeds[0]}")]
    fig, axes = plt.subplots(2, len(first), figsize=(4.5 * len(first), 7), squeeze=False)
    for col, key in enumerate(first):
        d = saved[key]
        noisy = d["noisy"]
        ax = axes[0, col]
        for sel, name, color in ((~noisy, "clean", "C0"), (noisy, "noisy", "C3")):
            ax.hist(d["mem"][sel].numpy(), bins=30, range=(-0.5, 1.0), alpha=0.6, color=color, label=name)
        ax.set_xlabel("Feldman-Zhang mem")
        ax.set_ylabel("examples")
        ax.set_title(key, fontsize=9)
        ax.legend(fontsize=8)
        ax = axes[1, col]
        for sel, name, color in ((~noisy, "clean", "C0"), (noisy, "noisy", "C3")):
            ax.scatter(d["aum"][sel].numpy(), d["cscore"][sel].numpy(), s=4, alpha=0.5, color=color, label=name)
        ax.set_xlabel("AUM (one ordinary run)")
        ax.set_ylabel("C-score (held-out accuracy)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{cfg.dataset}: {cfg.num_models} MLPs {cfg.hidden} on {cfg.subset_ratio:g} subsets", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
