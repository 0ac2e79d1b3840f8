"""The small runner every figure script shares: arguments, datasets, Trainer, resolved config, TensorBoard scalars.

Each experiment is one readable script over the library (the library never imports the experiments). A script
defines a dataclass config, calls :func:`parse_config` (command-line flags for every field, ``--quick`` for a
CPU-sized run), builds datamodules with :func:`make_datamodule` and Trainers with :func:`make_trainer`, and writes
its resolved config, TensorBoard logs and figure side by side under ``runs/<figure>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python experiments/figN.py` from a checkout
    sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402

from datamodules import NoisyCIFAR10, NoisyDataModule, NoisyDigits, NoisyImageFolder, NoisyMNIST  # noqa: E402

C = TypeVar("C")

#: The CIFAR-10 JPEGs shipped for offline work (see ../shared/data/README.md), relative to the repository.
SHARED_CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

#: The paper's noise variants, by the names its figures use.
VARIANTS: dict[str, dict[str, Any]] = {
    "real": dict(noise="none"),
    "randX": dict(noise="random_inputs"),
    "randY": dict(noise="random_labels"),
}


@dataclasses.dataclass
class RunArgs:
    """Arguments every experiment takes (besides its own config)."""

    gpus: int = 0  # GPUs per node; 0 runs on the CPU
    nodes: int = 1  # Lightning's num_nodes (launch one process per GPU per node, e.g. with torchrun or SLURM)
    out: str = "runs"  # root of all outputs
    precision: str = "32-true"  # Trainer precision; LASS always runs in float32 whatever this is
    quick: bool = False  # a CPU-sized run on real data that finishes in minutes


def parse_config(config_cls: type[C], quick: dict[str, Any], description: str, argv: list[str] | None = None) -> tuple[C, RunArgs]:
    """Command-line flags for every field of ``config_cls`` and of :class:`RunArgs`; ``--quick`` applies ``quick``
    first, so explicit flags still override it."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = [(config_cls, parser.add_argument_group("experiment")), (RunArgs, parser.add_argument_group("run"))]
    for cls, group in groups:
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            flag = "--" + f.name.replace("_", "-")
            if isinstance(default, bool):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {default})")
            elif isinstance(default, (tuple, list)):
                kind = type(default[0]) if default else str
                group.add_argument(flag, nargs="+", type=kind, default=None, help=f"(default {' '.join(map(str, default))})")
            else:
                group.add_argument(flag, type=type(default) if default is not None else str, default=None,
                                   help=f"(default {default})")
    ns = vars(parser.parse_args(argv))
    run_fields = {f.name for f in dataclasses.fields(RunArgs)}
    run = RunArgs(**{k: v for k, v in ns.items() if k in run_fields and v is not None})
    values: dict[str, Any] = dict(quick) if run.quick else {}
    values.update({k: v for k, v in ns.items() if k not in run_fields and v is not None})
    for f in dataclasses.fields(config_cls):
        if f.name in values and isinstance(getattr(config_cls, f.name, None), tuple):
            values[f.name] = tuple(values[f.name])
    config = config_cls(**values)
    if run.gpus < 0 or run.nodes < 1:
        raise SystemExit(f"--gpus must be >= 0 and --nodes >= 1, got {run.gpus} and {run.nodes}")
    return config, run


def resolve_cifar_folder(data_dir: str) -> Path:
    """The CIFAR-10 JPEG folder under ``data_dir``, extracted from the shared archive on first use."""
    folder = Path(data_dir) / "cifar10-jpg"
    if (folder / "train").is_dir():
        return folder
    if not SHARED_CIFAR_ARCHIVE.exists():
        raise SystemExit(
            f"no CIFAR-10 JPEG folder at {folder} and no archive at {SHARED_CIFAR_ARCHIVE}; use --dataset cifar10 "
            "with torchvision's files in --data-dir, or --dataset digits"
        )
    import tarfile

    print(f"extracting {SHARED_CIFAR_ARCHIVE} to {data_dir} (once)")
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with tarfile.open(SHARED_CIFAR_ARCHIVE) as tar:
        tar.extractall(data_dir, filter="data")
    return folder


