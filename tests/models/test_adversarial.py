"""Adversarial training on LASS samples, against a stand-in LASS that honours the engine's contract (conftest)."""

from __future__ import annotations

import copy
import functools

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from datamodules import NoisyDigits
from memo_callbacks import LASSConfig
from models import CNNClassifier, MLPClassifier, step_seed

SHAPE = (1, 8, 8)


trainer = functools.partial(quiet_trainer, limit_val_batches=0)


class StepRecorder(pl.Callback):
    """Before each step: a copy of the model and the batch; after it: the loss the step optimised."""

    def __init__(self):
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(dict(model=copy.deepcopy(pl_module), batch=batch, global_step=trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1]["loss"] = outputs["loss"].detach()


@pytest.mark.parametrize("w", [0.2, 0.7])
def test_loss_is_the_documented_mix(tmp_path, fake_lass, w):
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, subset=60, batch_size=20, seed=0)
    rec = StepRecorder()
    model = MLPClassifier(SHAPE, 10, hidden=(16,), lr=0.5, adversarial_weight=w, lass=LASSConfig(seed=5))
    trainer(tmp_path, callbacks=[rec]).fit(model, dm)
    unit = dm.pixel_scale / dm.std.view(-1, 1, 1)  # [C, 1, 1]: one pixel unit in model-input units
    assert len(rec.steps) == len(fake_lass.calls) == 3
    for step, call in zip(rec.steps, fake_lass.calls):
        x, y, index = step["batch"].x, step["batch"].y, step["batch"].index
        # LASS got the batch with the paper's parameters in input units, seeded by (seed, step) and the indices.
        torch.testing.assert_close(call["radius"], 0.3 * unit)
        torch.testing.assert_close(call["step_size"], 0.25 * unit)
        torch.testing.assert_close(call["noise_std"], 0.2 * unit)
        assert call["max_iter"] == 100 and call["clip"] is None and call["return_adversarial"]
        assert call["seed"] == step_seed(5, step["global_step"])
        assert torch.equal(call["sample_ids"], index) and torch.equal(call["x"], x)
        # The loss: (1 - w) clean + w adversarial, both with the labels trained on, in training mode.
        before = step["model"]
        expected = (1 - w) * F.cross_entropy(before(x), y) + w * F.cross_entropy(before(x + 0.3 * unit), y)
        torch.testing.assert_close(step["loss"], expected)
    assert len({c["seed"] for c in fake_lass.calls}) == 3  # a fresh noise stream each step


def test_adversarial_metrics_are_logged(tmp_path, fake_lass):
    dm = NoisyDigits(subset=30, batch_size=10, seed=0)
    rec = StepRecorder()
    t = trainer(tmp_path, callbacks=[rec])
    t.fit(MLPClassifier(SHAPE, 10, hidden=(16,), adversarial_weight=0.5), dm)
    m = t.callback_metrics
    assert float(m["train/critical"]) == pytest.approx(15 / 30)  # the fake flags even positions: 5 of each 10
    clean, adversarial = [], []
    for step in rec.steps:
        x, y = step["batch"].x, step["batch"].y
        with torch.no_grad():  # reference values only
            clean.append(F.cross_entropy(step["model"](x), y))
            adversarial.append(F.cross_entropy(step["model"](fake_lass.calls[len(clean) - 1]["x"] + 0.3 / 255 / dm.std),
                                               y))
    assert float(m["train/loss_clean"]) == pytest.approx(float(torch.stack(clean).mean()), rel=1e-5)
    assert float(m["train/loss_adversarial"]) == pytest.approx(float(torch.stack(adversarial).mean()), rel=1e-5)


def test_input_units_clip_and_iterations_pass_through(tmp_path, fake_lass):
    dm = NoisyDigits(subset=20, batch_size=20, seed=0)
    lass = LASSConfig(unit="input", radius=5.0, step_size=1.0, noise_std=0.5, max_iter=7, clip="auto")
    model = CNNClassifier(SHAPE, 10, width=0.05, crop=1, adversarial_weight=0.3, lass=lass)
    trainer(tmp_path).fit(model, dm)
    (call,) = fake_lass.calls
    assert (call["radius"], call["step_size"], call["noise_std"], call["max_iter"]) == (5.0, 1.0, 0.5, 7)
    low, high = dm.input_bounds
    torch.testing.assert_close(call["clip"][0], low.view(-1, 1, 1))
    torch.testing.assert_close(call["clip"][1], high.view(-1, 1, 1))
    assert not call["x_requires_grad"]


