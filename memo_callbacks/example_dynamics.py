"""Per-example learning dynamics over training: which examples are fitted, and when, clean versus noisy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from memo_callbacks.functional.dynamics import (
    PerExampleLoss,
    clean_noisy_means,
    dynamics_compute,
    dynamics_update,
    example_outcomes,
    first_learned_epoch,
    learned_for_good_epoch,
)
from memo_callbacks.functional.signals import assigned_probability, margins
from datamodules.checks import check_bool, check_callable, check_str
from memo_callbacks.utilities import (
    BatchAdapter,
    ParsedBatch,
    all_reduce_sum,
    find_tensorboard,
    preserved_state,
    rank_shard,
    unpack_batch,
)
from memo_callbacks.utilities.files import callback_dir, check_plain_name, unclaimed_path
from memo_callbacks.utilities.tensorboard import add_epoch_layout, log_epoch_scalars

_ROWS = 7  # rows of an epoch's statistics (see `_stats`)
DynamicsMode = Literal["eval_pass", "train_step"]
_MODES = ("eval_pass", "train_step")
_LOSS_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class DynamicsHistory:
    """The recorded history of every training example.

    Attributes:
        epochs: ``[R]`` the epoch (``trainer.current_epoch``) of each recorded row.
        correct: ``[R, N]`` int8: 1 fitted (argmax equals the label trained on), 0 not fitted, -1 not observed.
        loss: ``[R, N]`` per-example loss (NaN where not observed).
        noisy: ``[N]`` bool noise mask, or None when the data does not mark noisy examples.
        margin: ``[R, N]`` float32 margin (logit of the label trained on minus the largest other logit; NaN where not
            observed), the input of :func:`memo_callbacks.functional.signals.area_under_margin`.
        prob: ``[R, N]`` float32 softmax probability of the label trained on (NaN where not observed), the input of
            :func:`memo_callbacks.functional.signals.data_map`.
    """

    epochs: Tensor
    correct: Tensor
    loss: Tensor
    noisy: Tensor | None
    margin: Tensor | None = None
    prob: Tensor | None = None

    @property
    def first_learned(self) -> Tensor:
        """``[N]`` the first epoch each example was fitted, -1 if never."""
        return first_learned_epoch(self.correct, self.epochs)

    @property
    def learned_for_good(self) -> Tensor:
        """``[N]`` the epoch from which each example stayed fitted, -1 if it is not fitted at the end."""
        return learned_for_good_epoch(self.correct, self.epochs)


class ExampleDynamics(Callback):
    r"""Record, for every training example and every epoch, whether it is fitted and its loss.

    Arpit et al. (2017, Figs 7 and 8) observe that networks fit the clean examples first and the noisy ones (random
    labels) later, and that validation accuracy peaks before the noise is fitted. This callback measures that
    directly: per example (addressed by dataset index), correctness (``argmax == the label trained on``, the
    corrupted label for noisy examples) and loss at the end of every ``every_n_epochs``-th epoch, the epoch at which
    it was first learned and the epoch from which it stayed learned, split clean / noisy.

    Two ways to measure (``mode``):

    - ``"eval_pass"`` (default): after the epoch's last optimiser step, run the model in eval mode over the whole
      training set. Exact (every example judged by the same, final parameters; no dropout, BatchNorm on running
      statistics), at the cost of one forward pass over the training set per recorded epoch. The model's modes, the
      grad mode and all RNGs are restored afterwards, so the training run is unchanged. The model is called as
      ``pl_module(x)`` and must return logits ``[B, K]``. With a datamodule holding its training set as tensors
      (``train_x``, ``train_y``, as :class:`datamodules.NoisyDataModule` does) each rank evaluates a disjoint shard
      in batches of ``eval_batch_size``; otherwise the callback iterates ``trainer.train_dataloader`` (any
      training-time augmentation then applies).
    - ``"train_step"``: read the logits the training step already computed. Nearly free, but each example is judged
      by the parameters *before* the update of its own step, in training mode (dropout active, BatchNorm on batch
      statistics): early in training this lags the eval-mode answer. ``training_step`` must return a dict with the
      logits of the batch under ``logits_key``, e.g. ``return {"loss": loss, "logits": logits.detach()}``.

    An example seen more than once in an epoch (a padded distributed sampler) counts as fitted only if fitted every
    time, with its mean loss. Per-example statistics are dense ``[N]`` sums and counts added across DDP ranks, so
    one and several processes give the same history. The noise mask comes from ``trainer.datamodule.noisy_mask``
    when there is one, otherwise from the batches' ``noisy`` flags.

    Logged per recorded epoch (``step`` = epoch) to every logger: ``{name}/fit_{all,clean,noisy}`` (fraction of the
    examples fitted now), ``{name}/learned_{all,clean,noisy}`` (fraction ever fitted),
    ``{name}/loss_{all,clean,noisy}`` (mean loss); to TensorBoard also the same scalars as
    ``by_epoch/{name}/...`` (beside the other callbacks' epoch curves, grouped in the "Custom Scalars" dashboard) and
    histograms ``{name}/first_learned_epoch`` (and ``_clean`` / ``_noisy``). Groups that are empty are not logged.
    At the end of fitting the whole
    :class:`DynamicsHistory` (plus ``first_learned`` and ``learned_for_good``) is saved with :func:`torch.save` to
    ``{log_dir}/{name}/{filename}``: ``log_dir`` is the logger's log folder, or the Trainer's ``default_root_dir``
    without a logger (Lightning's default for that is the current directory: pass ``default_root_dir`` to put it
    elsewhere). A file there that this callback did not write in this run is never overwritten: the history is
    written as ``<stem>-v1.pt`` (``-v2``, ...) instead, with a warning; ``saved_paths`` lists what was written. The
    history is part of the callback's checkpoint state: a resumed run continues
    it (an epoch recorded again replaces its earlier row).

    Memory: ``R x N`` bytes for correctness plus ``R x N`` losses of ``loss_dtype`` (pass ``torch.float16`` to
    halve them), held on the CPU and in checkpoints.

    Args:
        mode: ``"eval_pass"`` or ``"train_step"`` (see above).
        every_n_epochs: record at the end of every n-th epoch.
        num_examples: N, the training set size; read from the datamodule (``num_train``) or the training
            dataloader's dataset by default.
        eval_batch_size: batch size of the eval pass over datamodule tensors.
        logits_key: key of the logits in ``training_step``'s output dict (``"train_step"`` mode).
        loss_fn: per-example loss ``(logits [B, K], targets [B]) -> [B]``; cross-entropy by default.
        batch_adapter: turns a batch of another form into a :class:`~memo_callbacks.utilities.ParsedBatch`; batches
            must carry the dataset index of each example.
        loss_dtype: dtype of the stored losses.
        log_histogram: log the first-learned histograms to TensorBoard.
        filename: name of the history file in the callback's folder; None to not save one.
        name: prefix of the logged tags, and the name of the callback's folder under the log folder (a plain name).

    Example:
        >>> from memo_callbacks import ExampleDynamics
        >>> cb = ExampleDynamics(mode="eval_pass", every_n_epochs=1)
        >>> cb.state_key
        "ExampleDynamics{'name': 'dynamics', 'mode': 'eval_pass'}"
    """

    def __init__(
        self,
        mode: DynamicsMode = "eval_pass",
        every_n_epochs: int = 1,
        num_examples: int | None = None,
        eval_batch_size: int = 1024,
        logits_key: str = "logits",
        loss_fn: PerExampleLoss | None = None,
        batch_adapter: BatchAdapter | None = None,
        loss_dtype: torch.dtype = torch.float32,
        log_histogram: bool = True,
        filename: str | None = "example_dynamics.pt",
        name: str = "dynamics",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}")
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be a positive integer, got {every_n_epochs!r}")
        if num_examples is not None and (not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1):
            raise ValueError(f"`num_examples` must be a positive integer or None, got {num_examples!r}")
        if not isinstance(eval_batch_size, int) or isinstance(eval_batch_size, bool) or eval_batch_size < 1:
            raise ValueError(f"`eval_batch_size` must be a positive integer, got {eval_batch_size!r}")
        if loss_dtype not in _LOSS_DTYPES:
            raise ValueError(f"`loss_dtype` must be one of {_LOSS_DTYPES}, got {loss_dtype!r}")
        if filename is not None:
            check_plain_name(filename, "filename")
        if not name:
            raise ValueError(f"`name` must be a non-empty tag prefix, got {name!r}")
        check_plain_name(name, "name")
        check_str(logits_key, "logits_key")
        check_callable(loss_fn, "loss_fn")
        check_callable(batch_adapter, "batch_adapter")
        check_bool(log_histogram, "log_histogram")
        self.mode = mode
        self.every_n_epochs = every_n_epochs
        self.num_examples = num_examples
        self.eval_batch_size = eval_batch_size
        self.logits_key = logits_key
        self.loss_fn = loss_fn
        self.batch_adapter = batch_adapter
        self.loss_dtype = loss_dtype
        self.log_histogram = log_histogram
        self.filename = filename
        self.name = name

        self._n: int | None = None
        self._epochs: list[int] = []
        self._correct: list[Tensor] = []  # rows [N] int8
        self._loss: list[Tensor] = []  # rows [N] loss_dtype
        self._margin: list[Tensor] = []  # rows [N] float32
        self._prob: list[Tensor] = []  # rows [N] float32
        self._noisy: Tensor | None = None  # [N] bool
        self._noisy_from_datamodule = False
        # this epoch's [7, N] float64 sums: correct, loss, observations, noisy flags, observations carrying a flag,
        # margin of the label trained on, its probability
        self._stats: Tensor | None = None
        self._recorded_epoch: int | None = None
        #: The files written in this run (the history file, or its ``-vN`` variant where the name was taken).
        self.saved_paths: list[Path] = []
        self._written: set[Path] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, mode=self.mode)

    @property
    def history(self) -> DynamicsHistory:
        """Everything recorded so far (rows in epoch order)."""
        n = self._n or 0
        return DynamicsHistory(
            epochs=torch.tensor(self._epochs, dtype=torch.long),
            correct=torch.stack(self._correct) if self._correct else torch.empty(0, n, dtype=torch.int8),
            loss=torch.stack(self._loss) if self._loss else torch.empty(0, n, dtype=self.loss_dtype),
            noisy=self._noisy,
            margin=torch.stack(self._margin) if self._margin else torch.empty(0, n),
            prob=torch.stack(self._prob) if self._prob else torch.empty(0, n),
        )

    # ----------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.saved_paths, self._written = [], set()  # a new run: files of earlier runs are never overwritten
        n = self._resolve_num_examples(trainer)
        if self._n is not None and self._n != n and self._epochs:
            raise RuntimeError(
                f"ExampleDynamics holds a history of {self._n} examples (from a checkpoint) but the training set has "
                f"{n}; resume with the same data or use a new callback"
            )
        self._n = n
        noisy = self._datamodule_noisy_mask(trainer, n)
        if noisy is not None:
            self._noisy, self._noisy_from_datamodule = noisy, True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.mode == "train_step" and self._should_record(trainer):
            self._stats = torch.zeros(_ROWS, self._n, dtype=torch.float64, device=pl_module.device)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._should_record(trainer):
            return
        if self.mode == "train_step":
            self._accumulate_step(outputs, batch)
        # Record at the epoch's last batch, before the end-of-epoch validation and any checkpoint it triggers.
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        if last:
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # An epoch that ended early (a hook returned -1, max_steps) has not been recorded yet.
        if self._should_record(trainer) and self._recorded_epoch != trainer.current_epoch:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.filename is None:
            return
        folder = callback_dir(trainer, self.name)  # a collective: every rank asks
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            path = unclaimed_path(folder / self.filename, self._written)
            self._save(path)
            self.saved_paths.append(path)

    def state_dict(self) -> dict[str, Any]:
        h = self.history
        return {
            "num_examples": self._n,
            "epochs": h.epochs,
            "correct": h.correct,
            "loss": h.loss,
            "margin": h.margin,
            "prob": h.prob,
            "noisy": self._noisy,
            "noisy_from_datamodule": self._noisy_from_datamodule,
            # a checkpoint taken after the epoch's last batch but before its end hooks (at validation end) resumes
            # into those hooks: the epoch must not be recorded again from empty statistics
            "recorded_epoch": self._recorded_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._n = state_dict["num_examples"]
        self._epochs = [int(e) for e in state_dict["epochs"]]
        self._correct = list(state_dict["correct"].unbind(0))
        self._loss = [row.to(self.loss_dtype) for row in state_dict["loss"].unbind(0)]
        # checkpoints from before margins were recorded: NaN rows (not observed)
        blank = torch.full((len(self._epochs), self._n or 0), float("nan"))
        self._margin = list(state_dict.get("margin", blank).float().unbind(0))
        self._prob = list(state_dict.get("prob", blank).float().unbind(0))
        self._noisy = state_dict["noisy"]
        self._noisy_from_datamodule = state_dict["noisy_from_datamodule"]
        self._recorded_epoch = state_dict.get("recorded_epoch")

    # -------------------------------------------------------------------------------------------- helpers
    def _should_record(self, trainer: Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _resolve_num_examples(self, trainer: Trainer) -> int:
        if self.num_examples is not None:
            return self.num_examples
        dm = trainer.datamodule
        for attr in ("num_train",):
            value = getattr(dm, attr, None) if dm is not None else None
            if isinstance(value, int):
                return value
        loader = trainer.train_dataloader
        for attr in ("dataset_size",):
            if isinstance(getattr(loader, attr, None), int):
                return getattr(loader, attr)
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            try:
                return len(dataset)
            except TypeError:
                pass
        raise RuntimeError(
            "ExampleDynamics cannot tell the training set size: pass `num_examples=N` (dataset indices in [0, N))"
        )

    @staticmethod
    def _datamodule_noisy_mask(trainer: Trainer, n: int) -> Tensor | None:
        mask = getattr(trainer.datamodule, "noisy_mask", None) if trainer.datamodule is not None else None
        if not isinstance(mask, Tensor):
            return None
        if mask.shape != (n,):
            raise RuntimeError(f"`datamodule.noisy_mask` must have shape ({n},) like the training set, got {tuple(mask.shape)}")
        return mask.detach().to("cpu", torch.bool).clone()

    def _parse(self, batch: Any) -> ParsedBatch:
        parsed = unpack_batch(batch, self.batch_adapter)
        if parsed.index is None:
            raise RuntimeError(
                "ExampleDynamics needs the dataset index of every example, got a batch without one: batches must be "
                "(x, y, index[, noisy]) (e.g. datamodules.NoisyBatch) or a dict with an 'index' key; wrap a plain "
                "(x, y) dataset as `memo_callbacks.WithIndex(dataset)` before its DataLoader, or pass `batch_adapter`"
            )
        return parsed

    def _add(self, stats: Tensor, parsed: ParsedBatch, logits: Tensor) -> None:
        y = parsed.y.to(logits.device)
        if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
            raise RuntimeError(
                f"ExampleDynamics expects logits of shape [B, K] with B = {y.shape[0]} examples, "
                f"got {tuple(logits.shape)}"
            )
        correct, loss = example_outcomes(logits.detach(), y, self.loss_fn)
        dynamics_update(stats[:3], parsed.index, correct, loss)
        index = parsed.index.to(stats.device)
        finite = torch.isfinite(logits).all(dim=1)  # a diverged row: NaN margin and probability, never +-inf or 0
        stats[5].index_add_(0, index, torch.where(finite, margins(logits, y), float("nan")).to(stats.device, stats.dtype))
        stats[6].index_add_(0, index, torch.where(finite, assigned_probability(logits, y), float("nan")).to(stats.device, stats.dtype))
        if parsed.noisy is not None:
            index = parsed.index.to(stats.device)
            stats[3].index_add_(0, index, parsed.noisy.to(stats.device, stats.dtype))
            stats[4].index_add_(0, index, torch.ones_like(index, dtype=stats.dtype))

    def _accumulate_step(self, outputs: Any, batch: Any) -> None:
        if not isinstance(outputs, Mapping) or not isinstance(outputs.get(self.logits_key), Tensor):
            got = sorted(map(str, outputs)) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise RuntimeError(
                f"ExampleDynamics(mode='train_step') needs `training_step` to return a dict with the batch's logits "
                f"under {self.logits_key!r}, e.g. `return {{'loss': loss, {self.logits_key!r}: logits.detach()}}`; "
                f"got {got}. Or use mode='eval_pass'."
            )
        if self._stats is None:  # resumed in the middle of an epoch
            self._stats = torch.zeros(_ROWS, self._n, dtype=torch.float64, device=outputs[self.logits_key].device)
        self._add(self._stats, self._parse(batch), outputs[self.logits_key])

    def _forward(self, pl_module: LightningModule, x: Tensor) -> Tensor:
        logits = pl_module(x)
        if not isinstance(logits, Tensor):
            raise RuntimeError(
                f"ExampleDynamics(mode='eval_pass') calls `pl_module(x)` and needs logits [B, K], got "
                f"{type(logits).__name__}; make `forward` return the logits or use mode='train_step'"
            )
        return logits

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """``[5, N]`` this rank's statistics of an eval-mode pass over its share of the training set."""
        stats = torch.zeros(_ROWS, self._n, dtype=torch.float64, device=pl_module.device)
        dm = trainer.datamodule
        x_all, y_all = getattr(dm, "train_x", None), getattr(dm, "train_y", None)
        with preserved_state(pl_module), torch.no_grad(), trainer.precision_plugin.forward_context():
            pl_module.eval()
            if isinstance(x_all, Tensor) and isinstance(y_all, Tensor) and x_all.shape[0] == self._n:
                noisy_all = getattr(dm, "train_noisy", None)
                shard = rank_shard(torch.arange(self._n), trainer.global_rank, trainer.world_size)
                for chunk in shard.split(self.eval_batch_size):
                    idx = chunk.to(x_all.device)
                    noisy = noisy_all[idx] if isinstance(noisy_all, Tensor) else None
                    parsed = ParsedBatch(x_all[idx].to(pl_module.device), y_all[idx], chunk, noisy)
                    self._add(stats, parsed, self._forward(pl_module, parsed.x))
            else:
                loader = trainer.train_dataloader
                if isinstance(loader, (Mapping, list, tuple)):
                    raise RuntimeError("ExampleDynamics supports a single training dataloader, got several")
                for batch in loader:
                    batch = trainer.strategy.batch_to_device(batch)
                    parsed = self._parse(batch)
                    self._add(stats, parsed, self._forward(pl_module, parsed.x))
        return stats

    def _record(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.mode == "eval_pass":
            stats = self._evaluate(trainer, pl_module)
        else:
            stats = self._stats if self._stats is not None else torch.zeros(_ROWS, self._n, dtype=torch.float64)
        stats = all_reduce_sum(trainer, stats).cpu()  # [7, N] summed over ranks, every rank
        correct, loss = dynamics_compute(stats[:3], self.loss_dtype)
        seen = stats[2] > 0
        diverged = int((seen & stats[1].isnan()).sum())  # rank-summed: examples with non-finite logits
        if diverged > 0:
            rank_zero_warn(
                f"ExampleDynamics: epoch {epoch}: {diverged} example(s) have non-finite (NaN or infinite) logits: the "
                "model diverged; they count as not fitted, with NaN loss, margin and probability"
            )
        margin = torch.where(seen, stats[5] / stats[2].clamp_min(1), torch.nan).float()
        prob = torch.where(seen, stats[6] / stats[2].clamp_min(1), torch.nan).float()
        if not self._noisy_from_datamodule and bool(stats[4].sum() > 0):  # the batches carried noisy flags
            seen_noisy = stats[3] > 0
            self._noisy = seen_noisy if self._noisy is None else self._noisy | seen_noisy
        # A resumed run may repeat an epoch: its new row replaces the old and any later one.
        keep = [i for i, e in enumerate(self._epochs) if e < epoch]
        self._epochs = [self._epochs[i] for i in keep] + [epoch]
        self._correct = [self._correct[i] for i in keep] + [correct]
        self._loss = [self._loss[i] for i in keep] + [loss]
        self._margin = [self._margin[i] for i in keep] + [margin]
        self._prob = [self._prob[i] for i in keep] + [prob]
        self._stats = None
        self._recorded_epoch = epoch
        self._log(trainer, epoch)

    def _log(self, trainer: Trainer, epoch: int) -> None:
        h = self.history
        current = h.correct[-1]
        observed = current >= 0
        first = h.first_learned
        metrics: dict[str, float] = {}
        for key, values, valid in (
            ("fit", current == 1, observed),
            ("learned", first >= 0, None),
            ("loss", h.loss[-1].float().nan_to_num(0.0), observed),
        ):
            for group, value in clean_noisy_means(values, h.noisy, valid).items():
                if value == value:  # not NaN: the group is not empty
                    metrics[f"{self.name}/{key}_{group}"] = value
        loss_nan = observed & h.loss[-1].isnan()  # non-finite logits (a diverged model): the mean loss is NaN, not 0
        if bool(loss_nan.any()):
            for group, share in clean_noisy_means(loss_nan, h.noisy, observed).items():
                if share == share and share > 0:
                    metrics[f"{self.name}/loss_{group}"] = float("nan")
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=epoch)
        log_epoch_scalars(trainer, metrics, epoch)  # also under by_epoch/, beside the other callbacks' epoch curves
        add_epoch_layout(trainer, f"memorization: {self.name}", {
            f"{what} (all, clean, noisy)": [f"{self.name}/{key}_{group}" for group in ("all", "clean", "noisy")]
            for key, what in (("fit", "fitted now"), ("learned", "ever fitted"), ("loss", "mean loss"))
        })
        writer = find_tensorboard(trainer) if self.log_histogram and trainer.is_global_zero else None
        if writer is None:
            return
        groups = {"": torch.ones_like(first, dtype=torch.bool)}
        if h.noisy is not None:
            groups |= {"_clean": ~h.noisy, "_noisy": h.noisy}
        for suffix, mask in groups.items():
            values = first[mask & (first >= 0)]
            if values.numel():
                writer.add_histogram(f"{self.name}/first_learned_epoch{suffix}", values, global_step=epoch)

    def _save(self, path: Path) -> None:
        h = self.history
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "epochs": h.epochs,
                "correct": h.correct,
                "loss": h.loss,
                "margin": h.margin,
                "prob": h.prob,
                "noisy": h.noisy,
                "first_learned": h.first_learned,
                "learned_for_good": h.learned_for_good,
                "mode": self.mode,
            },
            path,
        )