def make_datamodule(dataset: str, data_dir: str, variant: str, **kwargs: Any) -> NoisyDataModule:
    """A datamodule by name: ``mnist``, ``cifar10`` (torchvision files), ``cifar10-jpg`` (the JPEG folder),
    ``digits``; ``variant`` is ``real``, ``randX`` or ``randY`` (see :data:`VARIANTS`); kwargs override."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    options = {**VARIANTS[variant], **kwargs}
    if options.get("noise") == "none":
        options.pop("noise_fraction", None)
    if dataset == "mnist":
        return NoisyMNIST(data_dir, download=True, **options)
    if dataset == "cifar10":
        return NoisyCIFAR10(data_dir, download=True, **options)
    if dataset == "cifar10-jpg":
        return NoisyImageFolder(str(resolve_cifar_folder(data_dir)), val_dir="test", **options)
    if dataset == "digits":
        return NoisyDigits(data_dir, **options)
    raise SystemExit(f"unknown dataset {dataset!r}; expected mnist, cifar10, cifar10-jpg or digits")


def make_trainer(run: RunArgs, figure: str, name: str, epochs: int, callbacks: list, **kwargs: Any) -> pl.Trainer:
    """A Trainer that logs to ``<out>/<figure>/<name>`` in TensorBoard; DDP when more than one process."""
    distributed = run.gpus > 1 or run.nodes > 1
    return pl.Trainer(
        accelerator="gpu" if run.gpus > 0 else "cpu",
        devices=run.gpus if run.gpus > 0 else 1,
        num_nodes=run.nodes,
        strategy="ddp" if distributed else "auto",
        precision=run.precision,
        max_epochs=epochs,
        logger=TensorBoardLogger(os.path.join(run.out, figure), name=name, default_hp_metric=False),
        callbacks=callbacks,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def save_config(trainer: pl.Trainer, config: Any, run: RunArgs, **extra: Any) -> None:
    """Write the resolved configuration beside the run's TensorBoard logs (rank 0 only)."""
    if trainer.global_rank != 0 or trainer.logger is None:
        return
    path = Path(trainer.logger.log_dir)
    path.mkdir(parents=True, exist_ok=True)
    blob = {"config": dataclasses.asdict(config), "run": dataclasses.asdict(run), "torch": torch.__version__,
            "lightning": pl.__version__, **extra}
    (path / "config.json").write_text(json.dumps(blob, indent=2, default=str))


