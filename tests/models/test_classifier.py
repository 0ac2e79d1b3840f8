"""The paper's models as LightningModules: regularisers, optimisation, checkpoints, metrics, memorisation."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules import NoisyDigits
from memo_callbacks import LASSConfig
from models import MLP, CNNClassifier, Crop, GaussianNoise, MemorizationClassifier, MLPClassifier, PaperCNN, WeightedMean

SHAPE = (1, 8, 8)  # NoisyDigits


trainer = quiet_trainer


def tiny_mlp(**kwargs) -> MLPClassifier:
    return MLPClassifier(SHAPE, 10, hidden=(32, 16), **kwargs)


def tiny_cnn(**kwargs) -> CNNClassifier:
    return CNNClassifier(SHAPE, 10, width=0.05, crop=1, **kwargs)


# ------------------------------------------------------------------------------------------------------- regularisers
REGULARISERS = [
    {"dropout": 0.5},
    {"input_dropout": 0.5},
    {"input_noise_std": 0.5},
    {"hidden_noise_std": 0.1},
    {"dropout": 0.3, "input_dropout": 0.2, "input_noise_std": 0.5, "hidden_noise_std": 0.1},
]


@pytest.mark.parametrize("build", [tiny_mlp, tiny_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("regularisers", REGULARISERS, ids=lambda r: "+".join(r))
def test_regularisers_act_in_training_only(build, regularisers):
    torch.manual_seed(0)
    model = build(**regularisers)
    x = torch.randn(16, *SHAPE)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    # In evaluation the regularised network is the plain one: same weights (in order), same logits.
    plain = build()
    plain.load_state_dict(dict(zip(plain.state_dict(), model.state_dict().values())))
    plain.eval()
    torch.testing.assert_close(plain(x), model(x))


def test_without_regularisers_training_forward_is_deterministic():
    model = tiny_mlp().train()
    x = torch.randn(16, *SHAPE)
    assert torch.equal(model(x), model(x))


def test_regulariser_strengths_reach_the_layers():
    net = tiny_mlp(dropout=0.3, input_dropout=0.2, input_noise_std=0.5, hidden_noise_std=0.1).network
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.2, 0.3, 0.3]
    assert [m.std for m in net if type(m).__name__ == "GaussianNoise"] == [0.5, 0.1, 0.1]


# ------------------------------------------------------------------------------------------------------ optimisation
def test_paper_optimiser_defaults():
    mlp = MLPClassifier(SHAPE, 10, hidden=(8,))
    opt = mlp.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.0 and opt.defaults["weight_decay"] == 0.0
    assert mlp.hparams.hidden == (8,)
    assert MLPClassifier(SHAPE, 10).network[1].out_features == 4096  # the paper's 2 x 4096

    cnn = CNNClassifier(SHAPE, 10, width=0.05, crop=1).configure_optimizers()
    opt, sched = cnn["optimizer"], cnn["lr_scheduler"]
    assert opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.9
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.StepLR) and sched["interval"] == "epoch"
    assert sched["scheduler"].step_size == 15 and sched["scheduler"].gamma == 0.5


def test_weight_decay_reaches_the_optimizer_and_shrinks_weights(tmp_path):
    dm = NoisyDigits(subset=32, batch_size=32, seed=0)
    model = tiny_mlp(weight_decay=0.3, lr=0.05, momentum=0.5)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, dm)
    group = t.optimizers[0].param_groups[0]
    assert (group["weight_decay"], group["lr"], group["momentum"]) == (0.3, 0.05, 0.5)
    # Weight decay pulls a parameter whose loss gradient is zero towards 0: lr * wd * w per step.
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.05, weight_decay=0.3)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.05 * 0.3))


class LrRecorder(pl.Callback):
    def __init__(self):
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cnn_learning_rate_halves_every_15_epochs(tmp_path):
    dm = NoisyDigits(subset=8, subset_mode="random", batch_size=8, seed=0)
    rec = LrRecorder()
    trainer(tmp_path, max_epochs=31, limit_val_batches=0, callbacks=[rec]).fit(tiny_cnn(), dm)
    assert rec.lrs == pytest.approx([0.01] * 15 + [0.005] * 15 + [0.0025])


# -------------------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (MLPClassifier, dict(in_shape=SHAPE, num_classes=10, hidden=[12, 6], init="glorot_uniform", dropout=0.25,
                             input_noise_std=0.3, lr=0.02, momentum=0.5, weight_decay=1e-3, lr_halving_epochs=3,
                             adversarial_weight=0.4, lass=LASSConfig(radius=0.5, unit="input", max_iter=7, seed=11))),
        (CNNClassifier, dict(in_shape=SHAPE, num_classes=10, width=0.05, crop=1, input_dropout=0.1,
                             hidden_noise_std=0.2, lr=0.03, lr_halving_epochs=None, input_std=[0.5], pixel_scale=0.01,
                             lass=LASSConfig(clip=(-1.0, 2.0)))),
    ],
    ids=["mlp", "cnn"],
)  # fmt: skip
def test_hyperparameters_round_trip_through_a_checkpoint(tmp_path, cls, kwargs, fake_lass):
    model = cls(**kwargs)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, DataLoader(TensorDataset(torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))), batch_size=8))
    t.save_checkpoint(tmp_path / "model.ckpt")
    restored = cls.load_from_checkpoint(tmp_path / "model.ckpt")
    for key, value in kwargs.items():
        assert restored.hparams[key] == (dataclasses.asdict(value) if key == "lass" else value), key
    assert restored.lass == model.lass == kwargs["lass"]
    assert restored.configure_optimizers().__class__ is model.configure_optimizers().__class__
    for (k, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.randn(4, *SHAPE)
    torch.testing.assert_close(restored.eval()(x), model.eval()(x))


def test_custom_network_restores_with_the_network_passed_again(tmp_path):
    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    model = MemorizationClassifier(build(), lr=0.2, momentum=0.1)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, DataLoader(TensorDataset(torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))), batch_size=8))
    t.save_checkpoint(tmp_path / "model.ckpt")
    assert "network" not in model.hparams
    restored = MemorizationClassifier.load_from_checkpoint(tmp_path / "model.ckpt", network=build())
    assert restored.hparams.lr == 0.2 and restored.hparams.momentum == 0.1
    torch.testing.assert_close(restored.network[1].weight, model.network[1].weight)


# ------------------------------------------------------------------------------------------------------- memorisation
def test_small_mlp_memorises_random_labels(tmp_path):
    torch.manual_seed(0)
    dm = NoisyDigits(noise="random_labels", subset=200, batch_size=50, seed=0)
    model = MLPClassifier(SHAPE, 10, hidden=(256, 256), lr=0.1, momentum=0.9)
    t = trainer(tmp_path, max_epochs=100, check_val_every_n_epoch=100)
    t.fit(model, dm)
    assert dm.noisy_mask.all()
    assert t.callback_metrics["train/acc_noisy"] == 1.0
    assert "train/acc_clean" not in t.callback_metrics  # no clean example: nothing to log
    model.eval()
    with torch.no_grad():
        assert (model(dm.train_x).argmax(1) == dm.train_y).float().mean() == 1.0  # every random label fitted
    assert t.callback_metrics["val/acc"] < 0.3  # and nothing generalises


# ------------------------------------------------------------------------------------------------------------ metrics
class BatchRecorder(pl.Callback):
    """Records, before each training step, the model's training-mode logits on the batch (no regulariser: exact)."""

    def __init__(self):
        self.batches: list[tuple[int, torch.Tensor, tuple]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            self.batches.append((trainer.current_epoch, pl_module(batch.x), batch))


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num.sum()) / float(den.sum())


