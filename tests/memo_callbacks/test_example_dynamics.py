"""ExampleDynamics against explicit per-example references, on one and two processes, across a resume."""

import copy
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules import NoisyDigits
from helpers import run_ddp_script
from memo_callbacks import ExampleDynamics


class Tiny(pl.LightningModule):
    """A linear classifier whose training step also returns its logits (for mode="train_step")."""

    def __init__(self, lr: float = 0.5, dropout: float = 0.0, return_logits: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(64, 10))
        self.lr, self.return_logits = lr, return_logits

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch[0])
        loss = F.cross_entropy(logits, batch[1])
        return {"loss": loss, "logits": logits.detach()} if self.return_logits else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TinyWithVal(Tiny):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))


class Snapshots(pl.Callback):
    """Reference recorder: the parameters before every step (with the batch) and at every epoch end."""

    def __init__(self):
        self.steps, self.epoch_end = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append((trainer.current_epoch, copy.deepcopy(pl_module.net.state_dict()), batch))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_end.append(copy.deepcopy(pl_module.net.state_dict()))


def _dm(**kw):
    args = dict(noise="random_labels", noise_fraction=0.5, subset=60, batch_size=16, seed=0) | kw
    return NoisyDigits(**args)


def _trainer(tmp_path, callbacks, max_epochs=3, logger=True, **kw):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks,
        logger=TensorBoardLogger(tmp_path, name="tb") if logger else False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path, **kw,
    )


def _per_example(net_state, x, y, train_mode=False):
    """Slow reference: one example at a time through a fresh copy of the network."""
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(64, 10))
    net.load_state_dict(net_state)
    net.train(train_mode)
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            logits = net(x[i : i + 1])[0]
            loss = -torch.log_softmax(logits, 0)[y[i]].item()
            out.append((int(logits.argmax()) == int(y[i]), loss))
    return out


def _per_example_margin_prob(net_state, x, y):
    """Slow reference: (margin, probability of the label) one example at a time, in plain Python."""
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(64, 10))
    net.load_state_dict(net_state)
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            z = net(x[i : i + 1])[0].tolist()
            label = int(y[i])
            other = max(v for k, v in enumerate(z) if k != label)
            out.append((z[label] - other, math.exp(z[label]) / sum(math.exp(v) for v in z)))
    return out


