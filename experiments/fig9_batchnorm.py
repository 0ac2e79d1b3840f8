"""Figure 9, a check: is the randX network's low CSR on CIFAR-10 an artefact of its BatchNorm statistics?

On a CPU-sized CIFAR-10 run of Figure 9 (``experiments/results/README.md``) the network trained on random inputs
(randX) had a validation CSR no higher than the real-data network, against the paper's claim. Hypothesis: its
BatchNorm running statistics are those of Gaussian noise, so real validation images are normalised with the wrong
mean and variance, land far from anything it has seen and are classified with saturated, hard-to-flip confidence.

Test: train the real and the randX network as Figure 9 does, then measure the validation CSR (LASS at the paper's
r = 0.3 pixel units, no clip) and the confidence of the predictions twice on the same model: with the BatchNorm
statistics as trained, and with them recomputed on clean training images (weights unchanged). If the hypothesis
holds, the randX network's CSR rises (and its confidence falls) once its BatchNorm sees real images.

    python experiments/fig9_batchnorm.py --dataset cifar10-jpg --width 0.25 --subset 10000 --epochs 12
    python experiments/fig9_batchnorm.py --quick      # digits MLP has no BatchNorm: use the CNN at width 0.1

Writes ``runs/fig9_batchnorm/`` (TensorBoard logs, ``config.json``) and ``runs/fig9_batchnorm/summary.json``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from common import Dataset, Progress, Variant, build_classifier, fit, make_datamodule, parse_config
from torch import Tensor, nn

from memo_callbacks.functional import lass


@dataclass
class BatchNormCheckConfig:
    dataset: Dataset = "cifar10-jpg"
    data_dir: str = "./data"
    variants: tuple[Variant, ...] = ("real", "randX")
    width: float = 0.25  # CNN width multiplier (1.0 = the paper's 200 channels)
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    lr_halving_epochs: int = 15
    subset: int = 10000  # training examples (0 = all)
    csr_samples: int = 300  # clean validation examples searched
    recompute_samples: int = 5000  # clean training images the BatchNorm statistics are recomputed on
    radius: float = 0.3  # LASS r on the 0-255 pixel scale; alpha and beta in the paper's ratios 0.25/0.3, 0.2/0.3
    max_iter: int = 100
    seed: int = 0


QUICK = dict(dataset="digits", width=0.1, epochs=10, batch_size=64, lr=0.05, lr_halving_epochs=0, subset=0,
             csr_samples=297, recompute_samples=1500, radius=3.0)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the plain average over ``x`` (weights unchanged)."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise SystemExit("the model has no BatchNorm layer: nothing to recompute (use the CNN)")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches below
    model.train()
    for start in range(0, x.shape[0], batch_size):
        model(x[start : start + batch_size])
    return model.eval()


@torch.no_grad()
def confidence(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    model.eval()
    logits = model(x)
    p = logits.softmax(-1)
    top2 = logits.topk(2, dim=-1).values
    return {"val_acc": (logits.argmax(-1) == y).float().mean().item(),
            "mean_max_prob": p.max(-1).values.mean().item(),
            "median_logit_margin": (top2[:, 0] - top2[:, 1]).median().item()}


def measure(model: nn.Module, x: Tensor, y: Tensor, radius: Tensor, cfg: BatchNormCheckConfig) -> dict[str, float]:
    out = lass(model, x, radius=radius, step_size=radius * 0.25 / 0.3, noise_std=radius * 0.2 / 0.3,
               max_iter=cfg.max_iter, seed=cfg.seed)
    return {"csr": out.critical.float().mean().item(), **confidence(model, x, y)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    cfg, run = parse_config(BatchNormCheckConfig, QUICK, __doc__.split("\n")[0], argv, figure="fig9_batchnorm")
    progress = Progress("[fig9_batchnorm]", len(cfg.variants), "run")
    kw = dict(batch_size=cfg.batch_size, seed=cfg.seed, subset=cfg.subset or None, subset_mode="random")
    clean = make_datamodule(cfg.dataset, cfg.data_dir, "real", **kw)
    clean.prepare_data()
    clean.setup("fit")
    g = torch.Generator().manual_seed(cfg.seed)
    val = torch.randperm(clean.num_val, generator=g)[: cfg.csr_samples]
    x_val, y_val = clean.val_x[val], clean.val_y[val]
    x_clean = clean.train_x[torch.randperm(clean.num_train, generator=g)[: cfg.recompute_samples]]
    radius = clean.pixels_to_input_units(cfg.radius).view(-1, 1, 1)  # [C] -> [C, 1, 1], per channel
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for variant in cfg.variants:
        dm = make_datamodule(cfg.dataset, cfg.data_dir, variant, **kw)
        dm.prepare_data()
        dm.setup("fit")
        assert torch.equal(dm.val_x, clean.val_x), "the clean validation set must be the same for every variant"
        model = build_classifier("cnn", dm, seed=cfg.seed, width=cfg.width, lr=cfg.lr, momentum=cfg.momentum,
                                 lr_halving_epochs=cfg.lr_halving_epochs or None)
        metrics = fit(run, "fig9_batchnorm", variant, cfg, dm, model, cfg.epochs)
        progress.update(cfg.variants.index(variant) + 1, f"{variant} trained")
        if not metrics.is_global_zero:
            continue
        net = model.network.cpu().eval()
        own = dm.train_x[torch.randperm(dm.num_train, generator=g)[: cfg.recompute_samples]]
        summary[variant] = {
            "as_trained": measure(net, x_val, y_val, radius, cfg),
            "bn_on_own_training_inputs": measure(recompute_batchnorm(net, own), x_val, y_val, radius, cfg),
            "bn_on_clean_images": measure(recompute_batchnorm(net, x_clean), x_val, y_val, radius, cfg),
            "train_acc": metrics.rows[-1].get("train/acc", float("nan")),
        }
        for cond, vals in summary[variant].items():
            if isinstance(vals, dict):
                print(f"[fig9_batchnorm] {variant:5s} {cond:26s} " + ", ".join(f"{k} {v:.3f}" for k, v in vals.items()))
    if summary:
        out = Path(run.out) / "fig9_batchnorm"
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"config": asdict(cfg), "results": summary}, indent=2))
        print(f"[fig9_batchnorm] summary: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