def read_scalars(log_dir: str | os.PathLike, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one scalar tag, read back with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


class EpochMetrics(pl.Callback):
    """Records the Trainer's epoch-level metrics (``trainer.callback_metrics``, already synced across ranks) once
    per training epoch, so a script can plot curves without re-reading the event files.

    An epoch's row is taken when the *next* epoch starts (or training ends): only then has Lightning folded in what
    the LightningModule logs in its own ``on_train_epoch_end``, which runs after the callbacks' hook.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.is_global_zero = True
        self._pending: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def _flush(self, trainer: pl.Trainer) -> None:
        if self._pending is None:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        row["epoch"] = self._pending
        self.rows.append(row)
        self._pending = None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"] + 1, r[key]) for r in self.rows if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]


def plot_panels(path: Path, panels: list[tuple[str, dict[str, tuple[list, list]]]], xlabel: str = "epoch",
                title: str = "", logx: bool = False, ncols: int | None = None) -> None:
    """Line plots, one row (or rows of ``ncols``): each panel is ``(ylabel, {curve name: (xs, ys)})``, or
    ``(xs, ys, low, high)`` to shade a band (see :func:`seed_band`). Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(ncols or len(panels), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (ylabel, curves) in zip(axes.flat, panels):
        for name, curve in curves.items():
            (line,) = ax.plot(curve[0], curve[1], marker="o", markersize=3, label=name)
            if len(curve) == 4:
                ax.fill_between(curve[0], curve[2], curve[3], color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_classifier(kind: str, dm: NoisyDataModule, *, seed: int, width: float = 1.0,
                     hidden: tuple[int, ...] = (4096, 4096), **kwargs: Any) -> pl.LightningModule:
    """The paper's CNN (``kind="cnn"``) or MLP (``"mlp"``) for a datamodule, initialised from ``seed`` (the global
    RNGs are seeded here, so the initialisation, dropout and noise of the run that follows are reproducible);
    kwargs go to the classifier (optimisation and regularisers)."""
    from models import CNNClassifier, MLPClassifier

    pl.seed_everything(seed, workers=True, verbose=False)

    if kind == "cnn":
        return CNNClassifier(dm.input_shape, dm.num_classes, width=width, **kwargs)
    if kind == "mlp":
        return MLPClassifier(dm.input_shape, dm.num_classes, hidden=hidden, **kwargs)
    raise SystemExit(f"--model must be cnn or mlp, got {kind!r}")


def fit(run: RunArgs, figure: str, name: str, config: Any, dm: NoisyDataModule, model: pl.LightningModule,
        epochs: int, callbacks: list | None = None, **extra: Any) -> EpochMetrics:
    """Train one model, logging to ``<out>/<figure>/<name>``; returns its per-epoch metrics."""
    metrics = EpochMetrics()
    trainer = make_trainer(run, figure, name, epochs, [*(callbacks or []), metrics])
    save_config(trainer, config, run, name=name, **extra)
    trainer.fit(model, dm)
    metrics.is_global_zero = trainer.global_rank == 0
    return metrics

class StopWhenReached(pl.Callback):
    """Stops training at the end of the first training epoch whose ``monitor`` (an epoch-level metric such as
    ``train/acc``) is at least ``target``, and records how many epochs that took.

    :attr:`reached_epoch` is the number of epochs trained when the target was first met (1 = after the first
    epoch), or None when training ended (at ``max_epochs``) without meeting it. The decision goes through
    ``trainer.strategy.reduce_boolean_decision``, so every DDP rank stops at the same epoch.

    Example:
        >>> stop = StopWhenReached("train/acc", 1.0)
        >>> stop.reached_epoch is None
        True
    """

    def __init__(self, monitor: str = "train/acc", target: float = 1.0) -> None:
        self.monitor = monitor
        self.target = target
        self.reached_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, target=self.target)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reached_epoch is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        reached = value is not None and float(value) >= self.target
        if trainer.strategy.reduce_boolean_decision(reached, all=False):
            self.reached_epoch = trainer.current_epoch + 1
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"reached_epoch": self.reached_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reached_epoch = state_dict["reached_epoch"]


def noise_name(variant: str, fraction: float) -> str:
    """A short run name for a noise level: ``real`` for no noise, else e.g. ``randY0.4``."""
    return "real" if variant == "real" or fraction == 0 else f"{variant}{fraction:g}"


def noisy_datamodule(dataset: str, data_dir: str, variant: str, fraction: float, **kwargs: Any) -> NoisyDataModule:
    """:func:`make_datamodule` for a noise level: ``fraction`` of the training set corrupted the ``variant`` way
    (``randX`` or ``randY``); fraction 0 (or ``variant="real"``) is the clean dataset."""
    if not 0.0 <= fraction <= 1.0:
        raise SystemExit(f"noise fractions must be in [0, 1], got {fraction}")
    if variant == "real" or fraction == 0:
        return make_datamodule(dataset, data_dir, "real", **kwargs)
    return make_datamodule(dataset, data_dir, variant, noise_fraction=fraction, **kwargs)


def write_summary(run: RunArgs, figure: str, scalars: dict[str, list[tuple[int, float]]], results: Any = None) -> Path:
    """Log a figure's own curves (e.g. accuracy against hidden units) to TensorBoard under
    ``<out>/<figure>/summary`` as ``tag -> [(x, y), ...]`` with x as the step, and, when given, write ``results``
    as JSON beside them. Call on rank 0 only. Returns the summary folder."""
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(run.out) / figure / "summary"
    for old in folder.glob("events.out.tfevents.*"):  # the summary of the latest sweep only, like its PNG
        old.unlink()
    writer = SummaryWriter(str(folder))
    try:
        for tag, points in scalars.items():
            for x, y in points:
                writer.add_scalar(tag, y, global_step=x)
    finally:
        writer.close()
    if results is not None:
        (Path(run.out) / figure / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return folder


def seed_band(curves: list[tuple[list, list]]) -> tuple[list, list, list, list]:
    """One curve per seed ``(xs, ys)`` -> ``(xs, mean, min, max)`` over the seeds, at the x values every seed has
    (for :func:`plot_panels`: the mean with a min-max band)."""
    common = sorted(set.intersection(*(set(xs) for xs, _ in curves))) if curves else []
    table = [[dict(zip(xs, ys))[x] for xs, ys in curves] for x in common]  # [X, seeds]
    return (common, [sum(v) / len(v) for v in table], [min(v) for v in table], [max(v) for v in table])