def test_clean_and_noisy_accuracy_match_a_hand_computation_and_reach_tensorboard(tmp_path):
    torch.manual_seed(0)
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, subset=90, batch_size=20, val_batch_size=64, seed=3)
    model = tiny_mlp(lr=0.5)  # a large step: predictions change between batches, so accumulation is tested
    rec = BatchRecorder()
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    t = trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[rec], log_every_n_steps=1)
    t.fit(model, dm)
    dm.setup("fit")
    original = dm.corruption.clean_targets

    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    logged = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for epoch in range(2):
        rows = [(logits, b) for e, logits, b in rec.batches if e == epoch]
        logits = torch.cat([r[0] for r in rows])
        y, index, noisy = (torch.cat([getattr(b, k) for _, b in rows]) for k in ("y", "index", "noisy"))
        correct = (logits.argmax(1) == y).float()
        expected = {
            "train/acc": float(correct.mean()),
            "train/acc_clean": _ratio(correct * ~noisy, ~noisy),
            "train/acc_noisy": _ratio(correct * noisy, noisy),
            "train/acc_noisy_original": _ratio((logits.argmax(1) == original[index]) * noisy, noisy),
            # mean of batch losses weighted by batch size (the last batch has 10 examples, not 20)
            "train/loss": float(F.cross_entropy(logits, y, reduction="sum")) / len(y),
        }
        assert 0 < noisy.sum() < len(noisy) and len(rows) == 5
        for tag, value in expected.items():
            assert logged[tag][epoch] == pytest.approx(value, abs=1e-6), (tag, epoch)
    # Validation: the whole clean validation set in evaluation mode, batches of unequal size weighted exactly.
    model.eval()
    with torch.no_grad():
        val_logits = model(dm.val_x)
    assert logged["val/acc"][-1] == pytest.approx(float((val_logits.argmax(1) == dm.val_y).float().mean()), abs=1e-6)
    assert logged["val/loss"][-1] == pytest.approx(float(F.cross_entropy(val_logits, dm.val_y)), abs=1e-5)


def test_metrics_restart_every_epoch(tmp_path):
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, subset=40, batch_size=20, seed=0)
    rec = BatchRecorder()
    t = trainer(tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[rec])
    t.fit(tiny_mlp(lr=0.5), dm)
    last = [(logits, b) for e, logits, b in rec.batches if e == 2]
    correct = torch.cat([(logits.argmax(1) == b.y) for logits, b in last]).float()
    assert float(t.callback_metrics["train/acc"]) == pytest.approx(float(correct.mean()), abs=1e-6)


def test_no_noisy_examples_logs_clean_accuracy_only(tmp_path):
    dm = NoisyDigits(subset=40, batch_size=20, seed=0)
    t = trainer(tmp_path, limit_val_batches=0)
    t.fit(tiny_mlp(), dm)
    assert "train/acc_clean" in t.callback_metrics
    assert "train/acc_noisy" not in t.callback_metrics and "train/acc_noisy_original" not in t.callback_metrics


def _dict_collate(rows):
    x, y = torch.utils.data.default_collate(rows)
    return {"image": x, "label": y}


@pytest.mark.parametrize("collate", [None, _dict_collate], ids=["tuple", "dict"])
def test_plain_batches_train_and_validate(tmp_path, collate):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, *SHAPE, generator=g), torch.randint(0, 10, (40,), generator=g))
    loader = DataLoader(data, batch_size=16, collate_fn=collate)
    t = trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*compute.*before.*update.*")
        t.fit(tiny_mlp(), loader, loader)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(t.callback_metrics)
    assert "train/acc_clean" not in t.callback_metrics
    preds = t.predict(tiny_mlp(), loader)
    assert preds[0].shape == (16, 10)


def test_weighted_mean_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    metric = WeightedMean()
    values, weights = [], []
    for n in (5, 1, 17):
        v, w = torch.rand(n, generator=g), (torch.rand(n, generator=g) > 0.5).float()
        metric.update(v, w)
        values.append(v), weights.append(w)
    v, w = torch.cat(values), torch.cat(weights)
    assert float(metric.compute()) == pytest.approx(float((v * w).sum() / w.sum()), rel=1e-6)
    metric.reset()
    with pytest.warns(UserWarning, match="``compute`` method of metric WeightedMean was called before the ``update``"):
        assert math.isnan(float(metric.compute()))


