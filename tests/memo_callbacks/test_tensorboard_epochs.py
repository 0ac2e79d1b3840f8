"""Epoch-level measurements written against the epoch (``by_epoch/...``) and the clean/noisy histograms, read back
with TensorBoard's own EventAccumulator and checked against the step-axis values and independent computations."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from datamodules import NoisyDigits
from memo_callbacks import CriticalSampleRatio, ExampleDynamics, LASSConfig, LossSensitivity
from memo_callbacks.utilities import add_epoch_layout, epoch_tag, log_epoch_histogram, log_epoch_scalars
from models import MLPClassifier

EPOCHS = 3


def slow_gini(g: torch.Tensor) -> float:
    """The O(N^2) definition: sum_i sum_j |g_i - g_j| / (2 N sum_i g_i)."""
    g = g.double()
    return float((g[:, None] - g[None, :]).abs().sum() / (2 * g.numel() * g.sum()))


def scalars(acc: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tb_epochs")
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.3, seed=0, batch_size=100)
    model = MLPClassifier((1, 8, 8), 10, hidden=(32,), lr=0.5)
    csr = CriticalSampleRatio(num_samples=40, train=True, num_train_samples=60, lass=LASSConfig(radius=3.0, max_iter=4))
    sens = LossSensitivity(mode="proxy")
    dyn = ExampleDynamics()
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=EPOCHS, callbacks=[csr, sens, dyn],
        logger=logger, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()
    return SimpleNamespace(dm=dm, csr=csr, sens=sens, dyn=dyn, acc=acc, trainer=trainer)


def test_csr_by_epoch_equals_the_step_axis_and_the_history(run):
    acc, tags = run.acc, run.acc.Tags()["scalars"]
    for key in ("csr/val", "csr/val_iterations", "csr/train", "csr/train_clean", "csr/train_noisy"):
        steps, values = scalars(acc, epoch_tag(key))
        assert steps == list(range(EPOCHS)), key
        _, step_axis = scalars(acc, key)  # Lightning's own, at the global step
        assert values == pytest.approx(step_axis, nan_ok=True)
        assert values == pytest.approx([h[key] for h in run.csr.history], nan_ok=True)
    assert [h["epoch"] for h in run.csr.history] == list(range(EPOCHS))
    assert scalars(acc, "csr/val")[0] != list(range(EPOCHS))  # the step axis really is the global step
    assert "csr/val_iterations_hist" in acc.Tags()["histograms"]
    assert not [t for t in tags if t.startswith("by_epoch/by_epoch")]


def test_gini_by_epoch_equals_the_step_axis_and_a_slow_gini_of_the_saved_g_bar(run):
    noisy = run.dm.noisy_mask.bool()
    for key in ("gini", "gini_clean", "gini_noisy"):
        steps, values = scalars(run.acc, epoch_tag(f"sensitivity/{key}"))
        assert steps == list(range(EPOCHS))
        assert values == pytest.approx(scalars(run.acc, f"sensitivity/{key}")[1], rel=1e-6)
    for path in run.sens.saved_paths:
        saved = torch.load(path)
        seen = saved["count"] > 0
        epoch = saved["epoch"]
        for key, part in (("gini", seen), ("gini_clean", seen & ~noisy), ("gini_noisy", seen & noisy)):
            value = scalars(run.acc, epoch_tag(f"sensitivity/{key}"))[1][epoch]
            assert value == pytest.approx(slow_gini(saved["g_bar"][part]), rel=1e-5)


def test_g_bar_histograms_clean_and_noisy_hold_exactly_those_examples(run):
    noisy = run.dm.noisy_mask.bool()
    hist = {t: run.acc.Histograms(t) for t in ("sensitivity/g_bar", "sensitivity/g_bar_clean", "sensitivity/g_bar_noisy")}
    assert all(len(h) == EPOCHS for h in hist.values())
    for e, path in enumerate(run.sens.saved_paths):
        saved = torch.load(path)
        seen = saved["count"] > 0
        for tag, part in (("sensitivity/g_bar_clean", seen & ~noisy), ("sensitivity/g_bar_noisy", seen & noisy)):
            h = hist[tag][e].histogram_value
            g = saved["g_bar"][part].double()
            assert h.num == part.sum() and part.sum() > 0
            assert h.sum == pytest.approx(float(g.sum()), rel=1e-6)
            assert (h.min, h.max) == pytest.approx((float(g.min()), float(g.max())), rel=1e-6)
            assert hist[tag][e].step == hist["sensitivity/g_bar"][e].step  # beside the existing histogram
        total = hist["sensitivity/g_bar"][e].histogram_value.num
        assert hist["sensitivity/g_bar_clean"][e].histogram_value.num + hist["sensitivity/g_bar_noisy"][e].histogram_value.num == total


def test_dynamics_by_epoch_and_first_learned_histograms_against_a_per_example_loop(run):
    saved = torch.load(run.dyn.saved_paths[0])
    correct, noisy = saved["correct"], run.dm.noisy_mask.bool()
    n = correct.shape[1]
    for e in range(EPOCHS):
        # first-learned epoch by a plain loop over examples and epochs
        first = torch.full((n,), -1, dtype=torch.long)
        for i in range(n):
            for r in range(e + 1):
                if correct[r, i] == 1:
                    first[i] = r
                    break
        for group, mask in (("clean", ~noisy), ("noisy", noisy)):
            steps, fit = scalars(run.acc, epoch_tag(f"dynamics/fit_{group}"))
            assert steps == list(range(EPOCHS))
            assert fit[e] == pytest.approx(float((correct[e][mask] == 1).double().mean()), rel=1e-6)
            assert scalars(run.acc, epoch_tag(f"dynamics/learned_{group}"))[1][e] == pytest.approx(
                float((first[mask] >= 0).double().mean()), rel=1e-6
            )
            learned = first[mask & (first >= 0)]
            events = run.acc.Histograms(f"dynamics/first_learned_epoch_{group}")
            event = next(ev for ev in events if ev.step == e)
            assert event.histogram_value.num == learned.numel()
            assert event.histogram_value.sum == pytest.approx(float(learned.sum()))
    for key in ("fit_all", "learned_all", "loss_all", "loss_noisy"):
        steps, values = scalars(run.acc, epoch_tag(f"dynamics/{key}"))
        assert steps == list(range(EPOCHS))
        assert values == pytest.approx(scalars(run.acc, f"dynamics/{key}")[1], rel=1e-6)


def test_custom_scalars_layout_merges_every_callback_and_matches_written_tags(run):
    events = run.acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(events[-1].tensor_proto.string_val[0])
    titles = {c.title for c in layout.category}
    assert titles == {"memorization: csr", "memorization: sensitivity", "memorization: dynamics"}
    tags = run.acc.Tags()["scalars"]
    for category in layout.category:
        for chart in category.chart:
            regexes = chart.multiline.tag
            matched = [t for t in tags if any(re.fullmatch(r.strip("^$"), t) for r in regexes)]
            assert matched and all(t.startswith("by_epoch/") for t in matched), chart.title


def test_helpers_write_nothing_off_rank_zero_or_without_tensorboard(tmp_path: Path):
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    other_rank = SimpleNamespace(is_global_zero=False, loggers=[tb])
    no_tb = SimpleNamespace(is_global_zero=True, loggers=[CSVLogger(tmp_path, name="csv")])
    for trainer in (other_rank, no_tb):
        assert log_epoch_scalars(trainer, {"csr/val": 0.5}, 1) == {}
        assert not log_epoch_histogram(trainer, "x", torch.ones(3), 1)
        add_epoch_layout(trainer, "c", {"chart": ["csr/val"]})
    assert not (tmp_path / "tb").exists()  # the writer was never even created
    rank_zero = SimpleNamespace(is_global_zero=True, loggers=[tb])
    assert log_epoch_scalars(rank_zero, {"csr/val": torch.tensor(0.25), "csr/train": float("nan")}, 4) == {
        "by_epoch/csr/val": 0.25, "by_epoch/csr/train": pytest.approx(float("nan"), nan_ok=True)
    }
    assert log_epoch_histogram(rank_zero, "g", torch.tensor([1.0, float("nan"), 3.0]), 2)
    assert not log_epoch_histogram(rank_zero, "empty", torch.tensor([float("inf")]), 2)
    tb.experiment.flush()
    acc = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "histograms": 0}).Reload()
    assert scalars(acc, "by_epoch/csr/val") == ([4], [0.25])
    h = acc.Histograms("by_epoch/g")[0]
    assert (h.step, h.histogram_value.num, h.histogram_value.sum) == (2, 2, 4.0)
    assert "by_epoch/empty" not in acc.Tags()["histograms"]
