"""CriticalSampleRatio: the logged ratios against LASS run by hand, TensorBoard read-back, DDP, resume, errors."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from datamodules import NoisyDigits
from helpers import run_ddp_script
from memo_callbacks import CriticalSampleRatio
from memo_callbacks.functional import lass, pixels_to_input_units
from memo_callbacks.utilities import ParsedBatch


class Classifier(pl.LightningModule):
    """A user's own module: forward returns logits; batches are whatever `unpack` reads."""

    def __init__(self, in_features: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)

    @staticmethod
    def _xy(batch):
        return (batch["image"], batch["label"]) if isinstance(batch, dict) else (batch[0], batch[1])

    def training_step(self, batch, _):
        x, y = self._xy(batch)
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = self._xy(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path, callbacks, max_epochs=1, **kw):
    return pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks,
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="tb", version=0), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=1, **kw,
    )


def subset(n, num, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:num].sort().values


def test_logs_match_lass_on_the_seeded_subset_and_tensorboard(tmp_path: Path):
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, batch_size=64, seed=0)
    csr = CriticalSampleRatio(num_samples=120, radius=40.0, step_size=10.0, noise_std=5.0, max_iter=20, seed=3,
                              train=True, num_train_samples=150)
    model = Classifier()
    trainer(tmp_path, [csr], max_epochs=2, limit_train_batches=3).fit(model, dm)
    # Independent evaluation with the final model: the same seeded subsets and parameters, by hand.
    r, a, b = (pixels_to_input_units(v, dm.std) for v in (40.0, 10.0, 5.0))
    clip = tuple(t.view(-1, 1, 1) for t in dm.input_bounds)
    ids = subset(dm.num_val, 120, 3)
    out = lass(model, dm.val_x[ids], radius=r, step_size=a, noise_std=b, max_iter=20, seed=3, sample_ids=ids, clip=clip)
    expected = out.critical.float().mean().item()
    assert 0 < expected < 1
    metrics = trainer_metrics = csr.history[-1]
    assert metrics["csr/val"] == pytest.approx(expected)
    assert metrics["csr/val_iterations"] == pytest.approx(out.iterations[out.critical].float().mean().item())
    tids = subset(dm.num_train, 150, 3)
    tout = lass(model, dm.train_x[tids], radius=r, step_size=a, noise_std=b, max_iter=20, seed=3, sample_ids=tids,
                clip=clip)
    noisy = dm.noisy_mask[tids]
    assert trainer_metrics["csr/train"] == pytest.approx(tout.critical.float().mean().item())
    assert trainer_metrics["csr/train_noisy"] == pytest.approx(tout.critical[noisy].float().mean().item())
    assert trainer_metrics["csr/train_clean"] == pytest.approx(tout.critical[~noisy].float().mean().item())
    assert [h["epoch"] for h in csr.history] == [0, 1]  # the sanity check is skipped

    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    vals = [e.value for e in acc.Scalars("csr/val")]
    assert vals == pytest.approx([h["csr/val"] for h in csr.history])
    hist = acc.Histograms("csr/val_iterations_hist")[-1].histogram_value
    assert hist.num == int(out.critical.sum())
    counts = torch.bincount(out.iterations[out.critical], minlength=21)[1:]
    assert list(hist.bucket) == counts.tolist()
    assert hist.sum == pytest.approx(float(out.iterations[out.critical].sum()))


def test_dataset_path_with_dict_batches_and_adapter(tmp_path: Path):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 8, 8, generator=gen), torch.randint(0, 10, (60,), generator=gen)

    class DictSet(Dataset):
        def __len__(self):
            return 60

        def __getitem__(self, i):
            return {"image": x[i], "label": y[i]}

    loader = DataLoader(DictSet(), batch_size=16)
    csr = CriticalSampleRatio(num_samples=None, unit="input", radius=0.02, step_size=0.005, noise_std=0.005,
                              max_iter=15, clip=None)
    model = Classifier()
    trainer(tmp_path, [csr]).validate(model, loader)
    out = lass(model, x, radius=0.02, step_size=0.005, noise_std=0.005, max_iter=15)
    assert 0 < out.critical.float().mean() < 1
    assert csr.history[-1]["csr/val"] == pytest.approx(out.critical.float().mean().item())

    class Weird(Dataset):
        def __len__(self):
            return 60

        def __getitem__(self, i):
            return {"pixels": x[i], "class": y[i]}

    adapted = CriticalSampleRatio(num_samples=None, unit="input", radius=0.02, step_size=0.005, noise_std=0.005,
                                  max_iter=15, clip=None, batch_adapter=lambda b: ParsedBatch(b["pixels"], b["class"]))

    class WeirdModel(Classifier):
        def validation_step(self, batch, _):
            return None

    trainer(tmp_path, [adapted]).validate(WeirdModel(), DataLoader(Weird(), batch_size=16))
    assert adapted.history[-1]["csr/val"] == pytest.approx(csr.history[-1]["csr/val"])
    bad = CriticalSampleRatio(unit="input", clip=None)
    with pytest.raises(TypeError, match="batch_adapter"):
        trainer(tmp_path, [bad]).validate(WeirdModel(), DataLoader(Weird(), batch_size=16))


