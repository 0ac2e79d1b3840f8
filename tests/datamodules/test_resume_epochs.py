"""Mid-epoch resume in any epoch: the resumed run trains on exactly the batches an uninterrupted run would, so its
weights and every callback's history are bit-identical (one process here, two in ``test_ddp.py``)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from datamodules import NoisyDigits
from memo_callbacks import CriticalSampleRatio, ExampleDynamics, LASSConfig, LossSensitivity
from models import MLPClassifier


class Seen(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch_idx, batch.index.clone()))


def _run(root, ckpt=None, max_steps=-1, checkpoint=False):
    pl.seed_everything(0, verbose=False)
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.2, subset=500, batch_size=100, seed=0)  # 5 steps/epoch
    callbacks = [
        Seen(),
        ExampleDynamics(),
        LossSensitivity(mode="proxy"),
        CriticalSampleRatio(num_samples=40, certify=False, lass=LASSConfig(radius=3.0, max_iter=5)),
    ]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}-{step}", every_n_train_steps=3))
    trainer = pl.Trainer(max_epochs=3, max_steps=max_steps, logger=False, default_root_dir=root, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=checkpoint, num_sanity_val_steps=0,
                         limit_val_batches=1, callbacks=callbacks)
    model = MLPClassifier((1, 8, 8), 10, hidden=(16,), lr=0.1)
    trainer.fit(model, dm, ckpt_path=ckpt)
    return model, callbacks


@pytest.mark.parametrize("step", [3, 6, 12])  # mid-epoch 0 (3 of 5 batches), mid-epoch 1 (1 of 5), mid-epoch 2 (2 of 5)
def test_mid_epoch_resume_in_any_epoch_is_bit_identical(tmp_path, step):
    straight, s_cbs = _run(tmp_path / "straight")
    first, f_cbs = _run(tmp_path / "first", max_steps=step, checkpoint=True)
    ckpt = tmp_path / "first" / f"epoch={step // 5}-step={step}.ckpt"
    assert ckpt.exists()
    resumed, r_cbs = _run(tmp_path / "resumed", ckpt=str(ckpt))
    seen = f_cbs[0].seen + r_cbs[0].seen
    assert [(e, i) for e, i, _ in seen] == [(e, i) for e, i, _ in s_cbs[0].seen]  # no batch twice, none skipped
    for (_, _, a), (_, _, b) in zip(seen, s_cbs[0].seen):
        assert torch.equal(a, b)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        assert torch.equal(a, b)
    dyn_s, dyn_r = s_cbs[1].history, r_cbs[1].history
    assert torch.equal(dyn_r.correct, dyn_s.correct) and torch.equal(dyn_r.loss, dyn_s.loss)
    assert torch.equal(r_cbs[2].total_sum, s_cbs[2].total_sum) and torch.equal(r_cbs[2].total_count, s_cbs[2].total_count)
    drop = lambda h: [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in h]  # noqa: E731 wall clock
    assert drop(r_cbs[2].history) == drop(s_cbs[2].history)
    assert drop(r_cbs[3].history) == drop(s_cbs[3].history)
