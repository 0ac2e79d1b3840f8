"""Loss sensitivity of every training example and its Gini coefficient (Arpit et al. 2017, Figures 3 and 4)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from memo_callbacks.functional.gini import gini
from memo_callbacks.functional.sensitivity import (
    Norm,
    PerExampleLoss,
    check_norm,
    per_example_cross_entropy,
    per_example_norm,
)
from memo_callbacks.functional.unrolled import SGDRule, SGDTrajectoryRecorder, unrolled_sensitivity
from datamodules.checks import check_bool, check_callable, check_int
from memo_callbacks.utilities import BatchAdapter, all_reduce_sum, find_tensorboard, preserved_state, rank_shard, unpack_batch
from memo_callbacks.utilities.files import callback_dir, check_plain_name, unclaimed_path
from memo_callbacks.utilities.tensorboard import add_epoch_layout, log_epoch_scalars
from memo_callbacks.utilities.with_index import find_noisy_mask

Mode = Literal["proxy", "unrolled"]


class LossSensitivity(Callback):
    """Per-example loss sensitivity ``g_bar_x``, its Gini coefficient and the per-class matrix, every epoch.

    Two modes:

    - ``"proxy"``: ``||d loss(x) / dx||`` at the current parameters, read from the training step's *own* backward
      pass, so it costs almost nothing (one extra input-gradient product in the first layer). In
      ``on_train_batch_start`` the batch's input tensor (``batch.x`` as read by :func:`unpack_batch`) is made to
      require grad: **the LightningModule must feed that very tensor to its network** (as ``self(batch.x)`` does).
      The gradient of the mean minibatch loss w.r.t. ``x_i`` is ``(1/B) d loss_i / dx_i``, so it is multiplied by the
      batch size ``B`` (``loss_reduction="mean"``), by ``accumulate_grad_batches`` (Lightning divides the loss by it)
      and divided by the AMP ``GradScaler`` scale when one is in use; the result is each example's own proxy when
      the network treats examples independently (train-mode BatchNorm couples them slightly). ``g_bar_x`` is the mean
      over the epoch's draws of ``x``. This is a *proxy*: it has no cross-example terms (see the paper notes).
    - ``"unrolled"``: the paper's definition, ``g_x^t = ||dL_t / dx||`` through the SGD updates in which ``x`` took
      part (:func:`~memo_callbacks.functional.unrolled_sensitivity`). At the end of each measured epoch the last
      ``window`` SGD steps of the run are replayed in eval mode, *whatever the epoch structure*: a window longer than
      an epoch reaches back into earlier (also unmeasured) epochs, and before ``window`` steps have been taken it is
      every step since the start. ``L_t`` is differentiated at every ``measure_every``-th step of the window. The
      replay needs the parameters and momentum buffers at the window start, then every step's minibatch indices and
      learning rate, and the inputs by dataset index. The epoch ends are known in advance (``num_training_batches``
      steps per epoch), so a snapshot is taken exactly ``window`` steps before each planned replay, and the steps are
      recorded from the oldest held snapshot on (:class:`~memo_callbacks.functional.SGDTrajectoryRecorder`); windows
      of several measured epochs overlap when ``window`` exceeds ``every_n_epochs`` epochs, so up to
      ``ceil(window / (every_n_epochs * steps_per_epoch)) + 1`` snapshots are held at once, never more than the
      replay's own ``window`` parameter copies (the alternative, replaying forward from an older snapshot, would be
      cheaper in memory but not exact for a network with dropout or batch-norm, whose replay runs in eval mode). If
      the epoch length changes during training, a window may come out shorter than ``window`` steps: a warning says
      so. Memory: the accumulator ``M * N_seen * D`` floats (``M`` measured steps, ``C`` times that with
      ``per_class``; bounded by ``max_buffer_bytes`` through chunking), ``window`` copies of the parameters during
      the replay, the held snapshots, and an ``[N, D]`` input buffer. A checkpoint holds the snapshots, the
      recorded steps (every rank's) and the inputs drawn in them, so a resumed run replays exactly the same window. Time: one batched reverse sweep, about ``window * M / 2`` example-row products (18 s for the
      paper's Figure 3 setting on 2 CPU cores, see ``benchmarks/sensitivity.md``). Needs ``torch.optim.SGD``, no
      gradient accumulation, inputs that do not change between draws (no random augmentation), and a
      ``pl_module.forward(x)`` that returns logits. Under DDP the windows of all ranks are gathered and each rank
      replays the global steps (the mean loss over the union of the ranks' minibatches is what DDP's averaged
      gradient descends), then computes its share of the measured steps.

    Per-example sums and counts are addressed by dataset index and summed over DDP ranks at epoch end. A padded
    duplicate from a distributed sampler is a real extra draw: it adds its value to the sum *and* one to the count,
    so the mean stays the mean over draws (for a duplicate within one step both copies carry the identical value and
    the mean is unchanged). Examples never drawn in an epoch are left out of the proxy's Gini coefficient; in
    unrolled mode every training example counts (with 0 if it took no part in the window).

    At every measured epoch end it logs ``{prefix}/gini`` (and ``{prefix}/gini_clean``, ``{prefix}/gini_noisy``
    when ``trainer.datamodule.noisy_mask`` exists, or the training dataset is a :class:`~memo_callbacks.WithIndex`
    with ``noisy`` flags), the same Gini coefficients against the epoch as ``by_epoch/{prefix}/gini*`` (TensorBoard,
    ``step`` = epoch), histograms ``{prefix}/g_bar`` (and ``{prefix}/g_bar_clean``, ``{prefix}/g_bar_noisy``) and,
    in unrolled mode with
    ``per_class``, the matrix ``{prefix}/per_class`` as a heatmap with a log colour scale, and saves the tensors to
    ``{log_dir}/{prefix}/epoch=E.pt``: ``log_dir`` is the logger's log folder, or the Trainer's ``default_root_dir``
    without a logger (Lightning's default for that is the current directory, as for its checkpoints: pass
    ``default_root_dir`` to put the files elsewhere). A file there that this callback did not write in this run is
    never overwritten: the new one is written as ``epoch=E-v1.pt`` (``-v2``, ...) with a warning. ``saved_paths``
    lists the files written in this run. Run-long sums (``total_sum``, ``total_count``) and the per-epoch ``history``
    survive a checkpoint resume.

    Args:
        mode: ``"proxy"`` or ``"unrolled"``.
        norm: ``"l1"`` (the paper's), ``"l2"`` or ``"linf"``.
        loss_reduction: how the training step reduces its per-example losses, ``"mean"`` or ``"sum"`` (proxy).
        window: unrolled: number of last SGD steps (of the run, across epochs) replayed at a measured epoch's end.
        measure_every: unrolled: differentiate ``L_t`` at every ``measure_every``-th step of the window.
        every_n_epochs: measure and log every this many epochs. Proxy: nothing is collected in the epochs between
            (the input gradients are not even computed there), so ``g_bar`` is always one epoch's mean. Unrolled: the
            window of the last ``window`` steps may reach back into the epochs between (they are recorded then).
        every_n_steps: proxy: read the input gradients on every n-th training batch of a measured epoch only
            (batch indices 0, n, 2n, ... of the epoch); the input gradient through the first layer is then paid on
            one batch in n (on CNNs it adds 21-41% to a training step, see BENCHMARKS.md). The sums and counts stay
            exact: ``g_bar_x`` is the mean over the *measured* presentations of ``x``, and an example presented only
            on unmeasured batches is left out of that epoch like an undrawn one. 1 (default): every batch.
        per_class: unrolled: also compute the per-class matrix (``C`` times the cost).
        num_classes: number of classes for ``per_class`` (default: the datamodule's ``num_classes`` or max label + 1).
        num_examples: training set size; default from ``trainer.datamodule.num_train``, else the length of the
            training dataloader's dataset, else grown on demand (largest index seen).
        loss_fn: unrolled: per-example loss ``(logits, y) -> [B]`` matching the training loss.
        batch_adapter: reads ``(x, y, index, noisy)`` from unusual batches (see :func:`unpack_batch`).
        max_buffer_bytes: unrolled: memory budget of the gradient accumulator.
        prefix: tag prefix, and the name of the callback's folder under the log folder (a plain name).

    Example:
        >>> cb = LossSensitivity(mode="unrolled", window=500, measure_every=2)
        >>> cb.state_key
        "LossSensitivity{'mode': 'unrolled', 'norm': 'l1', 'prefix': 'sensitivity'}"
    """

    def __init__(
        self,
        mode: Mode = "proxy",
        norm: Norm = "l1",
        loss_reduction: Literal["mean", "sum"] = "mean",
        window: int = 500,
        measure_every: int = 2,
        every_n_epochs: int = 1,
        every_n_steps: int = 1,
        per_class: bool = False,
        num_classes: int | None = None,
        num_examples: int | None = None,
        loss_fn: PerExampleLoss = per_example_cross_entropy,
        batch_adapter: BatchAdapter | None = None,
        max_buffer_bytes: int = 2**28,
        prefix: str = "sensitivity",
    ) -> None:
        if mode not in ("proxy", "unrolled"):
            raise ValueError(f"`mode` must be 'proxy' or 'unrolled', got {mode!r}")
        check_norm(norm)
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"`loss_reduction` must be 'mean' or 'sum', got {loss_reduction!r}")
        for name, value in (("window", window), ("measure_every", measure_every), ("every_n_epochs", every_n_epochs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        check_int(every_n_steps, "every_n_steps", minimum=1)
        if every_n_steps != 1 and mode != "proxy":
            raise ValueError(f"`every_n_steps` applies to mode='proxy' only, got every_n_steps={every_n_steps} with mode={mode!r}")
        check_bool(per_class, "per_class")
        if per_class and mode != "unrolled":
            raise ValueError("`per_class` needs mode='unrolled' (under the proxy the matrix is diagonal), got mode='proxy'")
        if num_examples is not None and (not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1):
            raise ValueError(f"`num_examples` must be a positive integer or None, got {num_examples!r}")
        check_int(num_classes, "num_classes", minimum=1, allow_none=True)
        check_callable(loss_fn, "loss_fn", allow_none=False)
        check_callable(batch_adapter, "batch_adapter")
        check_int(max_buffer_bytes, "max_buffer_bytes", minimum=1)
        check_plain_name(prefix, "prefix")
        self.mode = mode
        self.norm = norm
        self.loss_reduction = loss_reduction
        self.window = window
        self.measure_every = measure_every
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.per_class = per_class
        self.num_classes = num_classes
        self.num_examples = num_examples
        self.loss_fn = loss_fn
        self.batch_adapter = batch_adapter
        self.max_buffer_bytes = max_buffer_bytes
        self.prefix = prefix

        self._sum = torch.zeros(0, dtype=torch.float64)  # this epoch, this rank
        self._count = torch.zeros(0, dtype=torch.int64)
        self.total_sum = torch.zeros(0, dtype=torch.float64)  # the whole run, all ranks
        self.total_count = torch.zeros(0, dtype=torch.int64)
        self.history: list[dict[str, float]] = []
        self._partial_loaded = False
        self.last_g_bar: Tensor | None = None
        self.last_class_matrix: Tensor | None = None
        self._x: Tensor | None = None
        self._index: Tensor | None = None
        self._recorder: SGDTrajectoryRecorder | None = None
        self._inputs: Tensor | None = None  # [N, ...] this rank's drawn inputs by dataset index (unrolled)
        self._targets: Tensor | None = None
        self._filled: Tensor | None = None
        #: The files written in this run (``epoch=E.pt``, or a ``-vN`` variant where that name was taken).
        self.saved_paths: list[Path] = []
        self._written: set[Path] = set()
        self._origin: int | None = None  # the global step of the run's first snapshot
        self._loaded_window: dict[str, Any] | None = None  # restored in on_fit_start, once the recorder exists

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode, norm=self.norm, prefix=self.prefix)

    # ------------------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.saved_paths, self._written = [], set()  # a new run: files of earlier runs are never overwritten
        if self.mode == "unrolled" and trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"mode='unrolled' replays one minibatch per SGD step, got accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}; use mode='proxy' or no gradient accumulation"
            )
        if self.num_examples is None:
            dm = getattr(trainer, "datamodule", None)
            size = getattr(dm, "num_train", None) if dm is not None else None
            if isinstance(size, int):
                self.num_examples = size
        if self.num_examples is not None:
            self._grow(self.num_examples)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.num_examples is not None:
            return
        dataset = getattr(trainer.train_dataloader, "dataset", None)  # as ExampleDynamics reads the size
        try:
            size = len(dataset) if dataset is not None else None
        except TypeError:  # an iterable dataset without a length: grow on demand
            size = None
        if size:
            self._grow(size)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._partial_loaded and trainer.global_rank != 0:  # the loaded partial sums are already all ranks'
            self._sum.zero_()
            self._count.zero_()
        self._partial_loaded = False
        if self.mode == "unrolled":
            if len(trainer.optimizers) != 1:
                raise ValueError(f"mode='unrolled' needs exactly one optimizer, got {len(trainer.optimizers)}")
            self._recorder = SGDTrajectoryRecorder(pl_module, trainer.optimizers[0])  # raises for non-SGD
            if self._loaded_window is not None:
                self._restore_window(trainer, pl_module, self._loaded_window)
            self._loaded_window = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        parsed = unpack_batch(batch, self.batch_adapter)
        if parsed.index is None:
            raise ValueError(
                "LossSensitivity needs the dataset index of every example, got a batch without one: batches must be "
                "(x, y, index[, noisy]) or a dict with 'index'; wrap a plain (x, y) dataset as "
                "`memo_callbacks.WithIndex(dataset)` before its DataLoader, or pass `batch_adapter`"
            )
        if not parsed.x.is_floating_point():
            raise TypeError(f"LossSensitivity needs floating-point inputs, got batch.x of dtype {parsed.x.dtype}")
        index = parsed.index.detach().long()
        if self.num_examples is None:  # size unknown: grow on demand (a host sync, so only when needed)
            self._grow(int(index.max()) + 1)
        if self.mode == "unrolled":
            self._record(trainer, parsed.x, parsed.y, index, batch_idx)
            return
        if not self._measured_epoch(trainer):
            return  # nothing is collected between measured epochs: g_bar is always one epoch's mean
        if batch_idx % self.every_n_steps != 0:
            return  # an unmeasured batch: no input gradient at all
        if not parsed.x.is_leaf:
            raise ValueError("LossSensitivity(mode='proxy') needs batch.x to be a leaf tensor (a plain input batch)")
        self._x = parsed.x.requires_grad_(True)
        self._index = index

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode != "proxy" or self._x is None:
            return
        x, index = self._x, self._index
        self._x = self._index = None
        if x.grad is None:
            raise RuntimeError(
                "LossSensitivity(mode='proxy') found no gradient on batch.x: the LightningModule must compute its "
                "loss from the batch's own input tensor (e.g. `self(batch.x)`), without detaching or copying it"
            )
        scale = float(trainer.accumulate_grad_batches)
        if self.loss_reduction == "mean":
            scale *= x.shape[0]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            scale /= float(scaler.get_scale())
        values = per_example_norm(x.grad.detach().float(), self.norm) * scale  # [B]
        x.grad = None
        self._add(index, values.to(torch.float64), torch.ones_like(index))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._measured_epoch(trainer):
            return
        matrix = None
        if self.mode == "unrolled":
            if self._recorder is None or not self._recorder.started:
                return
            replayed, matrix = self._replay(trainer, pl_module)
            if not replayed:
                return
        self._finish_epoch(trainer, pl_module, matrix)

    # ------------------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "sum": self._sum.cpu(),
            "count": self._count.cpu(),
            "total_sum": self.total_sum.cpu(),
            "total_count": self.total_count.cpu(),
            "history": list(self.history),
            "window": self._window_state(None),
        }

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The current epoch's partial sums live on every rank, but only rank 0's state is written: store their sum
        # over ranks (every rank saves, so every rank takes part in the reduction); on load, rank 0 alone keeps it.
        # The same holds for the recorded window: every rank's minibatch indices and inputs are merged.
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None and trainer.world_size > 1:
            state["sum"] = all_reduce_sum(trainer, self._sum).cpu()
            state["count"] = all_reduce_sum(trainer, self._count).cpu()
            if self.mode == "unrolled":
                state["window"] = self._window_state(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        device = self._sum.device
        self._sum = state_dict["sum"].to(device)
        self._count = state_dict["count"].to(device)
        self._partial_loaded = True
        self.total_sum = state_dict["total_sum"].to(device)
        self.total_count = state_dict["total_count"].to(device)
        self.history = list(state_dict["history"])
        self._loaded_window = state_dict.get("window")

    # ------------------------------------------------------------------------------------------------ internals
    def _measured_epoch(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _grow(self, n: int) -> None:
        """Make the per-example tensors hold at least ``n`` examples (new entries zero)."""
        for name in ("_sum", "_count", "total_sum", "total_count"):
            t = getattr(self, name)
            if t.numel() < n:
                setattr(self, name, torch.cat([t, t.new_zeros(n - t.numel())]))

    def _add(self, index: Tensor, values: Tensor, counts: Tensor) -> None:
        device = index.device
        if self._sum.device != device:
            self._sum, self._count = self._sum.to(device), self._count.to(device)
        self._sum.index_add_(0, index, values)
        self._count.index_add_(0, index, counts)

    def _snapshot_due(self, trainer: pl.Trainer, batch_idx: int, steps_per_epoch: int) -> bool:
        """Whether a snapshot must be taken before this step: exactly ``window`` steps before a planned replay (the
        end of a measured epoch, ``steps_per_epoch`` steps each), or now if a replay's window has begun and no
        snapshot is held (the run's first steps: the window is then every step since the start)."""
        step, epoch, every = trainer.global_step, trainer.current_epoch, self.every_n_epochs
        epoch_start = step - batch_idx
        e = epoch + (-(epoch + 1)) % every  # the first measured epoch from this one on
        first = True
        while True:
            start = epoch_start + (e - epoch + 1) * steps_per_epoch - self.window
            if start > step:
                return False
            if start == step or (first and not self._recorder.started):
                return True
            first = False
            e += every

    def _record(self, trainer: pl.Trainer, x: Tensor, y: Tensor, index: Tensor, batch_idx: int) -> None:
        assert self._recorder is not None
        total = trainer.num_training_batches
        if not math.isfinite(total):
            raise ValueError("LossSensitivity(mode='unrolled') needs a training dataloader with a length")
        step = trainer.global_step
        if self._snapshot_due(trainer, batch_idx, int(total)):
            self._recorder.snapshot(step)
            if self._origin is None:
                self._origin = step
        if not self._recorder.started:
            return
        self._recorder.record(step, index)
        n = self._sum.numel()  # already grown to this batch's indices
        if self._inputs is None or self._inputs.shape[0] < n:  # (re)allocate, keeping the rows already held
            old = (self._inputs, self._targets, self._filled)
            self._inputs = x.new_zeros(n, *x.shape[1:])
            self._targets = y.new_zeros(n)
            self._filled = torch.zeros(n, dtype=torch.bool, device=x.device)
            if old[0] is not None:
                m = old[0].shape[0]
                self._inputs[:m], self._targets[:m], self._filled[:m] = old
        x, y = x.detach(), y.detach()
        again = self._filled[index]
        if bool(again.any()) and not torch.equal(self._inputs[index[again]], x[again]):
            raise ValueError(
                "LossSensitivity(mode='unrolled') needs each example's input to be the same at every draw "
                "(no random augmentation): a re-drawn example came with a different input"
            )
        self._inputs[index], self._targets[index], self._filled[index] = x, y, True

    def _gather_steps(self, trainer: pl.Trainer | None, batch_indices: list[Tensor]) -> list[Tensor]:
        """The global steps: every rank's minibatch of a step concatenated (a collective under DDP)."""
        if trainer is None or trainer.world_size == 1 or not batch_indices:
            return batch_indices
        device = self._inputs.device if self._inputs is not None else batch_indices[0].device
        widest = max(b.numel() for b in batch_indices)
        width = int(trainer.strategy.reduce(torch.tensor(widest, device=device), reduce_op="max"))
        padded = torch.full((len(batch_indices), width), -1, dtype=torch.long, device=device)
        for s, b in enumerate(batch_indices):
            padded[s, : b.numel()] = b
        steps = trainer.strategy.all_gather(padded)  # [W, K, width]
        out = []
        for s in range(len(batch_indices)):
            b = steps[:, s].flatten()
            out.append(b[b >= 0])
        return out

    def _gather_inputs(self, trainer: pl.Trainer | None) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs, targets and the drawn mask by dataset index, merged over ranks (a collective under DDP)."""
        assert self._inputs is not None and self._targets is not None and self._filled is not None
        if trainer is None or trainer.world_size == 1:
            return self._inputs, self._targets, self._filled
        inputs = trainer.strategy.all_gather(self._inputs)  # [W, N, ...]
        targets = trainer.strategy.all_gather(self._targets)  # [W, N]
        filled = trainer.strategy.all_gather(self._filled)  # [W, N]
        owner = filled.long().argmax(0)  # a rank that saw each example (inputs are identical across draws)
        ar = torch.arange(owner.numel(), device=owner.device)
        return inputs[owner, ar], targets[owner, ar], filled.any(0)

    def _window_state(self, trainer: pl.Trainer | None) -> dict[str, Any] | None:
        """What a resumed run needs to replay the same windows: the snapshots, the (global) recorded steps and the
        inputs drawn in them. With ``trainer`` under DDP every rank's steps and inputs are merged (a collective)."""
        if self._recorder is None or not self._recorder.started:
            return None
        rec = self._recorder.state_dict()
        order = sorted(rec["steps"])
        merged = self._gather_steps(trainer, [self._recorder.steps[s][0] for s in order])
        rec["steps"] = {s: (b.cpu(), rec["steps"][s][1]) for s, b in zip(order, merged)}
        state: dict[str, Any] = {"recorder": rec, "origin": self._origin, "index": None}
        if self._inputs is not None:
            inputs, targets, filled = self._gather_inputs(trainer)
            index = filled.nonzero().flatten()
            state.update(index=index.cpu(), inputs=inputs[index].cpu(), targets=targets[index].cpu(),
                         size=int(inputs.shape[0]))
        return state

    def _restore_window(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: dict[str, Any]) -> None:
        assert self._recorder is not None
        device = pl_module.device
        self._recorder.load_state_dict(state["recorder"], device)
        self._origin = state["origin"]
        if trainer.global_rank != 0:  # the loaded steps are already every rank's: rank 0 alone contributes them
            self._recorder.steps = {s: (i[:0], lr) for s, (i, lr) in self._recorder.steps.items()}
        if state["index"] is not None:
            index = state["index"].to(device)
            self._inputs = state["inputs"].new_zeros(state["size"], *state["inputs"].shape[1:]).to(device)
            self._targets = state["targets"].new_zeros(state["size"]).to(device)
            self._filled = torch.zeros(state["size"], dtype=torch.bool, device=device)
            self._inputs[index] = state["inputs"].to(device)
            self._targets[index] = state["targets"].to(device)
            self._filled[index] = True

    def _replay(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[bool, Tensor | None]:
        """Replay the last ``window`` steps; returns whether there was a window, and the per-class matrix."""
        assert self._recorder is not None
        end = trainer.global_step
        wanted = end - self.window
        starts = [s for s in self._recorder.snapshot_steps if wanted <= s < end]
        if not starts or self._inputs is None:
            return False, None
        start = starts[0]
        if start > max(wanted, self._origin if self._origin is not None else wanted):
            rank_zero_warn(
                f"LossSensitivity(mode='unrolled'): the window at step {end} holds {end - start} steps, not "
                f"`window`={self.window} (the epoch length changed since the snapshot was planned)"
            )
        window = self._recorder.window(start, end)
        batch_indices = self._gather_steps(trainer, window.batch_indices)
        inputs, targets, _ = self._gather_inputs(trainer)
        k = len(batch_indices)
        measured = list(range(1, k, self.measure_every)) or [0]
        mine = rank_shard(torch.tensor(measured), trainer.global_rank, trainer.world_size).tolist()
        c = self.num_classes or getattr(getattr(trainer, "datamodule", None), "num_classes", None)
        c = int(c) if c is not None else int(targets.max()) + 1
        n = inputs.shape[0]
        g_sum = torch.zeros(n, dtype=torch.float64, device=inputs.device)
        class_sums = torch.zeros(c, c, dtype=torch.float64, device=inputs.device)
        if mine:
            rule: SGDRule = window.rule
            with preserved_state(pl_module, rng=False), torch.inference_mode(False), torch.enable_grad():
                pl_module.eval()
                out = unrolled_sensitivity(
                    pl_module, window.params, inputs.float(), targets, batch_indices, lr=window.lrs,
                    momentum=rule.momentum, dampening=rule.dampening, nesterov=rule.nesterov,
                    weight_decay=rule.weight_decay, momentum_buffers=window.momentum_buffers, measure_steps=mine,
                    norm=self.norm, loss_fn=self.loss_fn, per_class=self.per_class, num_classes=c,
                    max_buffer_bytes=self.max_buffer_bytes,
                )
            g_sum += out.per_step.sum(0).double()
            if out.class_sums is not None:
                class_sums += out.class_sums.double()
        # Keep what later windows need: the chosen snapshot only if the next planned window starts there too.
        next_start = end + self.every_n_epochs * int(trainer.num_training_batches) - self.window
        self._recorder.drop_before(start if next_start <= start else start + 1)
        if not self._recorder.started:
            self._inputs = self._targets = self._filled = None
        # Every example gets one count per measured step (on one rank: the sums below add the shards).
        self._sum = self._sum.to(inputs.device)
        self._count = self._count.to(inputs.device)
        if self._sum.numel() < n:
            self._grow(n)
        self._sum[:n] += g_sum
        self._count[:n] += len(mine)
        if not self.per_class:
            return True, None
        class_sums = all_reduce_sum(trainer, class_sums)
        # The denominators, as in UnrolledSensitivity.class_matrix: the examples drawn before the last measured
        # step (one drawn only at or after it has no influence on any measured loss).
        last = measured[-1]
        seen = torch.unique(torch.cat(batch_indices[:last])) if last > 0 else targets.new_zeros(0).long()
        sizes = torch.bincount(targets[seen].long(), minlength=c)[:c].to(class_sums)
        return True, class_sums / (len(measured) * sizes.clamp_min(1)).unsqueeze(0)

    def _finish_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, matrix: Tensor | None) -> None:
        n = int(trainer.strategy.reduce(torch.tensor(self._sum.numel(), device=pl_module.device), reduce_op="max"))
        self._grow(n)
        sums = all_reduce_sum(trainer, self._sum).cpu().clone()  # a no-op on one process: do not alias
        counts = all_reduce_sum(trainer, self._count).cpu().clone()
        self.total_sum = self.total_sum.cpu() + sums
        self.total_count = self.total_count.cpu() + counts
        self._sum.zero_()
        self._count.zero_()
        seen = counts > 0
        g_bar = torch.where(seen, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        self.last_g_bar, self.last_class_matrix = g_bar, None if matrix is None else matrix.cpu()
        if not bool(seen.any()):
            return
        diverged = int((seen & ~torch.isfinite(g_bar)).sum())  # rank-summed: every rank agrees
        if diverged > 0:
            rank_zero_warn(
                f"LossSensitivity: epoch {trainer.current_epoch}: {diverged} example(s) have non-finite (NaN or "
                f"infinite) loss gradients: the model diverged; {self.prefix}/gini is logged as NaN"
            )
        record = {"epoch": float(trainer.current_epoch), "gini": _gini_or_nan(g_bar[seen])}
        noisy = find_noisy_mask(trainer)  # the datamodule's noisy_mask, else that of a WithIndex training dataset
        if isinstance(noisy, Tensor) and noisy.numel() == n:
            noisy = noisy.cpu().bool()
            for name, part in (("gini_clean", seen & ~noisy), ("gini_noisy", seen & noisy)):
                if bool(part.any()):
                    record[name] = _gini_or_nan(g_bar[part])
        self.history.append(record)
        for name, value in record.items():
            if name != "epoch":
                pl_module.log(f"{self.prefix}/{name}", value, on_step=False, on_epoch=True, sync_dist=False)
        scalars = {f"{self.prefix}/{name}": value for name, value in record.items() if name != "epoch"}
        log_epoch_scalars(trainer, scalars, trainer.current_epoch)  # by_epoch/sensitivity/gini*, step = epoch
        add_epoch_layout(trainer, f"memorization: {self.prefix}", {"Gini of g_bar": sorted(scalars)})
        folder = callback_dir(trainer, self.prefix)  # a broadcast under DDP: every rank must ask
        if trainer.is_global_zero:
            mask = noisy if isinstance(noisy, Tensor) and noisy.numel() == n else None
            self._write(trainer, folder, g_bar, counts, self.last_class_matrix, mask)

    def _write(
        self, trainer: pl.Trainer, folder: Path, g_bar: Tensor, counts: Tensor, matrix: Tensor | None,
        noisy: Tensor | None = None,
    ) -> None:
        step = trainer.global_step
        writer = find_tensorboard(trainer)
        if writer is not None:
            writer.add_histogram(f"{self.prefix}/g_bar", g_bar[counts > 0], step)
            if noisy is not None:  # [N] bool: g_bar of the clean and of the noisy examples drawn this epoch
                for part, mask in (("clean", ~noisy), ("noisy", noisy)):
                    if bool((mask & (counts > 0)).any()):
                        writer.add_histogram(f"{self.prefix}/g_bar_{part}", g_bar[mask & (counts > 0)], step)
            if matrix is not None:
                writer.add_figure(f"{self.prefix}/per_class", _heatmap(matrix), step)
        folder.mkdir(parents=True, exist_ok=True)
        path = unclaimed_path(folder / f"epoch={trainer.current_epoch}.pt", self._written)
        torch.save(
            {"epoch": trainer.current_epoch, "mode": self.mode, "norm": self.norm, "g_bar": g_bar, "count": counts,
             "class_matrix": matrix},
            path,
        )
        self.saved_paths.append(path)


def _heatmap(matrix: Tensor):
    """The per-class matrix as a matplotlib figure with a log colour scale (no pyplot, no global backend)."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    m = matrix.double().numpy()
    positive = m[m > 0]
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    im = ax.imshow(m, cmap="viridis", norm=norm)
    ax.set_xlabel("class j of the examples x")
    ax.set_ylabel("class i of the loss L_t(y=i)")
    ax.set_title("|dL_t(y=i)/dx|, mean over t and x")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def _gini_or_nan(values: Tensor) -> float:
    """The Gini coefficient, or NaN when some value is not finite (a diverged model: no result to report)."""
    return gini(values) if bool(torch.isfinite(values).all()) else float("nan")
