"""MemorizationSignals: logged AUROC/AP against the functional signals on the recorded history, TensorBoard read
back, EL2N/GraNd against the trained model, one vs two processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import run_ddp_script
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from datamodules import NoisyDigits
from memo_callbacks import ExampleDynamics, MemorizationSignals
from memo_callbacks.functional import signals as S

SCRIPT = """
import torch, pytorch_lightning as pl, torch.nn.functional as F
from torch import nn
from datamodules import NoisyDigits
from memo_callbacks import ExampleDynamics, MemorizationSignals

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

def run(devices, batch_size, strategy, root=None, epochs=4):
    torch.manual_seed(0)
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.4, subset=200, batch_size=batch_size, seed=3)
    cbs = [ExampleDynamics(filename=None), MemorizationSignals(early_epochs=(1, epochs - 1))]
    logger = pl.loggers.TensorBoardLogger(root, name="tb") if root else False
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=devices, max_epochs=epochs, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=cbs)
    model = Tiny()
    trainer.fit(model, dm)
    return trainer, model, dm, cbs

if __name__ == "__main__":
    trainer, _, _, cbs = run(DEVICES, 25, "ddp")
    torch.save((cbs[1].last_metrics, cbs[1].early_scores), f"{OUT}/rank{trainer.global_rank}.pt")
"""


def _run(tmp_path: Path, devices=1, batch_size=50, strategy="auto", root=None):
    ns = {"OUT": str(tmp_path), "DEVICES": devices, "__name__": "single"}
    exec(SCRIPT, ns)
    return ns["run"](devices, batch_size, strategy, root)


def test_metrics_match_functional_signals_and_tensorboard(tmp_path: Path):
    trainer, model, dm, (dyn, sig) = _run(tmp_path, root=tmp_path)
    h = dyn.history
    assert h.noisy.any() and not h.noisy.all()
    # the last EL2N / GraNd epoch is the final model: recompute them from it
    assert sorted(sig.early) == [1, 3]
    model.eval()
    with torch.no_grad():
        final_el2n = S.el2n(model(dm.train_x), dm.train_y)
    final_grand = S.grand(model, dm.train_x, dm.train_y)
    early = sig.early_scores
    torch.testing.assert_close(sig.early[3][0].float(), final_el2n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sig.early[3][1].float(), final_grand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(early["el2n"], (sig.early[1][0] + sig.early[3][0]) / 2)
    assert not torch.equal(sig.early[1], sig.early[3])
    expected = {
        "forgetting": S.forgetting_score(h.correct), "aum": S.area_under_margin(h.margin),
        "confidence": S.data_map(h.prob, h.correct).confidence, "el2n": early["el2n"], "grand": early["grand"],
    }
    for key, values in expected.items():
        ref = S.noise_detection(values, h.noisy, S.NOISE_SCORE_SIGN[key])
        assert sig.last_metrics[f"signals/{key}_auroc"] == pytest.approx(ref.auroc)
        assert sig.last_metrics[f"signals/{key}_ap"] == pytest.approx(ref.average_precision)
    assert sig.last_metrics["signals/aum_auroc"] > 0.6  # not trivial: margins do separate random labels

    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    events = acc.Scalars("signals/aum_auroc")
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert events[-1].value == pytest.approx(sig.last_metrics["signals/aum_auroc"], rel=1e-6)
    assert "signals/aum" in acc.Tags()["tensors"]
    assert "signals/data_map" in acc.Tags()["images"]
    image = acc.Images("signals/data_map")[-1]
    assert image.step == 3 and image.width > 100


def test_same_metrics_on_one_and_two_processes(tmp_path: Path):
    run_ddp_script(SCRIPT, tmp_path)
    _, _, _, (_, single) = _run(tmp_path)
    for r in (0, 1):
        metrics, early = torch.load(tmp_path / f"rank{r}.pt")
        assert metrics.keys() == single.last_metrics.keys()
        for k, v in metrics.items():
            assert v == pytest.approx(single.last_metrics[k], abs=1e-6), k
        for k, v in early.items():
            torch.testing.assert_close(v, single.early_scores[k], rtol=1e-4, atol=1e-5)


def test_argument_and_setup_errors(tmp_path: Path):
    with pytest.raises(TypeError, match="dynamics"):
        MemorizationSignals(dynamics=object())
    with pytest.raises(ValueError, match="signals"):
        MemorizationSignals(signals=("aum", "nope"))
    with pytest.raises(ValueError, match="early_epochs"):
        MemorizationSignals(early_epochs=(-1,))
    with pytest.raises(TypeError, match="early_epochs"):
        MemorizationSignals(early_epochs=3)
    with pytest.raises(ValueError, match="batch_size"):
        MemorizationSignals(batch_size=0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[MemorizationSignals()])
    ns = {"OUT": str(tmp_path), "DEVICES": 1, "__name__": "single"}
    exec(SCRIPT, ns)
    with pytest.raises(RuntimeError, match="needs an ExampleDynamics"):
        trainer.fit(ns["Tiny"](), NoisyDigits(noise="random_labels", noise_fraction=0.4, subset=50, seed=0))