def test_eval_pass_against_reference_and_tensorboard(tmp_path: Path):
    dm = _dm()
    torch.manual_seed(0)
    model = Tiny()
    cb, snaps = ExampleDynamics(), Snapshots()
    trainer = _trainer(tmp_path, [cb, snaps])
    trainer.fit(model, dm)
    h = cb.history
    n = dm.num_train
    assert h.epochs.tolist() == [0, 1, 2] and h.correct.shape == (3, n) and h.correct.dtype == torch.int8
    assert torch.equal(h.noisy, dm.noisy_mask)
    ref = [_per_example(s, dm.train_x, dm.train_y) for s in snaps.epoch_end]
    for e in range(3):
        assert h.correct[e].tolist() == [int(c) for c, _ in ref[e]]
        assert h.loss[e].tolist() == pytest.approx([l for _, l in ref[e]], rel=1e-5, abs=1e-6)
        mp = _per_example_margin_prob(snaps.epoch_end[e], dm.train_x, dm.train_y)
        assert h.margin[e].tolist() == pytest.approx([m for m, _ in mp], rel=1e-4, abs=1e-5)
        assert h.prob[e].tolist() == pytest.approx([p for _, p in mp], rel=1e-4, abs=1e-6)
    assert (h.margin < 0).any() and (h.margin > 0).any()
    # the first-learned epochs by hand from the reference
    first = [next((e for e in range(3) if ref[e][i][0]), -1) for i in range(n)]
    assert h.first_learned.tolist() == first
    # the history is not trivial: some examples are learned after epoch 0, some never
    assert 0 < sum(f == 0 for f in first) < n and any(f > 0 for f in first)

    # TensorBoard, read back with TensorBoard's own reader; step = epoch
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    noisy = dm.noisy_mask
    for e in range(3):
        fitted = [ref[e][i][0] for i in range(n)]
        expect = {
            "dynamics/fit_all": sum(fitted) / n,
            "dynamics/fit_clean": sum(f for f, m in zip(fitted, noisy) if not m) / int((~noisy).sum()),
            "dynamics/fit_noisy": sum(f for f, m in zip(fitted, noisy) if m) / int(noisy.sum()),
            "dynamics/learned_noisy": sum(0 <= first[i] <= e for i in range(n) if noisy[i]) / int(noisy.sum()),
            "dynamics/learned_clean": sum(0 <= first[i] <= e for i in range(n) if not noisy[i]) / int((~noisy).sum()),
            "dynamics/loss_noisy": sum(ref[e][i][1] for i in range(n) if noisy[i]) / int(noisy.sum()),
            "dynamics/loss_clean": sum(ref[e][i][1] for i in range(n) if not noisy[i]) / int((~noisy).sum()),
        }
        for tag, value in expect.items():
            events = acc.Scalars(tag)
            assert [ev.step for ev in events] == [0, 1, 2]
            assert events[e].value == pytest.approx(value, rel=1e-5), tag
    histograms = acc.Tags()["histograms"]
    for tag in ("dynamics/first_learned_epoch", "dynamics/first_learned_epoch_clean", "dynamics/first_learned_epoch_noisy"):
        assert tag in histograms
    last = acc.Histograms("dynamics/first_learned_epoch")[-1].histogram_value
    assert last.num == sum(f >= 0 for f in first) and last.max == max(first)

    # the history file beside the logs
    saved = torch.load(Path(trainer.logger.log_dir) / "dynamics" / "example_dynamics.pt")
    assert torch.equal(saved["correct"], h.correct) and torch.equal(saved["first_learned"], h.first_learned)
    assert torch.equal(saved["learned_for_good"], h.learned_for_good) and torch.equal(saved["noisy"], noisy)


def test_eval_pass_leaves_training_unchanged(tmp_path: Path):
    finals = []
    for callbacks in ([], [ExampleDynamics(filename=None)]):
        torch.manual_seed(0)
        model = Tiny(dropout=0.3)  # dropout consumes the global RNG: the eval pass must not shift it
        _trainer(tmp_path, callbacks, max_epochs=2, logger=False).fit(model, _dm())
        finals.append(model.net[2].weight.detach().clone())
        assert model.training
    assert torch.equal(finals[0], finals[1])


def test_train_step_mode_against_reference(tmp_path: Path):
    dm = _dm(batch_size=13)
    torch.manual_seed(1)
    cb, snaps = ExampleDynamics(mode="train_step", every_n_epochs=2, loss_dtype=torch.float16), Snapshots()
    _trainer(tmp_path, [cb, snaps], max_epochs=4, logger=False).fit(Tiny(), dm)
    h = cb.history
    assert h.epochs.tolist() == [1, 3] and h.loss.dtype == torch.float16
    for row, epoch in enumerate((1, 3)):
        expected = torch.full((dm.num_train,), -1, dtype=torch.int8)
        losses = torch.zeros(dm.num_train)
        for e, state, batch in snaps.steps:
            if e != epoch:
                continue
            for i, (c, l) in zip(batch.index.tolist(), _per_example(state, batch.x, batch.y, train_mode=True)):
                expected[i], losses[i] = int(c), l
        assert torch.equal(h.correct[row], expected)
        torch.testing.assert_close(h.loss[row].float(), losses, rtol=2e-3, atol=2e-3)


