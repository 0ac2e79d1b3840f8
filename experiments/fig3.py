"""Figure 3: the Gini coefficient of the loss sensitivity g_bar_x over training examples, real vs random data.

Claim (Arpit et al. 2017, Sec. 3.2): for real data only a subset of examples has high loss sensitivity, for random
data virtually all do, so the Gini coefficient of g_bar_x is higher for real data than for random data, also when
every example is its own class. Each point is a separate run of T SGD steps (see ``sensitivity_runs.py``).

    python experiments/fig3.py                 # MNIST, first 1,000 digits at 14x14, MLP 2x16, T up to 1e5
    python experiments/fig3.py --quick         # scikit-learn digits (8x8), T up to 20,000, minutes of CPU
    python experiments/fig3.py --quick --one-class-per-example   # add the "as many classes as examples" panel
    python experiments/fig3.py --norm l2       # the L2 (or linf) norm variant; the paper says they are "very similar"
    python experiments/fig3.py --engine callback   # through a Trainer + LossSensitivity(mode="unrolled")

``--engine callback`` trains each run as one Lightning epoch of ``T`` steps and measures it with the callback; it
gives the same numbers as the default functional path for the same seed (``tests/experiments``).

Writes ``runs/fig3/`` (``config.json``, ``results.json``, TensorBoard scalars, ``fig3.png``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from common import Progress, output_folder, parse_config, plot_panels
from sensitivity_runs import Engine, fig3_datamodule, run_protocol
from torch.utils.tensorboard import SummaryWriter

from memo_callbacks.functional import gini
from memo_callbacks.functional.sensitivity import Norm


@dataclass
class Fig3Config:
    dataset: Literal["mnist", "digits"] = "mnist"
    data_dir: str = "./data"
    examples: int = 1000
    steps: tuple[int, ...] = (500, 800, 1200, 2000, 5000, 10000, 30000, 100000)
    hidden: tuple[int, ...] = (16, 16)  # the paper's "2 layers of 16 units" (its plotting code used 32)
    lr: float = 0.05
    batch_size: int = 32
    window: int = 500  # the last 500 steps are measured
    measure_every: int = 2
    one_class_per_example: bool = True  # also run the "as many classes as examples" variants (their own panel)
    norm: Norm = "l1"  # l1 (the paper's) | l2 | linf, for g_x^t and the proxy alike
    engine: Engine = "functional"  # functional | callback (Trainer + LossSensitivity(mode="unrolled"))
    seed: int = 0


# 32-unit layers (the width of the authors' plotting runs): with 16 the random-input network fits little of its data
# within a CPU-sized run.
QUICK = dict(dataset="digits", steps=(500, 2000, 8000, 20000), hidden=(32, 32), one_class_per_example=False)


def main(argv: list[str] | None = None) -> dict:
    cfg, run = parse_config(Fig3Config, QUICK, __doc__.split("\n")[0], argv, figure="fig3",
                            single_process="each run is a plain SGD loop (or a one-process Trainer)")
    out = output_folder(run, "fig3", cfg)
    writer = SummaryWriter(str(out))
    variants = [("real", False, False), ("random", True, False)]
    if cfg.one_class_per_example:
        variants += [("real, 1 class/example", False, True), ("random, 1 class/example", True, True)]
    results: dict = {}
    # Progress in SGD steps over every run (the unrolled measurement of each window is counted in the rate).
    progress, done = Progress("[fig3]", len(variants) * sum(cfg.steps), "step", bar=True, blocks=20), 0
    for name, random_inputs, per_example in variants:
        dm = fig3_datamodule(cfg.dataset, cfg.data_dir, random_inputs, per_example, cfg.examples, cfg.seed)
        for steps in cfg.steps:
            r = run_protocol(dm, steps, hidden=cfg.hidden, lr=cfg.lr, batch_size=cfg.batch_size, window=cfg.window,
                             measure_every=cfg.measure_every, seed=cfg.seed, norm=cfg.norm, engine=cfg.engine,
                             progress=lambda k, done=done, name=name, steps=steps: progress.update(
                                 done + k, f"{name}, T={steps}"))
            done += steps
            progress.update(done, f"{name}, T={steps} measured")
            row = {"steps": steps, "gini": gini(r.g_bar), "gini_proxy": gini(r.proxy),
                   "train_acc": r.train_acc}
            results.setdefault(name, []).append(row)
            tag = name.replace(", ", "_").replace(" ", "_").replace("/", "_per_")
            for k in ("gini", "gini_proxy", "train_acc"):
                writer.add_scalar(f"fig3/{tag}/{k}", row[k], steps)
            progress.print(f"[fig3] {name:>24} T={steps:>6}: Gini {row['gini']:.3f} (proxy {row['gini_proxy']:.3f}), "
                  f"train acc {row['train_acc']:.3f}")
    writer.close()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    def series(key: str, per_example: bool | None = None) -> dict:
        return {n: ([r["steps"] for r in rows], [r[key] for r in rows]) for n, rows in results.items()
                if per_example is None or ("1 class/example" in n) == per_example}

    panels = [(f"Gini of g_bar ({cfg.norm}, unrolled, the paper's)", series("gini", False))]
    if cfg.one_class_per_example:
        panels.append((f"Gini of g_bar ({cfg.norm}), one class per example", series("gini", True)))
    panels += [(f"Gini of the input-gradient proxy ({cfg.norm})", series("gini_proxy")),
               ("training accuracy", series("train_acc"))]
    plot_panels(out / "fig3.png", panels, xlabel="SGD steps T", logx=True,
                title=f"Fig. 3: {cfg.dataset}, {cfg.examples} examples, MLP {cfg.hidden}, {cfg.engine} engine")
    print(f"[fig3] figure: {out / 'fig3.png'}")
    return results


if __name__ == "__main__":
    main()
