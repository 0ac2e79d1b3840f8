"""Fixtures of the model tests: one intra-op thread, and a stand-in for the LASS engine."""

from __future__ import annotations

import sys
import types
from typing import NamedTuple

import pytest
import torch
from torch import Tensor


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose 100x to spin-waits on a loaded runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeLassResult(NamedTuple):
    critical: Tensor
    iterations: Tensor
    predicted: Tensor
    adversarial: Tensor | None


class FakeLass:
    """Honours the contract of ``memo_callbacks.functional.lass.lass`` with a known, deterministic answer.

    The "adversarial" input is ``x + radius`` (the corner of the box); even positions of the batch are critical.
    Every call is recorded, with the model's training mode and the grad mode seen at the call.
    """

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(
        self, model, x, *, radius, step_size, noise_std, max_iter=100, seed=0, sample_ids=None, clip=None,
        batch_size=None, return_adversarial=False,
    ):  # fmt: skip
        self.calls.append(dict(
            x=x, radius=radius, step_size=step_size, noise_std=noise_std, max_iter=max_iter, seed=seed,
            sample_ids=sample_ids, clip=clip, return_adversarial=return_adversarial, training=model.training,
            x_requires_grad=x.requires_grad,
        ))  # fmt: skip
        n = x.shape[0]
        adversarial = x.detach() + torch.as_tensor(radius, dtype=x.dtype, device=x.device)
        if clip is not None:
            adversarial = torch.maximum(torch.minimum(adversarial, clip[1]), clip[0])
        with torch.no_grad():
            predicted = model(x).argmax(1)
        critical = torch.arange(n, device=x.device) % 2 == 0
        iterations = torch.where(critical, 1, max_iter).to(torch.int64)
        return FakeLassResult(critical, iterations, predicted, adversarial if return_adversarial else None)


@pytest.fixture
def fake_lass(monkeypatch) -> FakeLass:
    """Installs a :class:`FakeLass` as ``memo_callbacks.functional.lass`` (whether or not the real one exists)."""
    fake = FakeLass()
    module = types.ModuleType("memo_callbacks.functional.lass")
    module.lass = fake
    module.LassResult = FakeLassResult
    monkeypatch.setitem(sys.modules, "memo_callbacks.functional.lass", module)
    return fake
