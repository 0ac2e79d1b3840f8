"""LossSensitivity against the functional references, through real Trainer runs (CPU, tiny)."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from datamodules import NoisyDigits
from helpers import run_ddp_script
from memo_callbacks import LossSensitivity
from memo_callbacks.functional import gini, input_gradient_sensitivity, unrolled_sensitivity


class Tiny(pl.LightningModule):
    def __init__(self, lr=0.1, momentum=0.0, optimizer="sgd", detach=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
        self.lr, self.momentum, self.optimizer, self.detach = lr, momentum, optimizer, detach

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x = batch.x.detach().clone() if self.detach else batch.x
        return F.cross_entropy(self(x), batch.y)

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def digits(**kw):
    kw = {"noise": "random_labels", "noise_fraction": 0.5, "subset": 96, "batch_size": 16, "seed": 3, **kw}
    dm = NoisyDigits(**kw)
    dm.setup("fit")
    return dm


def fit(model, dm, callbacks, tmp_path, epochs=1, logger=False, ckpt_path=None, **kw):
    kw = {"enable_checkpointing": False, **kw}
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=logger,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kw,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer


def batches(dm, epoch):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_proxy_equals_per_example_gradients_along_training(tmp_path, accumulate):
    dm = digits()
    cb = LossSensitivity(mode="proxy", norm="l2")
    fit(Tiny(lr=0.5), dm, [cb], tmp_path, accumulate_grad_batches=accumulate)
    # Reference: the same training by hand, the proxy measured before each update.
    ref = Tiny(lr=0.5)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    sums, counts = torch.zeros(96, dtype=torch.float64), torch.zeros(96)
    for i, b in enumerate(batches(dm, 0)):
        sums.index_add_(0, b.index, input_gradient_sensitivity(ref.net, b.x, b.y, norm="l2").double())
        counts.index_add_(0, b.index, torch.ones(len(b.index)))
        (F.cross_entropy(ref(b.x), b.y) / accumulate).backward()
        if (i + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(cb.last_g_bar, sums / counts, rtol=1e-5, atol=1e-7)
    assert cb.history[0]["gini"] == pytest.approx(gini(sums / counts), rel=1e-5)
    assert torch.equal(cb.total_count, counts.long())


def test_unrolled_equals_functional_replay_of_the_window(tmp_path):
    dm = digits()
    cb = LossSensitivity(mode="unrolled", window=4, measure_every=2, per_class=True)
    fit(Tiny(lr=0.3, momentum=0.9), dm, [cb], tmp_path, epochs=2)
    # Reference: train by hand, snapshot before the window (last 4 of 6 steps of epoch 1), replay.
    ref = Tiny(lr=0.3, momentum=0.9)
    opt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9)
    for epoch in range(2):
        for i, b in enumerate(batches(dm, epoch)):
            if epoch == 1 and i == 2:
                params = {k: v.detach().clone() for k, v in ref.named_parameters()}
                bufs = {k: opt.state[v]["momentum_buffer"].clone() for k, v in ref.named_parameters()}
                window = []
            if epoch == 1 and i >= 2:
                window.append(b.index)
            opt.zero_grad()
            F.cross_entropy(ref(b.x), b.y).backward()
            opt.step()
    out = unrolled_sensitivity(ref, params, dm.train_x, dm.train_y, window, lr=0.3, momentum=0.9,
                               momentum_buffers=bufs, measure_steps=[1, 3], per_class=True, num_classes=10)
    torch.testing.assert_close(cb.last_g_bar, out.g_bar.double(), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(cb.last_class_matrix, out.class_matrix.double(), rtol=1e-4, atol=1e-8)
    assert len(cb.history) == 2 and cb.history[1]["gini"] == pytest.approx(gini(out.g_bar), rel=1e-4)
    assert torch.equal(cb.total_count, torch.full((96,), 4))  # 2 measured steps in each of 2 epochs


def reference_windows(dm, epochs, window, lr=0.3, momentum=0.9):
    """Train by hand, keeping the parameters and momentum buffers before every step; at each epoch end replay the
    last ``window`` steps of the run (fewer at the start) with the functional: the per-epoch references."""
    ref = Tiny(lr=lr, momentum=momentum)
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum)
    states, steps, out = [], [], []
    for epoch in range(epochs):
        for b in batches(dm, epoch):
            params = {k: v.detach().clone() for k, v in ref.named_parameters()}
            bufs = ({k: opt.state[v]["momentum_buffer"].clone() for k, v in ref.named_parameters()}
                    if opt.state else None)
            states.append((params, bufs))
            steps.append(b.index)
            opt.zero_grad()
            F.cross_entropy(ref(b.x), b.y).backward()
            opt.step()
        end = len(steps)
        start = max(0, end - window)
        k = end - start
        out.append(unrolled_sensitivity(
            ref, states[start][0], dm.train_x, dm.train_y, steps[start:end], lr=lr, momentum=momentum,
            momentum_buffers=states[start][1], measure_steps=list(range(1, k, 2)), per_class=True, num_classes=10))
    return out


def saved(root, epoch):
    return torch.load(Path(root) / "sensitivity" / f"epoch={epoch}.pt")


def test_unrolled_window_longer_than_an_epoch_equals_functional_replay(tmp_path):
    """96 examples in batches of 16: 6 steps per epoch, a window of 10 steps reaches back into the previous epoch
    (epoch 1 replays steps 2-11, epoch 3 steps 14-23); every epoch's values equal the functional's on the same
    trajectory."""
    dm = digits()
    cb = LossSensitivity(mode="unrolled", window=10, measure_every=2, per_class=True)
    fit(Tiny(lr=0.3, momentum=0.9), dm, [cb], tmp_path, epochs=4)
    refs = reference_windows(dm, 4, 10)
    for epoch, ref in enumerate(refs):
        got = saved(tmp_path, epoch)
        torch.testing.assert_close(got["g_bar"], ref.g_bar.double(), rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(got["class_matrix"], ref.class_matrix.double(), rtol=1e-4, atol=1e-8)
    assert refs[1].per_step.shape[0] == 5 and refs[3].steps.tolist() == [1, 3, 5, 7, 9]  # 10-step windows
    assert torch.equal(cb.total_count, torch.full((96,), 3 + 5 + 5 + 5))  # measured steps of the four windows


def test_unrolled_window_across_epochs_resumes_exactly(tmp_path):
    """A checkpoint taken while a window is open (its snapshot two epochs back, every_n_epochs=2 so the epoch in
    between is recorded but not measured) resumes into the very same replay."""
    dm = digits()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    straight = LossSensitivity(mode="unrolled", window=10, every_n_epochs=2, per_class=True)
    fit(Tiny(lr=0.3, momentum=0.9), dm, [straight, ckpt], tmp_path / "a", epochs=4, enable_checkpointing=True)
    resumed = LossSensitivity(mode="unrolled", window=10, every_n_epochs=2, per_class=True)
    fit(Tiny(lr=0.3, momentum=0.9), dm, [resumed], tmp_path / "b", epochs=4,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"))  # after step 18; epoch 3's window starts at step 14
    refs = reference_windows(dm, 4, 10)
    for epoch in (1, 3):
        torch.testing.assert_close(saved(tmp_path / "a", epoch)["g_bar"], refs[epoch].g_bar.double(), rtol=1e-4,
                                   atol=1e-8)
    got = saved(tmp_path / "b", 3)
    torch.testing.assert_close(got["g_bar"], saved(tmp_path / "a", 3)["g_bar"], rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(got["class_matrix"], saved(tmp_path / "a", 3)["class_matrix"], rtol=1e-6, atol=1e-10)
    assert resumed.history == straight.history


def test_unrolled_on_a_plain_shuffled_loader_reads_the_size_from_the_dataset(tmp_path):
    """No datamodule size and no `num_examples`: the size comes from len(dataset), so the window's input buffer never
    has to grow (it used to raise 'the training set grew during a window')."""
    dm = digits()

    class Plain(pl.LightningDataModule):
        def train_dataloader(self):
            data = torch.utils.data.TensorDataset(dm.train_x, dm.train_y, torch.arange(96))
            return torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)

    class TupleTiny(Tiny):
        def training_step(self, batch, _):
            x, y, _index = batch
            return F.cross_entropy(self(x), y)

    runs = []
    for num_examples in (None, 96):
        pl.seed_everything(5, verbose=False)
        cb = LossSensitivity(mode="unrolled", window=10, num_examples=num_examples)
        fit(TupleTiny(), Plain(), [cb], tmp_path / str(num_examples), epochs=2)
        runs.append(cb)
    assert runs[0].num_examples is None and runs[0].last_g_bar.shape == (96,)
    torch.testing.assert_close(runs[0].last_g_bar, runs[1].last_g_bar, rtol=0, atol=0)
    assert bool((runs[0].last_g_bar > 0).any())


def test_tensorboard_tags_and_saved_tensors(tmp_path):
    dm = digits()
    cb = LossSensitivity(mode="unrolled", window=3, measure_every=1, per_class=True)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    fit(Tiny(), dm, [cb], tmp_path, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0}).Reload()
    tags = acc.Tags()
    assert {"sensitivity/gini", "sensitivity/gini_clean", "sensitivity/gini_noisy"} <= set(tags["scalars"])
    assert acc.Scalars("sensitivity/gini")[0].value == pytest.approx(cb.history[0]["gini"], rel=1e-6)
    assert "sensitivity/g_bar" in tags["histograms"]
    assert "sensitivity/per_class" in tags["images"]
    saved = torch.load(Path(logger.log_dir) / "sensitivity" / "epoch=0.pt")
    assert torch.equal(saved["g_bar"], cb.last_g_bar) and saved["class_matrix"].shape == (10, 10)
    noisy = dm.noisy_mask
    assert cb.history[0]["gini_noisy"] == pytest.approx(gini(cb.last_g_bar[noisy]), rel=1e-9)


def test_resume_continues_the_accumulated_sums(tmp_path):
    dm = digits()
    straight = LossSensitivity()
    fit(Tiny(), dm, [straight], tmp_path / "a", epochs=2)
    first = LossSensitivity()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[first, ckpt], default_root_dir=tmp_path)
    trainer.fit(Tiny(), dm)
    resumed = LossSensitivity()
    fit(Tiny(), dm, [resumed], tmp_path / "b", epochs=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert len(resumed.history) == 2 and resumed.history[0] == first.history[0]
    torch.testing.assert_close(resumed.total_sum, straight.total_sum, rtol=1e-6, atol=0)
    assert torch.equal(resumed.total_count, straight.total_count)
    assert torch.equal(straight.total_count, torch.full((96,), 2))


BAD = [
    (dict(window=True), ValueError, r"`window` must be a positive integer, got True"),
    (dict(window=2.5), ValueError, r"`window` must be a positive integer, got 2.5"),
    (dict(measure_every="2"), ValueError, r"`measure_every` must be a positive integer, got '2'"),
    (dict(every_n_epochs=0), ValueError, r"`every_n_epochs` must be a positive integer, got 0"),
    (dict(num_examples=True), ValueError, r"`num_examples` must be a positive integer or None, got True"),
    (dict(max_buffer_bytes=0), ValueError, r"`max_buffer_bytes` must be an int >= 1, got 0"),
    (dict(max_buffer_bytes=1e9), TypeError, r"`max_buffer_bytes` must be an int >= 1, got 1000000000.0 \(float\)"),
    (dict(num_classes=0), ValueError, r"`num_classes` must be an int >= 1 or None, got 0"),
    (dict(per_class="yes", mode="unrolled"), TypeError, r"`per_class` must be a bool, got 'yes'"),
    (dict(loss_fn=None), TypeError, r"`loss_fn` must be callable, got NoneType"),
    (dict(batch_adapter="xy"), TypeError, r"`batch_adapter` must be callable or None, got str"),
    (dict(prefix="../../x"), ValueError, r"`prefix` must be a plain name .*got '../../x'"),
    (dict(prefix="a/b"), ValueError, r"`prefix` must be a plain name .*got 'a/b'"),
    (dict(prefix=".hidden"), ValueError, r"`prefix` must be a plain name .*got '.hidden'"),
    (dict(prefix=""), ValueError, r"`prefix` must be a plain name .*got ''"),
    (dict(prefix=3), ValueError, r"`prefix` must be a plain name .*got 3"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD, ids=[f"{k}={v!r}" for d, _, _ in BAD for k, v in d.items() if k != "mode"])
def test_bad_arguments_are_rejected_in_init(kwargs, error, match):
    with pytest.raises(error, match=match):
        LossSensitivity(**kwargs)


def test_files_go_to_the_callbacks_folder_never_the_cwd_and_never_over_others(tmp_path, monkeypatch):
    cwd, root = tmp_path / "cwd", tmp_path / "root"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    dm = digits()
    cb = LossSensitivity()
    fit(Tiny(), dm, [cb], root, epochs=2)  # logger=False: under default_root_dir
    assert list(cwd.iterdir()) == []
    folder = root / "sensitivity"
    assert cb.saved_paths == [folder / "epoch=0.pt", folder / "epoch=1.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0.pt", "epoch=1.pt"]
    mine = torch.load(folder / "epoch=1.pt")
    # A second run into the same folder keeps the first run's files and writes beside them, with a warning.
    again = LossSensitivity()
    with pytest.warns(UserWarning, match=r"epoch=0.pt' exists and was not written by this run; writing .*epoch=0-v1.pt"):
        fit(Tiny(), dm, [again], root, epochs=1)
    assert again.saved_paths == [folder / "epoch=0-v1.pt"]
    assert torch.equal(torch.load(folder / "epoch=1.pt")["g_bar"], mine["g_bar"], )
    assert list(cwd.iterdir()) == []


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="`mode` must be 'proxy' or 'unrolled', got 'exact'"):
        LossSensitivity(mode="exact")
    with pytest.raises(ValueError, match="`norm` must be one of"):
        LossSensitivity(norm="l0")
    with pytest.raises(ValueError, match="`window` must be a positive integer, got 0"):
        LossSensitivity(window=0)
    with pytest.raises(ValueError, match="`per_class` needs mode='unrolled'"):
        LossSensitivity(per_class=True)
    with pytest.raises(ValueError, match="`loss_reduction` must be 'mean' or 'sum'"):
        LossSensitivity(loss_reduction="none")
    dm = digits()
    cb = LossSensitivity()
    with pytest.raises(RuntimeError, match="found no gradient on batch.x"):
        fit(Tiny(detach=True), dm, [cb], tmp_path)
    cb = LossSensitivity(mode="unrolled")
    with pytest.raises(TypeError, match="`optimizer` must be torch.optim.SGD.*got Adam"):
        fit(Tiny(optimizer="adam"), dm, [cb], tmp_path)
    cb = LossSensitivity(mode="unrolled")
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        fit(Tiny(), dm, [cb], tmp_path, accumulate_grad_batches=2)

    class NoIndex(pl.LightningDataModule):
        def train_dataloader(self):
            data = torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
            return torch.utils.data.DataLoader(data, batch_size=4)

    cb = LossSensitivity()
    with pytest.raises(ValueError, match="needs the dataset index of every example"):
        fit(Tiny(), NoIndex(), [cb], tmp_path)


DDP_SCRIPT = """
import torch, pytorch_lightning as pl, torch.nn.functional as F
from torch import nn
from datamodules import NoisyDigits
from memo_callbacks import LossSensitivity

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, _):
        return F.cross_entropy(self(batch.x), batch.y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)

