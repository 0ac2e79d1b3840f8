"""CriticalSampleRatio: the logged ratios against LASS run by hand, TensorBoard read-back, DDP, resume, errors."""

import dataclasses
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
from memo_callbacks import CriticalSampleRatio, LASSConfig
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


@pytest.mark.parametrize("clip", [None, "auto"], ids=["paper_box_by_default", "clip_auto"])
def test_logs_match_lass_on_the_seeded_subset_and_tensorboard(tmp_path: Path, clip):
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, batch_size=64, seed=0)
    config = LASSConfig(radius=15.0, step_size=4.0, noise_std=2.0, max_iter=20, seed=3)
    if clip is not None:
        config = dataclasses.replace(config, clip=clip)
    csr = CriticalSampleRatio(num_samples=120, lass=config, train=True, num_train_samples=150)
    model = Classifier()
    trainer(tmp_path, [csr], max_epochs=2, limit_train_batches=3).fit(model, dm)
    # Independent evaluation with the final model: the same seeded subsets and parameters, by hand.
    r, a, b = (pixels_to_input_units(v, dm.std) for v in (15.0, 4.0, 2.0))
    bounds = tuple(t.view(-1, 1, 1) for t in dm.input_bounds)
    ids = subset(dm.num_val, 120, 3)
    by_clip = {
        c: lass(model, dm.val_x[ids], radius=r, step_size=a, noise_std=b, max_iter=20, seed=3, sample_ids=ids, clip=c)
        for c in (None, bounds)
    }
    # Clipping to the valid range changes the answer here: the default must be the paper's box, not the clipped one.
    assert not torch.equal(by_clip[None].critical, by_clip[bounds].critical)
    clip = None if clip is None else bounds
    out = by_clip[clip]
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
    csr = CriticalSampleRatio(num_samples=None, lass=LASSConfig(unit="input", radius=0.02, step_size=0.005,
                                                             noise_std=0.005, max_iter=15))
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

    adapted = CriticalSampleRatio(num_samples=None, lass=csr.lass,
                                  batch_adapter=lambda b: ParsedBatch(b["pixels"], b["class"]))

    class WeirdModel(Classifier):
        def validation_step(self, batch, _):
            return None

    trainer(tmp_path, [adapted]).validate(WeirdModel(), DataLoader(Weird(), batch_size=16))
    assert adapted.history[-1]["csr/val"] == pytest.approx(csr.history[-1]["csr/val"])
    bad = CriticalSampleRatio(lass=LASSConfig(unit="input"))
    with pytest.raises(TypeError, match="batch_adapter"):
        trainer(tmp_path, [bad]).validate(WeirdModel(), DataLoader(Weird(), batch_size=16))


def test_zero_radius_gives_zero(tmp_path: Path):
    dm = NoisyDigits(batch_size=128)
    csr = CriticalSampleRatio(num_samples=50, lass=LASSConfig(radius=0.0, max_iter=5))
    trainer(tmp_path, [csr]).validate(Classifier(), dm)
    assert csr.history[-1]["csr/val"] == 0.0


def test_resume_keeps_history(tmp_path: Path):
    dm = NoisyDigits(batch_size=256)
    kw = dict(num_samples=30, lass=LASSConfig(radius=40.0, max_iter=5))
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
from memo_callbacks import CriticalSampleRatio, LASSConfig

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    def forward(self, x):
        return self.net(x)
    def validation_step(self, batch, _):
        pass

csr = CriticalSampleRatio(num_samples=101, lass=LASSConfig(radius=3.0, step_size=1.0, noise_std=1.0, max_iter=20, seed=3))
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
    ok = CriticalSampleRatio(input_std=[0.5], num_samples=8, lass=LASSConfig(max_iter=3))
    trainer(tmp_path, [ok]).validate(Classifier(), loader)
    assert ok.history[-1]["csr/val"] == 0.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_samples=0), ValueError, "`num_samples` must be a positive integer or None"),
        (dict(num_samples=True), ValueError, "`num_samples` must be a positive integer or None .*got True"),
        (dict(num_train_samples=2.5), ValueError, "`num_train_samples` must be a positive integer or None .*got 2.5"),
        (dict(every_n_epochs=0), ValueError, "`every_n_epochs` must be an integer >= 1"),
        (dict(batch_size="8"), ValueError, "`batch_size` must be an integer >= 1, got '8'"),
        (dict(batch_size=True), ValueError, "`batch_size` must be an integer >= 1, got True"),
        (dict(input_std=[0.0]), ValueError, "`input_std` must be non-empty, finite and > 0"),
        (dict(input_std=[float("inf")]), ValueError, "`input_std` must be non-empty, finite and > 0"),
        (dict(input_std="wide"), ValueError, "`input_std` must be a positive number or a sequence of them, got 'wide'"),
        (dict(pixel_scale=0), ValueError, "`pixel_scale` must be a finite number > 0 or None, got 0"),
        (dict(pixel_scale="1/255"), ValueError, "`pixel_scale` must be a finite number > 0 or None, got '1/255'"),
        (dict(train="yes"), TypeError, "`train` must be a bool, got 'yes'"),
        (dict(batch_adapter=3), TypeError, "`batch_adapter` must be callable or None, got int"),
        (dict(lass=dict(radius=1.0)), TypeError, "`lass` must be a LASSConfig or None, got dict"),
        (dict(radius=0.3), TypeError, "unexpected keyword argument 'radius'"),  # the LASS settings live in `lass`
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CriticalSampleRatio(**kwargs)


