"""Under real two-process DDP (gloo, CPU) the logged metrics are those of all examples together, not rank means."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import run_ddp_script

SCRIPT = """
import torch, pytorch_lightning as pl
from datamodules import NoisyDigits
from models import MLPClassifier

class Record(pl.Callback):
    def __init__(self):
        self.rows = []
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            self.rows.append((pl_module(batch.x).argmax(1) == batch.y, batch.noisy))

torch.manual_seed(0)
# 90 training examples: 45 per rank in batches of 20, 20, 5, so per-rank ratios differ from the pooled one.
dm = NoisyDigits(noise="random_labels", noise_fraction=0.4, subset=90, batch_size=20, val_batch_size=40, seed=1)
model = MLPClassifier((1, 8, 8), 10, hidden=(16,), lr=0.5)
rec = Record()
trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=DEVICES, max_epochs=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, callbacks=[rec])
trainer.fit(model, dm)
correct = torch.cat([c for c, _ in rec.rows])
noisy = torch.cat([n for _, n in rec.rows])
torch.save({"correct": correct, "noisy": noisy, "state": model.state_dict(),
            "logged": {k: float(v) for k, v in trainer.callback_metrics.items()}},
           f"{OUT}/rank{trainer.global_rank}.pt")
"""


def test_metrics_are_exact_across_ranks(tmp_path: Path):
    from datamodules import NoisyDigits
    from models import MLPClassifier

    run_ddp_script(SCRIPT, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["logged"] == r1["logged"]
    correct = torch.cat([r0["correct"], r1["correct"]]).float()
    noisy = torch.cat([r0["noisy"], r1["noisy"]])
    logged = r0["logged"]
    assert len(correct) == 90
    rank_means = [float(r["correct"][r["noisy"]].float().mean()) for r in (r0, r1)]
    assert abs(sum(rank_means) / 2 - float(correct[noisy].mean())) > 1e-3  # averaging ranks would be caught
    torch.testing.assert_close(logged["train/acc"], float(correct.mean()), atol=1e-6, rtol=0)
    torch.testing.assert_close(logged["train/acc_noisy"], float(correct[noisy].mean()), atol=1e-6, rtol=0)
    torch.testing.assert_close(logged["train/acc_clean"], float(correct[~noisy].mean()), atol=1e-6, rtol=0)
    # Validation: the 297 held-out digits split 149 / 148, pooled exactly.
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.4, subset=90, seed=1)
    dm.setup("fit")
    model = MLPClassifier((1, 8, 8), 10, hidden=(16,))
    model.load_state_dict(r0["state"])
    model.eval()
    with torch.no_grad():
        acc = float((model(dm.val_x).argmax(1) == dm.val_y).float().mean())
    torch.testing.assert_close(logged["val/acc"], acc, atol=1e-6, rtol=0)
