"""Shared by Figures 3 and 4: the paper's loss-sensitivity protocol, through the library's functional API or
through a Trainer with the :class:`~memo_callbacks.LossSensitivity` callback (``engine="callback"``).

The authors' procedure (see ``../shared/paper-notes.md``, "Loss sensitivity"): train a small MLP with plain SGD on
1,000 examples for ``T`` steps, minibatches of 32 drawn with replacement; over the last 500 steps, at every 2nd step
``t``, differentiate the minibatch loss ``L_t`` (its own inputs cut from the graph) with respect to every training
input through the unrolled SGD updates; ``g_bar_x`` is the mean over those steps of ``||dL_t/dx||_1``. Each ``T`` is a
separate run. The same runs also give the input-gradient *proxy* ``||d loss(x)/dx||_1`` at the measured steps, so
the two can be compared honestly.

The two engines run the same trajectory (the same Glorot-uniform initialisation and minibatches from one seeded
generator) and give the same numbers: the callback engine is one epoch of ``T`` steps whose batch sampler draws the
minibatches, and ``LossSensitivity(mode="unrolled", window=...)`` replays the last ``window`` steps at its end.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules import NoisyDataModule
from memo_callbacks import LossSensitivity
from memo_callbacks.functional import SGDWindowRecorder, input_gradient_sensitivity, unrolled_sensitivity
from memo_callbacks.functional.sensitivity import Norm
from memo_callbacks.functional.unrolled import UnrolledSensitivity
from models import MLP

Engine = Literal["functional", "callback"]


@dataclass
class SensitivityRun:
    g_bar: torch.Tensor  # [N] the unrolled loss sensitivity, mean over the measured steps
    class_matrix: torch.Tensor | None  # [C, C] the per-class matrix (per_class), else None
    proxy: torch.Tensor  # [N] mean over the measured steps of the input-gradient proxy
    train_acc: float
    unrolled: UnrolledSensitivity | None = None  # the functional engine's full result (per step)


def _network(dm: NoisyDataModule, hidden: tuple[int, ...], g: torch.Generator) -> MLP:
    """The MLP with Glorot-uniform weights from the local generator (zero biases): no global RNG."""
    net = MLP(dm.train_x[0].numel(), dm.num_classes, hidden=hidden, init="glorot_uniform")
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                bound = (6.0 / (p.shape[0] + p.shape[1])) ** 0.5
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
    return net


def run_protocol(dm: NoisyDataModule, steps: int, *, hidden: tuple[int, ...], lr: float, batch_size: int,
                 window: int, measure_every: int, seed: int, per_class: bool = False, norm: Norm = "l1",
                 engine: Engine = "functional", progress: Callable[[int], None] | None = None) -> SensitivityRun:
    """Train ``steps`` SGD steps on ``dm``'s training set and measure the last ``window`` of them; ``progress``
    (functional engine) is called with the number of steps done after each step."""
    if engine == "callback":
        return _run_callback(dm, steps, hidden=hidden, lr=lr, batch_size=batch_size, window=window,
                             measure_every=measure_every, seed=seed, per_class=per_class, norm=norm)
    if engine != "functional":
        raise SystemExit(f"--engine must be 'functional' or 'callback', got {engine!r}")
    x, y = dm.train_x, dm.train_y
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    net = _network(dm, hidden, g)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    recorder = SGDWindowRecorder(net, opt)
    start = max(0, steps - window)
    measured = set(range(1, min(window, steps), measure_every))  # window positions, as the authors: every 2nd step
    proxy_sum = torch.zeros(n)
    for step in range(steps):
        idx = torch.randint(n, (batch_size,), generator=g)  # with replacement, as the authors
        if step == start:
            recorder.start()
        if step >= start:
            recorder.record(idx)
            if step - start in measured:
                proxy_sum += input_gradient_sensitivity(net, x, y, norm=norm).detach()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
        if progress is not None:
            progress(step + 1)
    window_ = recorder.window
    result = unrolled_sensitivity(net, window_.params, x, y, window_.batch_indices, lr=window_.lrs,
                                  measure_steps=sorted(measured), norm=norm, per_class=per_class,
                                  num_classes=dm.num_classes if per_class else None)
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    return SensitivityRun(result.g_bar, result.class_matrix, proxy_sum / max(1, len(measured)), acc, result)


class _Indexed(torch.utils.data.Dataset):
    """``(x_i, y_i, i)`` for the callback, which addresses examples by dataset index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class _Protocol(pl.LightningModule):
    """Plain SGD on the mean minibatch cross-entropy; the input-gradient proxy on the whole training set before the
    measured steps (as :func:`run_protocol` computes it)."""

    def __init__(self, net: MLP, lr: float, x: torch.Tensor, y: torch.Tensor, proxy_steps: set[int], norm: Norm):
        super().__init__()
        self.net, self.lr, self.proxy_steps, self.norm = net, lr, proxy_steps, norm
        self.x, self.y = x, y
        self.proxy_sum = torch.zeros(x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.global_step in self.proxy_steps:
            self.proxy_sum += input_gradient_sensitivity(self.net, self.x, self.y, norm=self.norm).detach()
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _run_callback(dm: NoisyDataModule, steps: int, *, hidden: tuple[int, ...], lr: float, batch_size: int,
                  window: int, measure_every: int, seed: int, per_class: bool, norm: Norm) -> SensitivityRun:
    """:func:`run_protocol` through a Trainer: one epoch of ``steps`` minibatches drawn with replacement, measured by
    ``LossSensitivity(mode="unrolled")`` at the epoch's end."""
    x, y = dm.train_x, dm.train_y
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    net = _network(dm, hidden, g)
    draws = [torch.randint(n, (batch_size,), generator=g).tolist() for _ in range(steps)]  # as run_protocol draws
    start = max(0, steps - window)
    measured = range(1, min(window, steps), measure_every)
    module = _Protocol(net, lr, x, y, {start + t for t in measured}, norm)
    cb = LossSensitivity(mode="unrolled", norm=norm, window=window, measure_every=measure_every, per_class=per_class,
                         num_classes=dm.num_classes, num_examples=n)
    loader = torch.utils.data.DataLoader(_Indexed(x, y), batch_sampler=draws)
    with tempfile.TemporaryDirectory(prefix="memo-sensitivity-") as scratch:  # the callback saves its tensors there
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             use_distributed_sampler=False, callbacks=[cb], default_root_dir=scratch)
        trainer.fit(module, train_dataloaders=loader)
    matrix = None if cb.last_class_matrix is None else cb.last_class_matrix.float()
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    return SensitivityRun(cb.last_g_bar.float(), matrix, module.proxy_sum / max(1, len(measured)), acc)


def fig3_datamodule(dataset: str, data_dir: str, random_inputs: bool, one_class_per_example: bool, examples: int,
                    seed: int) -> NoisyDataModule:
    """The Figure 3 data: the first ``examples`` training images in [0, 1] (MNIST downscaled 28 -> 14), and the
    "random data" variant with U(0, 1) inputs and the real labels."""
    from common import make_datamodule

    kw = dict(subset=examples, normalize=False, one_class_per_example=one_class_per_example, seed=seed)
    if dataset == "mnist":
        kw["downscale"] = 2
    if random_inputs:
        kw.update(input_noise="uniform")
    dm = make_datamodule(dataset, data_dir, "randX" if random_inputs else "real", **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm
