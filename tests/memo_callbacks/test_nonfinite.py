"""A diverged model (NaN/inf logits or gradients) never reads as a result: NaN logged with a warning, or a clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from datamodules import NoisyDigits
from memo_callbacks import CriticalSampleRatio, ExampleDynamics, LossSensitivity
from memo_callbacks.functional.dynamics import example_outcomes
from memo_callbacks.functional.gini import gini
from memo_callbacks.functional.lass import LASSConfig, lass
from models import MLPClassifier
from tests.helpers import quiet_trainer, run_ddp_script


class PoisonAt(pl.Callback):
    """Sets every weight to ``value`` at the start of training epoch ``epoch`` (a model that diverged then)."""

    def __init__(self, epoch: int = 1, value: float = float("nan")) -> None:
        self.epoch, self.value = epoch, value

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(self.value)


def _fit(tmp_path: Path, callbacks, **kw) -> None:
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.2, subset=200, batch_size=50, seed=0, data_dir=str(tmp_path))
    model = MLPClassifier(in_shape=(1, 8, 8), num_classes=10, hidden=(16,))
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[PoisonAt(), *callbacks], **kw).fit(model, dm)


def test_lass_rejects_non_finite_x():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.zeros(3, 4)
    for value in (float("nan"), float("inf")):
        x[1, 2] = value
        with pytest.raises(ValueError, match=r"`x` must be finite, got 1 NaN or infinite"):
            lass(model, x, radius=0.1, step_size=0.01, noise_std=0.0, max_iter=3)


class _Marked(nn.Module):
    """A linear model whose logits are ``value`` for the inputs whose first coordinate is exactly 7 (a local blow-up)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.value = value

    def forward(self, x):
        out = self.lin(x.flatten(1))
        hit = (x.flatten(1)[:, 0] == 7.0).unsqueeze(1)
        return torch.where(hit, torch.full_like(out, self.value), out)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("certify", [False, "ibp"])
def test_lass_non_finite_clean_logits_neither_critical_nor_not(value, certify):
    torch.manual_seed(0)
    model = _Marked(value)
    x = torch.randn(6, 4)
    x[[1, 4], 0] = 7.0
    out = lass(model, x, radius=5.0, step_size=1.0, noise_std=0.0, max_iter=10, batch_size=2, certify=certify)
    assert out.nonfinite.tolist() == [False, True, False, False, True, False]
    assert not bool(out.critical[[1, 4]].any()) and out.iterations[[1, 4]].tolist() == [0, 0]
    # the finite samples get exactly what a search without the diverged ones gives
    keep = [0, 2, 3, 5]
    ref = lass(model, x[keep], radius=5.0, step_size=1.0, noise_std=0.0, max_iter=10, sample_ids=torch.tensor(keep),
               certify=certify)
    assert out.critical[keep].tolist() == ref.critical.tolist()
    assert out.iterations[keep].tolist() == ref.iterations.tolist()
    assert not bool(ref.nonfinite.any())


def test_gini_of_non_finite_raises():
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"`values` must be finite, got 1 non-finite"):
            gini(torch.tensor([1.0, value, 2.0]))


def test_example_outcomes_non_finite_rows_not_correct_nan_loss():
    logits = torch.tensor([[5.0, 0.0], [float("nan"), 0.0], [float("inf"), 0.0], [0.0, 3.0]])
    correct, loss = example_outcomes(logits, torch.tensor([0, 0, 0, 1]))
    assert correct.tolist() == [True, False, False, True]  # argmax(NaN row) would say class 0
    assert loss[[1, 2]].isnan().all() and torch.isfinite(loss[[0, 3]]).all()


def test_csr_logs_nan_and_warns_when_the_model_diverged(tmp_path: Path):
    csr = CriticalSampleRatio(num_samples=30, lass=LASSConfig(max_iter=3), certify=False)
    with pytest.warns(UserWarning, match=r"CriticalSampleRatio: epoch 1, split 'val': 30 of 30 examined samples have "
                                         r"non-finite .* the model diverged; csr/val is logged as NaN"):
        _fit(tmp_path, [csr])
    by_epoch = {e["epoch"]: e for e in csr.history}
    assert math.isfinite(by_epoch[0]["csr/val"])  # before the divergence: a ratio
    assert math.isnan(by_epoch[1]["csr/val"]) and math.isnan(by_epoch[1]["csr/val_iterations"])


def test_example_dynamics_counts_diverged_rows_as_not_fitted(tmp_path: Path):
    cb = ExampleDynamics(filename=None)
    with pytest.warns(UserWarning, match=r"ExampleDynamics: epoch 1: 200 example\(s\) have non-finite .* diverged"):
        _fit(tmp_path, [cb])
    h = cb.history
    assert (h.correct[1] == 0).all()  # not class-0 hits
    assert h.loss[1].isnan().all() and torch.isfinite(h.loss[0]).all()
    assert h.margin[1].isnan().all() and h.prob[1].isnan().all()


def test_loss_sensitivity_logs_nan_gini_without_crashing(tmp_path: Path):
    cb = LossSensitivity(mode="proxy", norm="l2")
    with pytest.warns(UserWarning, match=r"LossSensitivity: epoch 1: \d+ example\(s\) have non-finite .* diverged"):
        _fit(tmp_path, [cb])
    assert math.isfinite(cb.history[0]["gini"]) and math.isnan(cb.history[1]["gini"])


def test_csr_divergence_counts_are_summed_over_two_ddp_ranks(tmp_path: Path):
    run_ddp_script(
        """
        import json, math, warnings
        import pytorch_lightning as pl
        import torch
        from datamodules import NoisyDigits
        from memo_callbacks import CriticalSampleRatio
        from memo_callbacks.functional.lass import LASSConfig
        from models import MLPClassifier

        class PoisonAt(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == 1:
                    with torch.no_grad():
                        for p in pl_module.parameters():
                            p.fill_(float("nan"))

        dm = NoisyDigits(subset=200, batch_size=50, seed=0, data_dir=OUT)
        csr = CriticalSampleRatio(num_samples=30, lass=LASSConfig(max_iter=3), certify=False)
        trainer = pl.Trainer(accelerator="cpu", devices=DEVICES, strategy="ddp", max_epochs=2, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, default_root_dir=OUT, callbacks=[PoisonAt(), csr])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(MLPClassifier(in_shape=(1, 8, 8), num_classes=10, hidden=(16,)), dm)
        messages = [str(w.message) for w in caught if "CriticalSampleRatio: epoch" in str(w.message)]
        values = [e["csr/val"] for e in csr.history]
        with open(f"{OUT}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"messages": messages, "finite": [math.isfinite(v) for v in values]}, f)
        """,
        tmp_path,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["finite"] == [True, False]  # every rank logs the same NaN at epoch 1
    assert len(ranks[0]["messages"]) == 1 and "30 of 30 examined samples" in ranks[0]["messages"][0]
    assert ranks[1]["messages"] == []  # rank zero only


@pytest.mark.parametrize("certify", ["ibp", "crown"])
def test_certify_screen_never_certifies_a_sample_with_non_finite_logits(certify):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")  # every logit row holds a NaN
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    out = lass(model, x, radius=0.01, step_size=0.01, noise_std=0.0, max_iter=3, certify=certify)
    assert not bool(out.certified.any()) and bool(out.nonfinite.all()) and not bool(out.critical.any())