BAD_LASS = [
    (dict(radius=float("inf")), ValueError, r"`radius` must be a finite number >= 0, got inf"),
    (dict(radius=-0.3), ValueError, r"`radius` must be a finite number >= 0, got -0.3"),
    (dict(step_size=float("nan")), ValueError, r"`step_size` must be a finite number >= 0, got nan"),
    (dict(noise_std="0.2"), TypeError, r"`noise_std` must be a finite number >= 0, got '0.2' \(str\)"),
    (dict(radius=True), TypeError, r"`radius` must be a finite number >= 0, got True \(bool\)"),
    (dict(unit="pixels"), ValueError, r"`unit` must be one of \('pixel', 'input'\), got 'pixels'"),
    (dict(max_iter=0), ValueError, r"`max_iter` must be an int >= 1, got 0"),
    (dict(max_iter=2.0), TypeError, r"`max_iter` must be an int >= 1, got 2.0 \(float\)"),
    (dict(seed="x"), TypeError, r"`seed` must be an int \(a python or numpy integer, not a bool\), got 'x'"),
    (dict(seed=None), TypeError, r"`seed` must be an int .*got None"),
    (dict(seed=1.5), TypeError, r"`seed` must be an int .*got 1.5"),
    (dict(seed=torch.tensor(0)), TypeError, r"`seed` must be an int .*got tensor\(0\)"),
    (dict(clip="yes"), ValueError, r"`clip` must be None, 'auto' or a \(low, high\) pair, got 'yes'"),
    (dict(clip=True), ValueError, r"`clip` must be None, 'auto' or a \(low, high\) pair, got True"),
    (dict(clip=(1.0, 0.0)), ValueError, r"`clip` must have low <= high"),
    (dict(clip=(0.0, float("inf"))), ValueError, r"`clip\[1\]` must be a finite number or a tensor of them, got inf"),
    (dict(clip=(0.0, "top")), ValueError, r"`clip\[1\]` must be a finite number or a tensor of them, got 'top'"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_LASS, ids=[f"{k}={v!r}" for d, _, _ in BAD_LASS for k, v in d.items()])
def test_bad_lass_config(kwargs, error, match):
    with pytest.raises(error, match=match):
        LASSConfig(**kwargs)


def test_lass_config_defaults_are_the_papers_and_frozen():
    import numpy as np

    config = CriticalSampleRatio().lass
    assert config == LASSConfig(radius=0.3, step_size=0.25, noise_std=0.2, unit="pixel", max_iter=100, clip=None, seed=0)
    assert LASSConfig(seed=np.int64(4)).seed == 4 and type(LASSConfig(seed=np.int64(4)).seed) is int
    assert LASSConfig(clip=[0, 1]).clip == (0.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.radius = 1.0


def test_clip_auto_needs_input_bounds(tmp_path: Path):
    loader = DataLoader(TensorDataset(torch.randn(8, 64), torch.zeros(8, dtype=torch.long)), batch_size=4)
    csr = CriticalSampleRatio(input_std=[0.5], num_samples=8, lass=LASSConfig(max_iter=3, clip="auto"))
    with pytest.raises(ValueError, match=r"LASSConfig\(clip='auto'\) needs a datamodule with `input_bounds`"):
        trainer(tmp_path, [csr]).validate(Classifier(), loader)


def test_more_samples_than_the_split_warns_and_examines_all():
    import pytorch_lightning as pl

    from datamodules import NoisyDigits
    from memo_callbacks import CriticalSampleRatio, LASSConfig
    from models import MLPClassifier

    dm = NoisyDigits(subset=100, batch_size=50)
    csr = CriticalSampleRatio(num_samples=1000, lass=LASSConfig(max_iter=2, unit="input", radius=0.1, step_size=0.1,
                                                                noise_std=0.0))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[csr], num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match="1000 samples asked for but the split has 297; examining all 297"):
        trainer.fit(MLPClassifier((1, 8, 8), 10, hidden=(8,)), dm)


def test_measures_once_per_epoch_with_mid_epoch_validation():
    import pytorch_lightning as pl

    from datamodules import NoisyDigits
    from memo_callbacks import CriticalSampleRatio, LASSConfig
    from models import MLPClassifier

    dm = NoisyDigits(subset=256, batch_size=32)  # 8 steps per epoch, validation every 4
    csr = CriticalSampleRatio(num_samples=20, lass=LASSConfig(max_iter=2, unit="input", radius=0.1, step_size=0.1,
                                                              noise_std=0.0))
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[csr], num_sanity_val_steps=0, val_check_interval=0.5)
    trainer.fit(MLPClassifier((1, 8, 8), 10, hidden=(8,)), dm)
    assert [h["epoch"] for h in csr.history] == [0, 1]