# The global batch is the same on 1 and 2 processes (32 = 2 x 16, the sampler shards one permutation), so both
# runs take the same SGD steps and must measure the same values.
# 4 steps per epoch and a window of 6: epoch 1 replays steps 2-7, epoch 2 steps 6-11 (across epoch boundaries).
dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, subset=128, batch_size=32 // DEVICES, seed=3)

def run(root, ckpt=None):
    proxy = LossSensitivity(mode="proxy")
    unrolled = LossSensitivity(mode="unrolled", window=6, measure_every=1, per_class=True, prefix="unrolled")
    saver = pl.callbacks.ModelCheckpoint(dirpath=f"{root}/ckpt", save_top_k=-1, filename="{epoch}")
    trainer = pl.Trainer(strategy="ddp" if DEVICES > 1 else "auto", accelerator="cpu", devices=DEVICES, max_epochs=3,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[proxy, unrolled, saver], default_root_dir=root)
    trainer.fit(Tiny(), dm, ckpt_path=ckpt)
    return trainer, proxy, unrolled

trainer, proxy, unrolled = run(f"{OUT}/straight{DEVICES}")
# The checkpoint after epoch 0 (step 4) holds the open window of epoch 1 (its snapshot at step 2, every rank's steps).
_, _, resumed = run(f"{OUT}/resumed{DEVICES}", ckpt=f"{OUT}/straight{DEVICES}/ckpt/epoch=0.ckpt")
if trainer.is_global_zero:
    torch.save({"proxy": proxy.total_sum, "proxy_count": proxy.total_count, "unrolled": unrolled.last_g_bar,
                "matrix": unrolled.last_class_matrix, "history": unrolled.history,
                "resumed": resumed.last_g_bar, "resumed_matrix": resumed.last_class_matrix,
                "resumed_history": resumed.history}, f"{OUT}/result{DEVICES}.pt")
"""


def test_same_values_on_one_and_two_processes(tmp_path):
    """Windows longer than an epoch, on 1 and 2 processes, straight and resumed from a checkpoint taken while a
    window is open: all four give the same values."""
    exec(f"OUT = {str(tmp_path)!r}\nDEVICES = 1\n" + DDP_SCRIPT, {})
    run_ddp_script(DDP_SCRIPT, tmp_path, devices=2)
    one, two = torch.load(tmp_path / "result1.pt"), torch.load(tmp_path / "result2.pt")
    assert torch.equal(one["proxy_count"], two["proxy_count"])
    torch.testing.assert_close(two["proxy"], one["proxy"], rtol=1e-4, atol=1e-7)
    for run in (one, two):
        for g_bar, matrix in ((two["unrolled"], two["matrix"]), (run["resumed"], run["resumed_matrix"])):
            torch.testing.assert_close(g_bar, one["unrolled"], rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(matrix, one["matrix"], rtol=1e-4, atol=1e-9)
    assert two["history"][-1]["gini"] == pytest.approx(one["history"][-1]["gini"], rel=1e-4)
    assert two["resumed_history"][-1]["gini"] == pytest.approx(one["history"][-1]["gini"], rel=1e-4)


def test_every_n_epochs_collects_only_the_measured_epochs(tmp_path):
    """With every_n_epochs=2 over 4 epochs, g_bar is each measured epoch's own mean: one draw per example per
    measured epoch, and the values equal a run that measures every epoch, at epochs 2 and 4."""
    dm = digits()
    every = LossSensitivity()
    fit(Tiny(), dm, [every], tmp_path / "a", epochs=4)
    second = LossSensitivity(every_n_epochs=2)
    fit(Tiny(), dm, [second], tmp_path / "b", epochs=4)
    assert [h["epoch"] for h in second.history] == [1, 3]
    assert torch.equal(second.total_count, torch.full((96,), 2))  # epochs 2 and 4 only
    assert second.history[0]["gini"] == pytest.approx(every.history[1]["gini"], rel=1e-6)
    assert second.history[1]["gini"] == pytest.approx(every.history[3]["gini"], rel=1e-6)


MID_EPOCH_SCRIPT = """
import sys, torch, pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from datamodules import NoisyDigits
from models import MLPClassifier
from memo_callbacks import LossSensitivity

def run(root, ckpt=None):
    pl.seed_everything(0, verbose=False)
    dm = NoisyDigits(batch_size=128, seed=0, subset=600)  # 3 steps per rank per epoch
    ls = LossSensitivity(mode="proxy")
    mc = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}-{step}", every_n_train_steps=2)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ls, mc], num_sanity_val_steps=0, accelerator="cpu", devices=DEVICES,
                         strategy="ddp")
    trainer.fit(MLPClassifier((1, 8, 8), 10, hidden=(16,), lr=0.1), dm, ckpt_path=ckpt)
    return ls, trainer

straight, trainer = run(f"{OUT}/full")
weights = {k: v.clone() for k, v in trainer.lightning_module.state_dict().items()}
resumed, trainer = run(f"{OUT}/resumed", ckpt=f"{OUT}/full/epoch=0-step=2.ckpt")  # saved mid-epoch 0
later, trainer = run(f"{OUT}/later", ckpt=f"{OUT}/full/epoch=1-step=4.ckpt")  # saved mid-epoch 1 (1 of 3 batches)
if trainer.is_global_zero:
    torch.save({"straight": (straight.total_sum, straight.total_count),
                "resumed": (resumed.total_sum, resumed.total_count),
                "later": (later.total_sum, later.total_count),
                "weights": (weights, trainer.lightning_module.state_dict())}, f"{OUT}/mid.pt")
"""


def test_mid_epoch_resume_on_two_processes_keeps_every_rank_s_partial_sums(tmp_path):
    """A checkpoint taken mid-epoch holds every rank's partial sums (only rank 0 writes it); the resumed run then
    reaches exactly the totals of an uninterrupted one: no example counted twice, none lost."""
    run_ddp_script(MID_EPOCH_SCRIPT, tmp_path)
    out = torch.load(tmp_path / "mid.pt")
    straight_sum, straight_count = out["straight"]
    resumed_sum, resumed_count = out["resumed"]
    assert torch.equal(straight_count, torch.full((600,), 2))
    assert torch.equal(resumed_count, straight_count)
    torch.testing.assert_close(resumed_sum, straight_sum, rtol=1e-5, atol=0)
    later_sum, later_count = out["later"]  # a checkpoint taken mid-epoch after the first epoch
    assert torch.equal(later_count, straight_count)
    torch.testing.assert_close(later_sum, straight_sum, rtol=1e-5, atol=0)
    straight_weights, later_weights = out["weights"]
    for name, w in straight_weights.items():
        assert torch.equal(later_weights[name], w), name  # bit-identical to the uninterrupted run


@pytest.mark.parametrize("every", [2, 3])
def test_proxy_every_n_steps_equals_the_mean_over_the_measured_batches(tmp_path, every):
    dm = digits()
    cb = LossSensitivity(mode="proxy", norm="l1", every_n_steps=every)
    fit(Tiny(lr=0.5), dm, [cb], tmp_path, epochs=2)
    # Reference: the same training by hand, the proxy read on batches 0, every, 2 * every, ... of each epoch only.
    ref = Tiny(lr=0.5)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    total_sums, total_counts = torch.zeros(96, dtype=torch.float64), torch.zeros(96)
    for epoch in range(2):
        sums, counts = torch.zeros(96, dtype=torch.float64), torch.zeros(96)
        for i, b in enumerate(batches(dm, epoch)):
            if i % every == 0:
                sums.index_add_(0, b.index, input_gradient_sensitivity(ref.net, b.x, b.y, norm="l1").double())
                counts.index_add_(0, b.index, torch.ones(len(b.index)))
            F.cross_entropy(ref(b.x), b.y).backward()
            opt.step()
            opt.zero_grad()
        total_sums += sums
        total_counts += counts
    seen = counts > 0
    assert 0 < int(seen.sum()) < 96  # some examples measured, some not
    torch.testing.assert_close(cb.last_g_bar[seen], (sums / counts)[seen], rtol=1e-5, atol=1e-7)
    assert cb.history[-1]["gini"] == pytest.approx(gini((sums / counts)[seen]), rel=1e-5)
    assert torch.equal(cb.total_count, total_counts.long())
    torch.testing.assert_close(cb.total_sum, total_sums, rtol=1e-5, atol=1e-6)


def test_every_n_steps_is_checked():
    with pytest.raises(ValueError, match=r"`every_n_steps` must be an int >= 1, got 0"):
        LossSensitivity(every_n_steps=0)
    with pytest.raises(TypeError, match=r"`every_n_steps` must be an int >= 1, got 2.0"):
        LossSensitivity(every_n_steps=2.0)
    with pytest.raises(ValueError, match=r"`every_n_steps` applies to mode='proxy' only, got every_n_steps=2 with mode='unrolled'"):
        LossSensitivity(mode="unrolled", every_n_steps=2)
