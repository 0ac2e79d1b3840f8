"""Figure 10: each regulariser's effect on memorising random labels vs generalising on real data.

See ``regularisers.py`` for the claim and the settings.

    python experiments/fig10.py --gpus 2          # CIFAR-10 CNN, every regulariser over the paper's ranges
    python experiments/fig10.py --quick           # scikit-learn digits, MLP, on a CPU
"""

from __future__ import annotations

from pathlib import Path

from common import parse_config
from regularisers import QUICK, RegulariserConfig, sweep


def main(argv: list[str] | None = None) -> dict[str, list[tuple[float, float, float]]]:
    cfg, args = parse_config(RegulariserConfig, QUICK, __doc__.split("\n")[0], argv, figure="fig10")
    runs = sweep("fig10", cfg, args, {r: getattr(cfg, r) for r in cfg.regularisers})
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for (reg, strength), pair in runs.items():
        train_rand = pair["randY"].series("train/acc")[1][-1]
        best_val = max(pair["real"].series("val/acc")[1])
        curves.setdefault(reg, []).append((strength, train_rand, best_val))
    if next(iter(runs.values()))["real"].is_global_zero:
        _plot(Path(args.out) / "fig10" / "fig10.png", curves, cfg)
        print("[fig10] regulariser strength: randY final train acc -> real best val acc")
        for reg, pts in curves.items():
            print(f"[fig10] {reg:>13}: " + ", ".join(f"{s:g}: {t:.2f}->{v:.3f}" for s, t, v in pts))
    return curves


def _plot(path: Path, curves, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for reg, pts in curves.items():
        pts = sorted(pts, key=lambda p: p[1])
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=reg)
        for s, t, v in pts:
            ax.annotate(f"{s:g}", (t, v), fontsize=6, alpha=0.7)
    ax.set_xlabel("final training accuracy on random labels (memorisation)")
    ax.set_ylabel("best validation accuracy on real data")
    ax.set_title(f"Fig. 10: {cfg.dataset}, {cfg.model}, {cfg.epochs} epochs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
