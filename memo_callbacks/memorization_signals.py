"""Per-example memorization signals, scored each epoch as detectors of the noisy training labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import Tensor

from datamodules.checks import check_bool, check_int, check_str
from memo_callbacks.example_dynamics import DynamicsHistory, ExampleDynamics
from memo_callbacks.functional.signals import (
    NOISE_SCORE_SIGN,
    area_under_margin,
    data_map,
    el2n,
    forgetting_score,
    grand,
    noise_detection,
)
from memo_callbacks.utilities import all_reduce_sum, find_tensorboard, preserved_state, rank_shard

SignalName = Literal["forgetting", "aum", "confidence", "variability", "correctness", "loss", "el2n", "grand"]
_SIGNALS: tuple[str, ...] = ("forgetting", "aum", "confidence", "variability", "correctness", "loss", "el2n", "grand")
_DYNAMICS = _SIGNALS[:6]


class MemorizationSignals(Callback):
    r"""Log, every epoch, how well each memorization signal finds the noisy examples (AUROC and AP).

    The dynamics signals (forgetting score, AUM, data-map confidence / variability / correctness, mean loss) come from
    the history of an :class:`~memo_callbacks.ExampleDynamics` in the same Trainer, which must record every epoch
    and run before this callback (list it first). EL2N and GraNd (Paul et al. 2021) are computed by this callback
    in an eval-mode pass over the datamodule's ``train_x`` / ``train_y`` at the end of each of ``early_epochs``
    (their mean over those epochs is the score), each rank scoring a disjoint shard that is then summed, so the
    scores are exact under DDP.

    Logged with step = epoch: ``<name>/<signal>_auroc`` and ``<name>/<signal>_ap``; on TensorBoard also a PR
    curve per signal (``<name>/<signal>``, the score mapped to its rank in [0, 1]) and a data-map scatter
    (``<name>/data_map``: variability vs confidence, clean in blue, noisy in red).

    Args:
        dynamics: the ExampleDynamics to read; by default the first one among the Trainer's callbacks.
        early_epochs: epochs (``trainer.current_epoch``) at whose end EL2N and GraNd are computed; empty to skip.
        signals: which signals to score.
        pr_curves: write PR curves to TensorBoard.
        data_map_image: write the data-map scatter to TensorBoard (needs matplotlib).
        batch_size: examples per chunk of the EL2N / GraNd pass.
        name: prefix of the logged tags.

    Example:
        >>> from memo_callbacks import ExampleDynamics, MemorizationSignals
        >>> callbacks = [ExampleDynamics(filename=None), MemorizationSignals(early_epochs=(1,))]
    """

    def __init__(
        self,
        dynamics: ExampleDynamics | None = None,
        early_epochs: Sequence[int] = (1,),
        signals: Sequence[SignalName] = _SIGNALS,
        pr_curves: bool = True,
        data_map_image: bool = True,
        batch_size: int = 256,
        name: str = "signals",
    ) -> None:
        if dynamics is not None and not isinstance(dynamics, ExampleDynamics):
            raise TypeError(f"`dynamics` must be an ExampleDynamics or None, got {type(dynamics).__name__}")
        if isinstance(early_epochs, (str, bytes)) or not isinstance(early_epochs, Sequence):
            raise TypeError(f"`early_epochs` must be a sequence of ints, got {early_epochs!r}")
        self.early_epochs = tuple(check_int(e, "early_epochs", minimum=0) for e in early_epochs)
        if isinstance(signals, str) or not signals:
            raise ValueError(f"`signals` must be a non-empty sequence of names from {_SIGNALS}, got {signals!r}")
        bad = [s for s in signals if s not in _SIGNALS]
        if bad:
            raise ValueError(f"`signals` must be names from {_SIGNALS}, got {bad}")
        self.signals = tuple(signals)
        self.pr_curves = check_bool(pr_curves, "pr_curves")
        self.data_map_image = check_bool(data_map_image, "data_map_image")
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.name = check_str(name, "name")
        self.dynamics = dynamics
        #: EL2N (row 0) and GraNd (row 1) of every early epoch computed so far, ``{epoch: [2, N] float64}``.
        self.early: dict[int, Tensor] = {}
        #: The last metrics logged, ``{"<name>/<signal>_auroc": value, ...}``.
        self.last_metrics: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @property
    def early_scores(self) -> dict[str, Tensor]:
        """``{"el2n": [N], "grand": [N]}`` averaged over the early epochs done; empty before the first."""
        if not self.early:
            return {}
        mean = torch.stack(list(self.early.values())).mean(dim=0)
        return {"el2n": mean[0], "grand": mean[1]}

    # ----------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dynamics is None:
            found = [cb for cb in trainer.callbacks if isinstance(cb, ExampleDynamics)]
            if not found:
                raise RuntimeError("MemorizationSignals needs an ExampleDynamics callback in the Trainer (list it first)")
            self.dynamics = found[0]
        callbacks = list(trainer.callbacks)
        if self.dynamics in callbacks and callbacks.index(self.dynamics) > callbacks.index(self):
            raise RuntimeError("MemorizationSignals must come after its ExampleDynamics in `callbacks`")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch in self.early_epochs and epoch not in self.early and self._wants_early():
            self._add_early_scores(trainer, pl_module, epoch)
        history = self.dynamics.history if self.dynamics is not None else None
        if history is None or history.noisy is None or not len(history.epochs) or int(history.epochs[-1]) != epoch:
            return
        self._log(trainer, epoch, self.scores(history))

    def state_dict(self) -> dict[str, Any]:
        return {"early": dict(self.early)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.early = {int(e): v for e, v in state_dict["early"].items()}

    # -------------------------------------------------------------------------------------------- helpers
    def _wants_early(self) -> bool:
        return "el2n" in self.signals or "grand" in self.signals

    def scores(self, history: DynamicsHistory) -> dict[str, Tensor]:
        """Every requested signal available from ``history`` and the early scores, ``{name: [N]}``."""
        out: dict[str, Tensor] = {}
        if any(s in self.signals for s in _DYNAMICS):
            dm = data_map(history.prob, history.correct)
            observed = history.correct >= 0
            out |= {
                "forgetting": forgetting_score(history.correct),
                "aum": area_under_margin(history.margin),
                "confidence": dm.confidence,
                "variability": dm.variability,
                "correctness": dm.correctness,
                "loss": history.loss.double().nansum(0) / observed.sum(0).double(),
            }
        out |= self.early_scores
        return {k: v for k, v in out.items() if k in self.signals}

    def _add_early_scores(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        dm = trainer.datamodule
        x_all, y_all = getattr(dm, "train_x", None), getattr(dm, "train_y", None)
        if not isinstance(x_all, Tensor) or not isinstance(y_all, Tensor):
            raise RuntimeError("MemorizationSignals computes EL2N / GraNd on `datamodule.train_x` / `train_y` tensors")
        n = x_all.shape[0]
        sums = torch.zeros(2, n, dtype=torch.float64, device=pl_module.device)
        shard = rank_shard(torch.arange(n), trainer.global_rank, trainer.world_size)
        with preserved_state(pl_module):
            pl_module.eval()
            for chunk in shard.split(self.batch_size):
                x, y = x_all[chunk].to(pl_module.device), y_all[chunk].to(pl_module.device)
                idx = chunk.to(pl_module.device)
                if "el2n" in self.signals:
                    with torch.no_grad():
                        sums[0, idx] = el2n(pl_module(x), y).double()
                if "grand" in self.signals:
                    sums[1, idx] = grand(pl_module, x, y, batch_size=self.batch_size).double()
        sums = all_reduce_sum(trainer, sums).cpu()  # every example scored on exactly one rank
        self.early[epoch] = sums

    def _log(self, trainer: Trainer, epoch: int, scores: dict[str, Tensor]) -> None:
        noisy = self.dynamics.history.noisy
        if not bool(noisy.any()) or bool(noisy.all()):
            return
        metrics: dict[str, float] = {}
        for key, values in scores.items():
            result = noise_detection(values, noisy, NOISE_SCORE_SIGN[key])
            metrics[f"{self.name}/{key}_auroc"] = result.auroc
            metrics[f"{self.name}/{key}_ap"] = result.average_precision
        self.last_metrics = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=epoch)
        writer = find_tensorboard(trainer) if trainer.is_global_zero else None
        if writer is None:
            return
        if self.pr_curves:
            for key, values in scores.items():
                signed = (values.double() * NOISE_SCORE_SIGN[key]).nan_to_num(nan=float("-inf"))
                rank = signed.argsort().argsort().double() / max(signed.numel() - 1, 1)  # in [0, 1], same order
                writer.add_pr_curve(f"{self.name}/{key}", noisy.long(), rank, global_step=epoch)
        if self.data_map_image and {"confidence", "variability"} <= scores.keys():
            writer.add_image(f"{self.name}/data_map", _data_map_image(scores, noisy), global_step=epoch,
                             dataformats="HWC")


def _data_map_image(scores: dict[str, Tensor], noisy: Tensor) -> Any:
    """``[H, W, 3]`` uint8 scatter of variability (x) vs confidence (y), clean blue and noisy red."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for mask, color, label in ((~noisy, "tab:blue", "clean"), (noisy, "tab:red", "noisy")):
        ax.scatter(scores["variability"][mask].numpy(), scores["confidence"][mask].numpy(), s=4, alpha=0.5,
                   color=color, label=label)
    ax.set_xlabel("variability")
    ax.set_ylabel("confidence")
    ax.legend(loc="upper right")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