# ------------------------------------------------------------------------------------------------- input-gradient hook
class InputGradient(pl.Callback):
    """What a loss-sensitivity callback does: ask for d loss / d x before the step, read it after backward."""

    def __init__(self):
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.x, self.y = batch.x.requires_grad_(True), batch.y
        x = batch.x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(copy.deepcopy(pl_module)(x), batch.y)
        self.expected = torch.autograd.grad(loss, x)[0]

    def on_after_backward(self, trainer, pl_module):
        self.pairs.append((self.x.grad.clone(), self.expected))


def test_training_inputs_expose_their_gradient_to_callbacks(tmp_path):
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.3, subset=40, batch_size=20, seed=0)
    hook = InputGradient()
    trainer(tmp_path, limit_val_batches=0, callbacks=[hook]).fit(tiny_mlp(lr=0.1), dm)
    assert len(hook.pairs) == 2
    for got, expected in hook.pairs:
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------------------------------------------ bad arguments
BAD = [
    (dict(lr=0), r"`lr` must be > 0, got 0"),
    (dict(lr=float("nan")), r"`lr` must be > 0, got nan"),
    (dict(momentum=1.0), r"`momentum` must be in \[0, 1\), got 1.0"),
    (dict(weight_decay=-0.1), r"`weight_decay` must be >= 0, got -0.1"),
    (dict(lr_halving_epochs=0), r"`lr_halving_epochs` must be a positive integer or None, got 0"),
    (dict(lr_halving_epochs=1.5), r"`lr_halving_epochs` must be a positive integer or None, got 1.5"),
    (dict(adversarial_weight=1.0), r"`adversarial_weight` must be in \[0, 1\), got 1.0"),
    (dict(adversarial_weight=-0.2), r"`adversarial_weight` must be in \[0, 1\), got -0.2"),
    (dict(lass=dict(radius=-1.0)), r"`radius` must be a finite number >= 0, got -1.0"),
    (dict(lass=dict(unit="pixels")), r"`unit` must be one of \('pixel', 'input'\), got 'pixels'"),
    (dict(lass=dict(max_iter=0)), r"`max_iter` must be an int >= 1, got 0"),
    (dict(lr=True), r"`lr` must be > 0, got True"),
    (dict(input_std=0.0), r"`input_std` must be a positive number or a sequence of them .*, got 0.0"),
    (dict(input_std=[0.5, -1.0]), r"`input_std` must be a positive number .*, got \[0.5, -1.0\]"),
    (dict(pixel_scale=0.0), r"`pixel_scale` must be > 0, got 0.0"),
    (dict(dropout=1.0), r"`dropout` must be in \[0, 1\), got 1.0"),
    (dict(input_dropout=-0.1), r"`input_dropout` must be in \[0, 1\), got -0.1"),
    (dict(input_noise_std=-1.0), r"`input_noise_std` must be a finite number >= 0, got -1.0"),
    (dict(hidden_noise_std=float("nan")), r"`hidden_noise_std` must be a finite number >= 0, got nan"),
]


@pytest.mark.parametrize("kwargs, match", BAD, ids=[next(iter(k)) + "=" + repr(next(iter(k.values()))) for k, _ in BAD])
def test_bad_arguments_are_rejected_in_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_mlp(**kwargs)


