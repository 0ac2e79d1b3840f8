"""WithIndex: a user's own LightningModule on plain DataLoaders over (x, y) datasets, with all three callbacks,
checked against per-example references; the items it makes; its errors; the callbacks' errors without it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from datamodules import NoisyDigits
from memo_callbacks import CriticalSampleRatio, ExampleDynamics, LASSConfig, LossSensitivity, WithIndex
from memo_callbacks.functional import lass
from memo_callbacks.utilities import unpack_batch


class UserModule(pl.LightningModule):
    """A user's own module: it knows nothing of indices; it reads x and y from the batch's first two items."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch[0], batch[1]
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch[0], batch[1]
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def slow_gini(g: torch.Tensor) -> float:
    g = g.double()
    return float((g[:, None] - g[None, :]).abs().sum() / (2 * g.numel() * g.sum()))


@pytest.fixture(scope="module")
def digits():
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.3, seed=0)
    dm.setup("fit")
    return dm.train_x[:400], dm.train_y[:400], dm.noisy_mask[:400].bool(), dm.val_x[:100], dm.val_y[:100]


def test_a_users_module_on_plain_dataloaders_with_all_three_callbacks(tmp_path: Path, digits):
    x, y, noisy, vx, vy = digits
    train = DataLoader(WithIndex(TensorDataset(x, y), noisy=noisy), batch_size=len(x), shuffle=True)
    val = DataLoader(TensorDataset(vx, vy), batch_size=50)  # CSR reads plain (x, y) validation items as they are
    config = LASSConfig(radius=0.1, step_size=0.02, noise_std=0.01, unit="input", max_iter=10, seed=1)
    csr = CriticalSampleRatio(num_samples=60, lass=config, train=True, num_train_samples=80)
    sens = LossSensitivity(mode="proxy")
    dyn = ExampleDynamics()
    model = UserModule()
    start = copy.deepcopy(model)
    pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=2, callbacks=[csr, sens, dyn],
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    ).fit(model, train, val)
    model.eval()

    # ExampleDynamics: the last row is the final model's verdict on each example; the noise flags came with batches.
    h = dyn.history
    assert h.correct.shape == (2, len(x))
    assert torch.equal(h.correct[-1], (model(x).argmax(1) == y).to(torch.int8))
    assert torch.equal(h.noisy, noisy)

    # LossSensitivity: one full-batch step per epoch, so epoch 0's g_bar is each example's own input-gradient
    # L1 norm at the initial parameters, by a per-example autograd loop (the loader shuffles: indices matter).
    g_ref = torch.empty(len(x))
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(start(xi), y[i : i + 1]), xi)
        g_ref[i] = grad.abs().sum()
    g0 = torch.load(sens.saved_paths[0])["g_bar"]
    assert torch.allclose(g0.float(), g_ref, rtol=1e-4, atol=1e-7)
    first = sens.history[0]
    assert first["gini"] == pytest.approx(slow_gini(g_ref), rel=1e-4)
    assert first["gini_clean"] == pytest.approx(slow_gini(g_ref[~noisy]), rel=1e-4)  # from WithIndex.noisy_mask
    assert first["gini_noisy"] == pytest.approx(slow_gini(g_ref[noisy]), rel=1e-4)

    # CriticalSampleRatio: LASS by hand on the same seeded subsets with the final model (measured after the last step).
    def subset(n, num):
        return torch.randperm(n, generator=torch.Generator().manual_seed(1))[:num].sort().values

    kw = dict(radius=0.1, step_size=0.02, noise_std=0.01, max_iter=10, seed=1)
    ids = subset(len(vx), 60)
    out = lass(model, vx[ids], sample_ids=ids, **kw)
    tids = subset(len(x), 80)
    tout = lass(model, x[tids], sample_ids=tids, **kw)
    last = csr.history[-1]
    assert last["csr/val"] == pytest.approx(out.critical.float().mean().item())
    assert last["csr/train"] == pytest.approx(tout.critical.float().mean().item())
    assert last["csr/train_noisy"] == pytest.approx(tout.critical[noisy[tids]].float().mean().item())
    assert last["csr/train_clean"] == pytest.approx(tout.critical[~noisy[tids]].float().mean().item())
    assert 0 < tout.critical.float().mean().item() < 1


def test_items_and_batches_carry_the_position_in_the_wrapped_dataset():
    x, y = torch.randn(10, 3), torch.arange(10)
    plain = WithIndex(TensorDataset(x, y))
    assert len(plain) == 10 and plain.noisy_mask is None
    xi, yi, i = plain[7]
    assert torch.equal(xi, x[7]) and int(yi) == 7 and i == 7
    assert plain[-1][2] == 9  # a negative index is reported as the position
    flagged = WithIndex(Subset(TensorDataset(x, y), [4, 5, 6]), noisy=torch.tensor([0, 1, 0]))
    assert flagged[1][2:] == (1, True)
    batch = next(iter(DataLoader(WithIndex(TensorDataset(x, y), noisy=[i % 3 == 0 for i in range(10)]),
                                 batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    parsed = unpack_batch(batch)
    assert torch.equal(parsed.x, x[parsed.index]) and torch.equal(parsed.y, y[parsed.index])
    assert parsed.index.dtype == torch.int64 and parsed.noisy.dtype == torch.bool
    assert torch.equal(parsed.noisy, parsed.index % 3 == 0)


def test_bad_arguments_and_items():
    data = TensorDataset(torch.randn(4, 2), torch.arange(4))
    with pytest.raises(TypeError, match="`dataset` must be a map-style dataset.*got generator"):
        WithIndex(i for i in range(3))
    with pytest.raises(ValueError, match=r"`noisy` must have one flag per example of `dataset`, shape \(4,\), got \(3,\)"):
        WithIndex(data, noisy=[True, False, True])
    with pytest.raises(TypeError, match=r"`noisy` must hold booleans \(or 0/1 integers\), got values \[0, 2\]"):
        WithIndex(data, noisy=[0, 2, 0, 0])
    with pytest.raises(TypeError, match="`noisy` must hold booleans"):
        WithIndex(data, noisy=torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(TypeError, match="`noisy` must be a sequence or tensor of booleans or None, got 'abcd'"):
        WithIndex(data, noisy="abcd")
    triples = WithIndex(TensorDataset(torch.randn(4, 2), torch.arange(4), torch.arange(4)))
    with pytest.raises(TypeError, match=r"WithIndex needs dataset items that are \(x, y\) pairs, got 3 items at index 2"):
        triples[2]


@pytest.mark.parametrize("callback", ["dynamics", "sensitivity"])
def test_plain_xy_batches_are_refused_with_a_pointer_to_with_index(tmp_path: Path, callback):
    data = TensorDataset(torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,)))
    cb, error = (ExampleDynamics(), RuntimeError) if callback == "dynamics" else (LossSensitivity(), ValueError)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[cb], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(error, match=r"needs the dataset index.*memo_callbacks\.WithIndex\(dataset\)"):
        trainer.fit(UserModule(), DataLoader(data, batch_size=10))


def test_csr_in_pixel_units_without_a_std_says_how_to_give_one(tmp_path: Path):
    data = TensorDataset(torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,)))
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[CriticalSampleRatio()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"no datamodule with a `std`.*input_std=\[\.\.\.\].*LASSConfig\(unit='input'"):
        trainer.fit(UserModule(), DataLoader(data, batch_size=10), DataLoader(data, batch_size=10))
    # either remedy works
    for cb in (CriticalSampleRatio(num_samples=5, input_std=[1.0], lass=LASSConfig(max_iter=2)),
               CriticalSampleRatio(num_samples=5, lass=LASSConfig(unit="input", radius=0.1, max_iter=2))):
        pl.Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[cb], logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                   ).fit(UserModule(), DataLoader(WithIndex(data), batch_size=10), DataLoader(data, batch_size=10))
        assert 0 <= cb.history[-1]["csr/val"] <= 1
