"""Adversarial training with the real LASS engine."""

from __future__ import annotations

import copy
import functools

import pytest
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from helpers import quiet_trainer  # noqa: E402

from datamodules import NoisyDigits  # noqa: E402
from memo_callbacks.functional.lass import LASSConfig, lass  # noqa: E402
from models import CNNClassifier, MLPClassifier, step_seed  # noqa: E402

SHAPE = (1, 8, 8)


trainer = functools.partial(quiet_trainer, limit_val_batches=0)


class ExpectedLoss(pl.Callback):
    """Recomputes each step's loss from a copy of the model and an independent call of the real LASS."""

    def __init__(self, w: float, lass_kwargs: dict, seed: int):
        self.w, self.lass_kwargs, self.seed = w, lass_kwargs, seed
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.critical: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        model = copy.deepcopy(pl_module)
        result = lass(
            model, batch.x.detach().clone(), seed=step_seed(self.seed, trainer.global_step), sample_ids=batch.index,
            return_adversarial=True, **self.lass_kwargs,
        )  # fmt: skip
        assert model.training  # LASS restores the training mode
        self.critical.append(result.critical)
        with torch.no_grad():
            self.expected = (1 - self.w) * F.cross_entropy(model(batch.x), batch.y) + self.w * F.cross_entropy(
                model(result.adversarial), batch.y
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.pairs.append((outputs["loss"].detach(), self.expected))


def test_loss_matches_an_independent_lass_call(tmp_path):
    torch.manual_seed(0)
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, subset=60, batch_size=20, seed=0)
    lass_kwargs = dict(radius=1.0, step_size=0.5, noise_std=0.1, max_iter=10)  # large: most samples flip
    model = MLPClassifier(SHAPE, 10, hidden=(32,), lr=0.1, adversarial_weight=0.5,
                          lass=LASSConfig(unit="input", seed=3, **lass_kwargs))
    check = ExpectedLoss(0.5, lass_kwargs, seed=3)
    t = trainer(tmp_path, callbacks=[check])
    t.fit(model, dm)
    assert len(check.pairs) == 3
    for got, expected in check.pairs:
        torch.testing.assert_close(got, expected)
    critical = torch.cat(check.critical).float().mean()
    assert critical > 0
    assert float(t.callback_metrics["train/critical"]) == pytest.approx(float(critical), abs=1e-6)
    # train/adv_flipped is the share of each step's batch; callback_metrics holds the last step's.
    assert float(t.callback_metrics["train/adv_flipped"]) == pytest.approx(float(check.critical[-1].float().mean()))


def test_adv_flipped_is_logged_every_step(tmp_path):
    """One value per step, equal to an independent LASS call's share of flipped samples in that batch."""
    torch.manual_seed(0)
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, subset=60, batch_size=20, seed=0)
    lass_kwargs = dict(radius=0.1, step_size=0.2, noise_std=0.1, max_iter=5)  # some flip, some do not
    model = MLPClassifier(SHAPE, 10, hidden=(32,), lr=0.1, adversarial_weight=0.5,
                          lass=LASSConfig(unit="input", seed=3, **lass_kwargs))
    check = ExpectedLoss(0.5, lass_kwargs, seed=3)
    logged = []

    class Reader(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(float(trainer.callback_metrics["train/adv_flipped"]))

    trainer(tmp_path, callbacks=[check, Reader()], max_epochs=2).fit(model, dm)
    expected = [float(c.float().mean()) for c in check.critical]
    assert len(logged) == 6 and logged == pytest.approx(expected, abs=1e-6)
    assert len(set(expected)) > 1  # shares vary: the test can tell steps apart


def test_paper_defaults_with_dropout_and_clipping_stay_in_the_box(tmp_path):
    torch.manual_seed(0)
    dm = NoisyDigits(noise="random_labels", subset=40, batch_size=20, seed=0)
    model = CNNClassifier(SHAPE, 10, width=0.05, crop=1, dropout=0.3, adversarial_weight=0.5,
                          lass=LASSConfig(max_iter=5, clip="auto"))
    t = trainer(tmp_path, max_epochs=2)
    t.fit(model, dm)
    assert torch.isfinite(t.callback_metrics["train/loss"])
    x, index = dm.train_x[:20], torch.arange(20)
    adversarial, critical = model.adversarial_examples(x, index)
    radius = 0.3 * dm.pixel_scale / dm.std.view(-1, 1, 1)  # the paper's r = 0.3 pixel units, per channel
    assert critical.shape == (20,) and adversarial.shape == x.shape
    assert ((adversarial - x).abs() <= radius * (1 + 1e-5)).all()
    low, high = dm.input_bounds
    assert (adversarial >= low.view(-1, 1, 1) - 1e-6).all() and (adversarial <= high.view(-1, 1, 1) + 1e-6).all()
    again, _ = model.adversarial_examples(x, index)
    torch.testing.assert_close(again, adversarial)  # seeded by (seed, step) and the indices: reproducible
