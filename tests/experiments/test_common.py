"""The helpers the figure scripts share (``experiments/common.py``): early stop at a target, noise levels, summaries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))

import common  # noqa: E402


class _Scripted(pl.LightningModule):
    """Logs a scripted ``train/acc`` per epoch; trains nothing that matters."""

    def __init__(self, accs: list[float]) -> None:
        super().__init__()
        self.accs = accs
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        self.log("train/acc", self.accs[self.current_epoch], on_step=False, on_epoch=True)
        return self.layer(batch[0]).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(accs: list[float], stop: common.StopWhenReached, max_epochs: int) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[stop], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_Scripted(accs))
    return trainer


@pytest.mark.parametrize(
    ("accs", "reached", "epochs_run"),
    [([0.5, 0.9, 1.0, 1.0, 1.0], 3, 3), ([1.0, 1.0], 1, 1), ([0.5, 0.99, 0.999], None, 3)],
)
def test_stop_when_reached(accs, reached, epochs_run):
    stop = common.StopWhenReached("train/acc", 1.0)
    trainer = _fit(accs, stop, max_epochs=len(accs))
    assert stop.reached_epoch == reached
    assert trainer.current_epoch == epochs_run


def test_stop_when_reached_state_survives_a_checkpoint():
    stop = common.StopWhenReached("train/acc", 0.9)
    _fit([0.5, 0.95], stop, max_epochs=2)
    restored = common.StopWhenReached("train/acc", 0.9)
    restored.load_state_dict(stop.state_dict())
    assert restored.reached_epoch == 2 and restored.state_key == stop.state_key
    assert common.StopWhenReached("train/acc", 0.5).state_key != stop.state_key


def test_noisy_datamodule_levels():
    assert common.noise_name("real", 0.0) == "real" and common.noise_name("randY", 0.0) == "real"
    assert common.noise_name("randX", 0.4) == "randX0.4"
    clean = common.noisy_datamodule("digits", "./data", "randY", 0.0)
    assert clean.noise == "none"
    noisy = common.noisy_datamodule("digits", "./data", "randY", 0.4)
    noisy.setup("fit")
    assert noisy.noise == "random_labels" and noisy.corruption.num_corrupted == round(0.4 * noisy.num_train)
    with pytest.raises(SystemExit, match=r"noise fractions must be in \[0, 1\], got 1.5"):
        common.noisy_datamodule("digits", "./data", "randY", 1.5)


def test_write_summary_replaces_the_previous_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = common.RunArgs(out=str(tmp_path))
    common.write_summary(run, "figX", {"a": [(1, 0.5), (2, 0.7)]})
    folder = common.write_summary(run, "figX", {"a": [(4, 0.25)]}, results=[{"x": 1}])
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("a")] == [(4, 0.25)]
    assert (tmp_path / "figX" / "results.json").read_text().replace(" ", "").replace("\n", "") == '[{"x":1}]'


def test_epoch_metrics_rows_hold_each_epochs_own_values():
    """Every row's clean/noisy accuracies belong to the same epoch as its overall accuracy (they are logged by the
    module after the callbacks' epoch-end hook, so a row taken too early would hold last epoch's)."""
    import pytorch_lightning as pl

    from datamodules import NoisyDigits
    from models import MLPClassifier

    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, batch_size=64)  # 750 clean, 750 noisy
    metrics = common.EpochMetrics()
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[metrics])
    trainer.fit(MLPClassifier((1, 8, 8), 10, hidden=(64,), lr=0.1), dm)
    assert [r["epoch"] for r in metrics.rows] == [0, 1, 2]
    for row in metrics.rows:
        assert row["train/acc"] == pytest.approx((row["train/acc_clean"] + row["train/acc_noisy"]) / 2, abs=1e-6)
    assert metrics.series("val/acc")[0] == [1, 2, 3]


def test_mean_std_formats_one_value_and_the_sample_std():
    from common import mean_std

    assert mean_std([0.5]) == "0.500"
    assert mean_std([0.9, 1.0, 1.1]) == "1.000 ± 0.100"  # sample std (n - 1)


def test_output_folder_and_write_table(tmp_path: Path, capsys):
    import json
    from dataclasses import dataclass

    from common import RunArgs, output_folder, write_table

    @dataclass
    class Config:
        seeds: tuple[int, ...] = (0, 1)

    run = RunArgs(out=str(tmp_path / "runs"))
    out = output_folder(run, "figX", Config())
    assert out == tmp_path / "runs" / "figX" and out.is_dir()
    blob = json.loads((out / "config.json").read_text())
    assert blob["config"] == {"seeds": [0, 1]} and blob["run"]["out"] == run.out and "torch" in blob
    write_table(out, [{"seed": 0, "auroc": 0.5}], "| seed | auroc |\n")
    assert json.loads((out / "results.json").read_text()) == [{"seed": 0, "auroc": 0.5}]
    assert (out / "table.md").read_text() == "| seed | auroc |\n" and "| seed | auroc |" in capsys.readouterr().out