def test_bad_network_arguments():
    with pytest.raises(ValueError, match=r"`init` must be 'default' or 'glorot_uniform', got 'he'"):
        tiny_mlp(init="he")
    with pytest.raises(ValueError, match=r"`hidden` widths must be >= 1, got \(0,\)"):
        MLPClassifier(SHAPE, 10, hidden=(0,))
    with pytest.raises(ValueError, match=r"`hidden` widths must be >= 1, got \(8.0,\)"):
        MLPClassifier(SHAPE, 10, hidden=(8.0,))
    with pytest.raises(ValueError, match=r"`hidden` widths must be >= 1, got \(8, True\)"):
        MLPClassifier(SHAPE, 10, hidden=(8, True))
    with pytest.raises(ValueError, match=r"`in_shape` must be an int or a sequence of ints such as \(C, H, W\), got '8x8'"):
        MLPClassifier("8x8", 10)
    with pytest.raises(ValueError, match=r"`width` must be a finite number > 0.0, got 0"):
        CNNClassifier(SHAPE, 10, width=0)
    with pytest.raises(ValueError, match=r"`width` must give every layer at least one channel or unit .*width > 1/384.*got 1e-09, which gives 0, 0 and 0"):
        CNNClassifier(SHAPE, 10, width=1e-9)
    with pytest.raises(ValueError, match=r"`width` must give every layer .*got 0.0026041666666666665, which gives 1, 1 and 0"):
        CNNClassifier(SHAPE, 10, width=1 / 384)
    assert CNNClassifier(SHAPE, 10, width=0.003, crop=1).network[1].out_channels == 1  # the smallest width allowed
    with pytest.raises(TypeError, match=r"`width` must be a finite number > 0.0, got True \(bool\)"):
        CNNClassifier(SHAPE, 10, width=True)
    with pytest.raises(ValueError, match=r"`crop` must be an int >= 0, got -3"):
        CNNClassifier(SHAPE, 10, crop=-3)
    with pytest.raises(TypeError, match=r"`crop` must be an int >= 0, got 1.5 \(float\)"):
        CNNClassifier(SHAPE, 10, crop=1.5)
    with pytest.raises(ValueError, match=r"`crop`=4 leaves nothing of a 8x8 image"):
        CNNClassifier(SHAPE, 10, crop=4)
    with pytest.raises(TypeError, match=r"`num_classes` must be an int >= 1, got 10.0 \(float\)"):
        CNNClassifier(SHAPE, 10.0)
    with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 1, got 0"):
        MLPClassifier(SHAPE, 0)
    with pytest.raises(ValueError, match=r"`in_shape` must be \(C, H, W\), got \(1, 8, 8.0\)"):
        CNNClassifier((1, 8, 8.0), 10)
    with pytest.raises(TypeError, match=r"`lass` must be a LASSConfig, a dict of its fields or None, got str"):
        tiny_mlp(lass="paper")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'adversarial_radius'"):
        tiny_mlp(adversarial_radius=0.3)  # the LASS settings live in `lass`
    with pytest.raises(TypeError, match=r"`seed` must be an int .*got 1.5"):
        tiny_mlp(lass=LASSConfig(seed=1.5))
    with pytest.raises(ValueError, match=r"`in_shape` must be \(C, H, W\), got \(8, 8\)"):
        CNNClassifier((8, 8), 10)
    with pytest.raises(TypeError, match=r"`network` must be an nn.Module, got str"):
        MemorizationClassifier("mlp")


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: GaussianNoise(-1.0), ValueError, r"`std` must be a finite number >= 0, got -1.0"),
        (lambda: GaussianNoise("0.1"), TypeError, r"`std` must be a finite number >= 0, got '0.1'"),
        (lambda: Crop(-1), ValueError, r"`pixels` must be an int >= 0, got -1"),
        (lambda: Crop(1.5), TypeError, r"`pixels` must be an int >= 0, got 1.5"),
        (lambda: MLP(784.0, 10), TypeError, r"`in_features` must be an int >= 1, got 784.0"),
        (lambda: MLP(784, 10, dropout=1.0), ValueError, r"`dropout` must be a finite number in \[0.0, 1.0\), got 1.0"),
        (lambda: PaperCNN((3, 32, 32), 10, width=0.001), ValueError, r"`width` must give every layer at least one"),
        (lambda: PaperCNN((3, 32, 32), 10, crop=-3), ValueError, r"`crop` must be an int >= 0, got -3"),
    ],
)
def test_bad_plain_network_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_mlp_accepts_a_flat_input_size():
    model = MLPClassifier(64, 3, hidden=(4,))
    assert model(torch.zeros(2, 64)).shape == (2, 3)
    assert model.network[1].in_features == 64