def test_explicit_clip_bounds_pass_through(tmp_path, fake_lass):
    dm = NoisyDigits(subset=20, batch_size=20, seed=0)
    lass = LASSConfig(unit="input", radius=5.0, max_iter=3, clip=(-1.0, 2.0))
    trainer(tmp_path).fit(MLPClassifier(SHAPE, 10, hidden=(8,), adversarial_weight=0.3, lass=lass), dm)
    (call,) = fake_lass.calls
    assert call["clip"][0].flatten().tolist() == [-1.0] and call["clip"][1].flatten().tolist() == [2.0]


def test_explicit_std_without_a_datamodule_and_positions_as_sample_ids(tmp_path, fake_lass):
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(12, *SHAPE, generator=g), torch.randint(0, 10, (12,), generator=g)),
                        batch_size=12)  # fmt: skip
    model = MLPClassifier(SHAPE, 10, hidden=(8,), adversarial_weight=0.5, input_std=0.25, pixel_scale=0.5)
    trainer(tmp_path).fit(model, loader)
    (call,) = fake_lass.calls
    torch.testing.assert_close(call["radius"], torch.full((1, 1, 1), 0.3 * 0.5 / 0.25))
    assert torch.equal(call["sample_ids"], torch.arange(12))


def test_pixel_units_without_std_is_a_clear_error(tmp_path, fake_lass):
    loader = DataLoader(TensorDataset(torch.randn(4, *SHAPE), torch.zeros(4, dtype=torch.long)), batch_size=4)
    model = MLPClassifier(SHAPE, 10, hidden=(8,), adversarial_weight=0.5)
    with pytest.raises(ValueError, match=r"`LASSConfig\(unit='pixel'\)` needs the inputs' per-channel std"):
        trainer(tmp_path).fit(model, loader)
    model = MLPClassifier(SHAPE, 10, hidden=(8,), adversarial_weight=0.5, lass=LASSConfig(unit="input", clip="auto"))
    with pytest.raises(ValueError, match=r"`LASSConfig\(clip='auto'\)` needs the valid input range"):
        trainer(tmp_path).fit(model, loader)
    with pytest.raises(ValueError, match=r"`LASSConfig\(unit='pixel'\)` needs"):  # outside a Trainer, too
        MLPClassifier(SHAPE, 10, hidden=(8,), adversarial_weight=0.5).adversarial_examples(torch.zeros(2, *SHAPE))
    assert not fake_lass.calls


def test_no_adversarial_weight_never_runs_lass(tmp_path, fake_lass):
    trainer(tmp_path).fit(MLPClassifier(SHAPE, 10, hidden=(8,)), NoisyDigits(subset=20, batch_size=10, seed=0))
    assert not fake_lass.calls


def test_input_gradient_is_the_clean_terms(tmp_path, fake_lass):
    w = 0.4

    class Hook(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.x = batch.x.requires_grad_(True)
            x = batch.x.detach().clone().requires_grad_(True)
            self.expected = torch.autograd.grad((1 - w) * F.cross_entropy(copy.deepcopy(pl_module)(x), batch.y), x)[0]

        def on_after_backward(self, trainer, pl_module):
            self.got = self.x.grad.clone()

    hook = Hook()
    model = MLPClassifier(SHAPE, 10, hidden=(8,), adversarial_weight=w)
    trainer(tmp_path, callbacks=[hook]).fit(model, NoisyDigits(subset=10, subset_mode="random", batch_size=10,
                                                                     seed=0))
    torch.testing.assert_close(hook.got, hook.expected)


def test_step_seed_needs_an_int():
    with pytest.raises(TypeError, match=r"`seed` must be an int .*got '5'"):
        step_seed("5", 1)