def test_zero_radius_gives_zero(tmp_path: Path):
    dm = NoisyDigits(batch_size=128)
    csr = CriticalSampleRatio(num_samples=50, radius=0.0, max_iter=5)
    trainer(tmp_path, [csr]).validate(Classifier(), dm)
    assert csr.history[-1]["csr/val"] == 0.0


def test_resume_keeps_history(tmp_path: Path):
    dm = NoisyDigits(batch_size=256)
    kw = dict(num_samples=30, radius=40.0, max_iter=5)
    first = CriticalSampleRatio(**kw)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first, ckpt], max_epochs=1, limit_train_batches=2).fit(Classifier(), dm)
    resumed = CriticalSampleRatio(**kw)
    trainer(tmp_path, [resumed], max_epochs=2, limit_train_batches=2).fit(
        Classifier(), dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert resumed.history[0] == first.history[0]
    other = CriticalSampleRatio(num_samples=31)
    assert other.state_key != resumed.state_key


DDP_SCRIPT = """
import torch, pytorch_lightning as pl
from torch import nn
from datamodules import NoisyDigits
from memo_callbacks import CriticalSampleRatio

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    def forward(self, x):
        return self.net(x)
    def validation_step(self, batch, _):
        pass

csr = CriticalSampleRatio(num_samples=101, radius=3.0, step_size=1.0, noise_std=1.0, max_iter=20, seed=3)
trainer = pl.Trainer(strategy="ddp" if DEVICES > 1 else "auto", accelerator="cpu", devices=DEVICES, logger=False, callbacks=[csr],
                     enable_progress_bar=False, enable_model_summary=False)
trainer.validate(Net(), NoisyDigits(batch_size=64))
if OUT is not None:
    torch.save(csr.history, f"{OUT}/history{trainer.global_rank}.pt")
"""


def test_same_ratio_on_one_and_two_processes(tmp_path: Path):
    run_ddp_script(DDP_SCRIPT, tmp_path)
    h0, h1 = (torch.load(tmp_path / f"history{r}.pt") for r in (0, 1))
    assert h0 == h1  # every rank logs the same, exactly summed counts
    single: dict = {"OUT": None, "DEVICES": 1}
    exec(compile(DDP_SCRIPT, "one_process", "exec"), single)  # the same script on one process, in this one
    one = single["csr"].history[-1]
    assert 0 < one["csr/val"] < 1
    assert h0[-1]["csr/val"] == one["csr/val"]
    assert h0[-1]["csr/val_iterations"] == pytest.approx(one["csr/val_iterations"])


def test_pixel_units_need_a_std(tmp_path: Path):
    loader = DataLoader(TensorDataset(torch.randn(8, 64), torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="needs the inputs' per-channel std.*unit='input'"):
        trainer(tmp_path, [CriticalSampleRatio()]).validate(Classifier(), loader)
    ok = CriticalSampleRatio(input_std=[0.5], num_samples=8, max_iter=3, clip=None)
    trainer(tmp_path, [ok]).validate(Classifier(), loader)
    assert ok.history[-1]["csr/val"] == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(unit="pixels"), r"`unit` must be one of \('pixel', 'input'\), got 'pixels'"),
        (dict(radius=-0.3), "`radius` must be a number >= 0, got -0.3"),
        (dict(max_iter=0), "`max_iter` must be an integer >= 1, got 0"),
        (dict(num_samples=0), "`num_samples` must be a positive integer or None"),
        (dict(every_n_epochs=0), "`every_n_epochs` must be an integer >= 1"),
        (dict(input_std=[0.0]), "`input_std` must be non-empty and > 0"),
        (dict(clip="yes"), "`clip` must be 'auto', a \\(low, high\\) pair or None"),
        (dict(pixel_scale=0), "`pixel_scale` must be > 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CriticalSampleRatio(**kwargs)


def test_more_samples_than_the_split_warns_and_examines_all():
    import pytorch_lightning as pl

    from datamodules import NoisyDigits
    from memo_callbacks import CriticalSampleRatio
    from models import MLPClassifier

    dm = NoisyDigits(subset=100, batch_size=50)
    csr = CriticalSampleRatio(num_samples=1000, max_iter=2, unit="input", radius=0.1, step_size=0.1, noise_std=0.0)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[csr], num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match="1000 samples asked for but the split has 297; examining all 297"):
        trainer.fit(MLPClassifier((1, 8, 8), 10, hidden=(8,)), dm)


def test_measures_once_per_epoch_with_mid_epoch_validation():
    import pytorch_lightning as pl

    from datamodules import NoisyDigits
    from memo_callbacks import CriticalSampleRatio
    from models import MLPClassifier

    dm = NoisyDigits(subset=256, batch_size=32)  # 8 steps per epoch, validation every 4
    csr = CriticalSampleRatio(num_samples=20, max_iter=2, unit="input", radius=0.1, step_size=0.1, noise_std=0.0)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[csr], num_sanity_val_steps=0, val_check_interval=0.5)
    trainer.fit(MLPClassifier((1, 8, 8), 10, hidden=(8,)), dm)
    assert [h["epoch"] for h in csr.history] == [0, 1]
