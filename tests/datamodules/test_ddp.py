"""The noisy data is identical on every DDP rank, and the training shards cover the set (real DDP, gloo, CPU)."""

from pathlib import Path

import torch

from helpers import run_ddp_script

SCRIPT = """
import torch, pytorch_lightning as pl
from datamodules import NoisyDigits

class Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.seen = []
    def training_step(self, batch, _):
        self.seen.append(batch.index)
        return torch.nn.functional.cross_entropy(self.lin(batch.x.flatten(1)), batch.y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

dm = NoisyDigits(noise="random_inputs", noise_fraction=0.3, subset=1001, batch_size=100, seed=7)
model = Recorder()
trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=DEVICES, max_epochs=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model, dm)
torch.save({"x": dm.train_x, "y": dm.train_y, "mask": dm.noisy_mask, "seen": torch.cat(model.seen)},
           f"{OUT}/rank{trainer.global_rank}.pt")
"""


def test_identical_noise_on_two_ranks(tmp_path: Path):
    run_ddp_script(SCRIPT, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("x", "y", "mask"):
        assert torch.equal(r0[key], r1[key]), key
    assert int(r0["mask"].sum()) == round(0.3 * 1001)
    # Padded shards: 501 examples each, together every example of the 1001 (one repeated).
    assert len(r0["seen"]) == len(r1["seen"]) == 501
    assert set(torch.cat([r0["seen"], r1["seen"]]).tolist()) == set(range(1001))