def test_generic_dataloader_without_datamodule(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    noisy = torch.arange(40) % 4 == 0
    loader = DataLoader(TensorDataset(x, y, torch.arange(40), noisy), batch_size=16, shuffle=True)
    torch.manual_seed(0)
    cb, snaps = ExampleDynamics(), Snapshots()
    _trainer(tmp_path, [cb, snaps], max_epochs=2, logger=False).fit(Tiny(), loader)
    h = cb.history
    assert torch.equal(h.noisy, noisy)  # read from the batches' flags
    ref = _per_example(snaps.epoch_end[-1], x, y)
    assert h.correct[-1].tolist() == [int(c) for c, _ in ref]


def _both_modes():
    return [ExampleDynamics(filename=None), ExampleDynamics(mode="train_step", filename=None)]


def test_resume_continues_history(tmp_path: Path):
    torch.manual_seed(0)
    straight = _both_modes()
    _trainer(tmp_path / "a", straight, max_epochs=4, logger=False).fit(TinyWithVal(), _dm())

    torch.manual_seed(0)
    first = _both_modes()
    # saved at validation end, which runs before the training epoch's end hooks; the resumed run then starts in
    # those hooks of epoch 1, which must not record epoch 1 again
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, callbacks=[*first, ckpt], logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyWithVal(), _dm())
    assert first[0].history.epochs.tolist() == [0, 1]

    resumed = _both_modes()
    trainer = _trainer(tmp_path / "b", resumed, max_epochs=4, logger=False)
    trainer.fit(TinyWithVal(), _dm(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    for cb, ref_cb in zip(resumed, straight):
        h, ref = cb.history, ref_cb.history
        assert h.epochs.tolist() == [0, 1, 2, 3]
        assert (h.correct >= 0).all()
        assert torch.equal(h.correct, ref.correct)
        torch.testing.assert_close(h.loss, ref.loss)
        torch.testing.assert_close(h.margin, ref.margin)
        torch.testing.assert_close(h.prob, ref.prob)
        assert not h.margin.isnan().any()
        assert torch.equal(h.first_learned, ref.first_learned)


DDP_SCRIPT = """
import torch, pytorch_lightning as pl, torch.nn.functional as F
from torch import nn
from datamodules import NoisyDigits
from memo_callbacks import ExampleDynamics

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, batch_idx):
        logits = self(batch[0])
        return {"loss": F.cross_entropy(logits, batch[1]), "logits": logits.detach()}
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

def run(devices, batch_size, strategy):
    torch.manual_seed(0)
    # with N = 200 divisible by 2 x 25, two ranks of 25 see, step by step, the same examples as one of 50
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.4, subset=200, batch_size=batch_size, seed=3)
    cbs = [ExampleDynamics(filename=None), ExampleDynamics(mode="train_step", filename=None)]
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=devices, max_epochs=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=cbs)
    trainer.fit(Tiny(), dm)
    return trainer, [cb.history for cb in cbs]

if __name__ == "__main__":
    trainer, hs = run(DEVICES, 25, "ddp")
    torch.save([(h.correct, h.loss, h.noisy, h.margin, h.prob) for h in hs], f"{OUT}/rank{trainer.global_rank}.pt")
"""


def test_same_history_on_one_and_two_processes(tmp_path: Path):
    run_ddp_script(DDP_SCRIPT, tmp_path)
    namespace = {"OUT": str(tmp_path), "DEVICES": 1, "__name__": "single"}
    exec(DDP_SCRIPT, namespace)
    _, single = namespace["run"](1, 50, "auto")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for mode, h in enumerate(single):
        for rank in ranks:
            correct, loss, noisy, margin, prob = rank[mode]
            assert torch.equal(noisy, h.noisy)
            assert torch.equal(correct, h.correct)
            torch.testing.assert_close(loss, h.loss, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(margin, h.margin, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(prob, h.prob, rtol=1e-4, atol=1e-5)
        assert not h.margin.isnan().any()
        assert (h.correct >= 0).all()  # every example observed once per epoch, also in train_step mode


def test_argument_errors():
    with pytest.raises(ValueError, match=r"`mode` must be one of \('eval_pass', 'train_step'\), got 'both'"):
        ExampleDynamics(mode="both")
    with pytest.raises(ValueError, match="`every_n_epochs` must be a positive integer, got 0"):
        ExampleDynamics(every_n_epochs=0)
    with pytest.raises(ValueError, match="`num_examples` must be a positive integer or None, got -3"):
        ExampleDynamics(num_examples=-3)
    with pytest.raises(ValueError, match="`eval_batch_size` must be a positive integer, got 0"):
        ExampleDynamics(eval_batch_size=0)
    with pytest.raises(ValueError, match="`loss_dtype` must be one of"):
        ExampleDynamics(loss_dtype=torch.int32)
    with pytest.raises(ValueError, match=r"`filename` must be a plain name .*got 'a/b.pt'"):
        ExampleDynamics(filename="a/b.pt")
    with pytest.raises(ValueError, match=r"`filename` must be a plain name .*got '..'"):
        ExampleDynamics(filename="..")
    with pytest.raises(ValueError, match="`name` must be a non-empty tag prefix"):
        ExampleDynamics(name="")
    with pytest.raises(ValueError, match=r"`name` must be a plain name .*got '../up'"):
        ExampleDynamics(name="../up")
    with pytest.raises(ValueError, match="`every_n_epochs` must be a positive integer, got True"):
        ExampleDynamics(every_n_epochs=True)
    with pytest.raises(ValueError, match="`eval_batch_size` must be a positive integer, got 2.5"):
        ExampleDynamics(eval_batch_size=2.5)
    with pytest.raises(TypeError, match="`logits_key` must be a non-empty string, got 3"):
        ExampleDynamics(logits_key=3)
    with pytest.raises(TypeError, match="`loss_fn` must be callable or None, got str"):
        ExampleDynamics(loss_fn="ce")
    with pytest.raises(TypeError, match="`batch_adapter` must be callable or None, got int"):
        ExampleDynamics(batch_adapter=1)
    with pytest.raises(TypeError, match="`log_histogram` must be a bool, got 'no'"):
        ExampleDynamics(log_histogram="no")


def test_history_file_never_lands_in_the_cwd_nor_over_another_file(tmp_path: Path, monkeypatch):
    cwd, root = tmp_path / "cwd", tmp_path / "root"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    folder = root / "dynamics"
    folder.mkdir(parents=True)
    (folder / "example_dynamics.pt").write_text("someone else's file")
    cb = ExampleDynamics()
    with pytest.warns(UserWarning, match=r"example_dynamics.pt' exists and was not written by this run"):
        pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=root, callbacks=[cb]).fit(Tiny(), _dm())
    assert list(cwd.iterdir()) == []
    assert (folder / "example_dynamics.pt").read_text() == "someone else's file"
    assert cb.saved_paths == [folder / "example_dynamics-v1.pt"]
    assert torch.equal(torch.load(folder / "example_dynamics-v1.pt")["correct"], cb.history.correct)


def test_runtime_errors(tmp_path: Path):
    with pytest.raises(RuntimeError, match=r"needs `training_step` to return a dict with the batch's logits under 'logits'"):
        _trainer(tmp_path, [ExampleDynamics(mode="train_step")], max_epochs=1, logger=False).fit(
            Tiny(return_logits=False), _dm()
        )
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(20, 64, generator=g), torch.randint(0, 10, (20,), generator=g)),
                        batch_size=8)
    with pytest.raises(RuntimeError, match="needs the dataset index of every example"):
        _trainer(tmp_path, [ExampleDynamics()], max_epochs=1, logger=False).fit(Tiny(), loader)
    cb = ExampleDynamics()
    cb.load_state_dict({"num_examples": 7, "epochs": torch.tensor([0]), "correct": torch.ones(1, 7, dtype=torch.int8),
                        "loss": torch.zeros(1, 7), "noisy": None, "noisy_from_datamodule": False})
    with pytest.raises(RuntimeError, match="holds a history of 7 examples .* but the training set has 60"):
        _trainer(tmp_path, [cb], max_epochs=1, logger=False).fit(Tiny(), _dm())
    assert math.isclose(cb.history.correct.float().mean().item(), 1.0)