def test_epochs_schedule_and_seconds(tmp_path: Path):
    import time

    from memo_callbacks import log_spaced_epochs

    dm = NoisyDigits(subset=256, batch_size=64)
    csr = CriticalSampleRatio(num_samples=20, epochs=[3, 0, 3], lass=LASSConfig(radius=3.0, max_iter=3))
    assert csr.epochs == (0, 3)
    start = time.perf_counter()
    trainer(tmp_path, [csr], max_epochs=5, limit_train_batches=1).fit(Classifier(), dm)
    total = time.perf_counter() - start
    assert [h["epoch"] for h in csr.history] == [0, 3]
    seconds = [h["csr/seconds"] for h in csr.history]
    assert all(0 < s < total for s in seconds)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0")).Reload()
    assert [e.value for e in events.Scalars("csr/seconds")] == pytest.approx(seconds)
    # every_n_epochs still works beside it
    every = CriticalSampleRatio(num_samples=10, every_n_epochs=2, lass=LASSConfig(radius=3.0, max_iter=2))
    trainer(tmp_path / "b", [every], max_epochs=4, limit_train_batches=1).fit(Classifier(), dm)
    assert [h["epoch"] for h in every.history] == [1, 3]
    # a log-spaced schedule: 0-based epochs e with e + 1 on a geometric grid from 1 to max_epochs
    for max_epochs, num in ((100, 6), (200, 12), (7, 3), (3, 10), (1, 4), (50, 1)):
        got = log_spaced_epochs(max_epochs, num)
        want = sorted({min(max_epochs, max(1, round(max_epochs ** (k / (num - 1))))) - 1 for k in range(num)}) \
            if num > 1 and max_epochs > 1 else [max_epochs - 1]
        assert got == want and got[-1] == max_epochs - 1 and len(got) <= num
        assert got[0] == 0 or num == 1 or max_epochs == 1
    assert log_spaced_epochs(100, 6) == [0, 2, 5, 15, 39, 99]
    grid = log_spaced_epochs(1000, 20)
    gaps = [b - a for a, b in zip(grid, grid[1:])]
    assert gaps == sorted(gaps)  # dense early, sparse late


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=[]), r"`epochs` must be a non-empty sequence"),
        (dict(epochs="1,2"), r"`epochs` must be a non-empty sequence"),
        (dict(epochs=[0, -1]), r"`epochs` must hold epoch numbers \(integers >= 0, 0-based\), got -1"),
        (dict(epochs=[1.5]), r"got 1.5 in \[1.5\]"),
        (dict(epochs=[True]), r"got True"),
        (dict(epochs=[1, 2], every_n_epochs=3), r"pass `epochs` or `every_n_epochs`, not both"),
    ],
)
def test_bad_epochs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CriticalSampleRatio(**kwargs)


@pytest.mark.parametrize("args, match", [((0, 3), "`max_epochs` must be an int >= 1"), ((10, 0), "`num` must be an int >= 1"),
                                         ((10.0, 3), "`max_epochs` must be an int")])
def test_bad_log_spaced_epochs(args, match):
    from memo_callbacks import log_spaced_epochs

    with pytest.raises((TypeError, ValueError), match=match):
        log_spaced_epochs(*args)
