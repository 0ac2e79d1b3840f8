"""Shared by Figures 3 and 4: the paper's loss-sensitivity protocol, through the library's functional API.

The authors' procedure (see ``../shared/paper-notes.md``, "Loss sensitivity"): train a small MLP with plain SGD on
1,000 examples for ``T`` steps, minibatches of 32 drawn with replacement; over the last 500 steps, at every 2nd step
``t``, differentiate the minibatch loss ``L_t`` (its own inputs cut from the graph) with respect to every training
input through the unrolled SGD updates; ``g_bar_x`` is the mean over those steps of ``||dL_t/dx||_1``. Each ``T`` is a
separate run. The same runs also give the input-gradient *proxy* ``||d loss(x)/dx||_1`` at the measured steps, so
the two can be compared honestly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodules import NoisyDataModule
from memo_callbacks.functional import SGDWindowRecorder, input_gradient_sensitivity, unrolled_sensitivity
from memo_callbacks.functional.unrolled import UnrolledSensitivity
from models import MLP


@dataclass
class SensitivityRun:
    unrolled: UnrolledSensitivity
    proxy: torch.Tensor  # [N] mean over the measured steps of the input-gradient proxy
    train_acc: float


def run_protocol(dm: NoisyDataModule, steps: int, *, hidden: tuple[int, ...], lr: float, batch_size: int,
                 window: int, measure_every: int, seed: int, per_class: bool = False) -> SensitivityRun:
    """Train ``steps`` SGD steps on ``dm``'s training set and measure the last ``window`` of them."""
    x, y = dm.train_x, dm.train_y
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    net = MLP(x[0].numel(), dm.num_classes, hidden=hidden, init="glorot_uniform")
    with torch.no_grad():  # Glorot-uniform weights from the local generator (zero biases): no global RNG
        for p in net.parameters():
            if p.dim() > 1:
                bound = (6.0 / (p.shape[0] + p.shape[1])) ** 0.5
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
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
                proxy_sum += input_gradient_sensitivity(net, x, y, norm="l1").detach()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    window_ = recorder.window
    result = unrolled_sensitivity(net, window_.params, x, y, window_.batch_indices, lr=window_.lrs,
                                  measure_steps=sorted(measured), norm="l1", per_class=per_class,
                                  num_classes=dm.num_classes if per_class else None)
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    return SensitivityRun(result, proxy_sum / max(1, len(measured)), acc)


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
