"""The figure scripts 2, 5 and 6 end to end on scikit-learn's digits, with tiny settings.

Each test runs a script's ``main`` as a user would (flags), then reads its outputs back: the resolved config, the
TensorBoard event files (with TensorBoard's own reader), the summary curves, ``results.json`` and the PNG.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import EXPERIMENTS, accumulator, assert_png, load, run_dir, scalars  # noqa: E402,F401


def test_fig5_capacity_sweep(tmp_path):
    fig5 = load("fig5")
    results = fig5.main(["--dataset", "digits", "--epochs", "2", "--batch-size", "32", "--lr", "0.1",
                         "--hidden-units", "16", "64", "--variants", "randY", "--fractions", "0", "0.8",
                         "--out", str(tmp_path)])
    assert [(r["variant"], r["fraction"], r["hidden"]) for r in results] == [
        ("real", 0.0, 16), ("real", 0.0, 64), ("randY", 0.8, 16), ("randY", 0.8, 64)
    ]
    for r in results:
        assert 0.0 <= r["final_val_acc"] <= r["best_val_acc"] <= 1.0
        assert r["best_epoch"] in (1, 2)
        folder = run_dir(tmp_path, "fig5", f"{fig5.noise_name(r['variant'], r['fraction'])}_h{r['hidden']}")
        config = json.loads((folder / "config.json").read_text())
        assert config["config"]["hidden_units"] == [16, 64] and config["hidden"] == r["hidden"]
        val = scalars(folder, "val/acc")
        assert len(val) == 2  # one point per epoch
        assert max(v for _, v in val) == pytest.approx(r["best_val_acc"])
        assert val[-1][1] == pytest.approx(r["final_val_acc"])
        assert not list(folder.glob("checkpoints"))  # sweeps keep no checkpoints
    real = [r for r in results if r["variant"] == "real"]
    noisy = [r for r in results if r["variant"] == "randY"]
    assert min(r["best_val_acc"] for r in real) > 0.5  # ten classes: chance is 0.1
    assert all(n["best_val_acc"] < r["best_val_acc"] for n, r in zip(noisy, real))  # 80% random labels hurt

    summary = tmp_path / "fig5" / "summary"
    for r in results:
        name = fig5.noise_name(r["variant"], r["fraction"])
        curve = dict(scalars(summary, f"fig5/{name}/best_val_acc"))
        assert curve[r["hidden"]] == pytest.approx(r["best_val_acc"])
    assert json.loads((tmp_path / "fig5" / "results.json").read_text()) == results
    assert_png(tmp_path / "fig5" / "fig5.png")


def test_fig6_stops_at_perfect_training_accuracy(tmp_path):
    fig6 = load("fig6")
    results = fig6.main(["--dataset", "digits", "--max-epochs", "15", "--batch-size", "10", "--lr", "0.3",
                         "--hidden-units", "128", "--examples", "60", "--dataset-sizes", "30", "60", "--hidden", "128",
                         "--variants", "randY", "--fractions", "0", "1", "--out", str(tmp_path)])
    # (128, 60) is in both sweeps but runs once per noise level.
    assert [(r["fraction"], r["hidden"], r["examples"]) for r in results] == [
        (0.0, 128, 60), (0.0, 128, 30), (1.0, 128, 60), (1.0, 128, 30)
    ]
    for r in results:
        name = f"{fig6.noise_name(r['variant'], r['fraction'])}_h{r['hidden']}_n{r['examples']}"
        folder = run_dir(tmp_path, "fig6", name)
        assert json.loads((folder / "config.json").read_text())["examples"] == r["examples"]
        train_acc = [v for _, v in scalars(folder, "train/acc")]
        assert len(train_acc) == r["epochs_run"]
        first_perfect = next((i + 1 for i, v in enumerate(train_acc) if v == 1.0), None)
        assert r["epochs_to_fit"] == first_perfect  # stopped at the first epoch with 100%, not before or after
        if r["epochs_to_fit"] is None:
            assert r["epochs_run"] == 15 and r["final_train_acc"] < 1.0
        else:
            assert r["epochs_run"] == r["epochs_to_fit"] and r["final_train_acc"] == 1.0
        assert "val/acc" not in accumulator(folder).Tags()["scalars"]  # no validation in this figure
    real = {r["examples"]: r for r in results if r["fraction"] == 0}
    noisy = {r["examples"]: r for r in results if r["fraction"] == 1}
    assert real[30]["epochs_to_fit"] is not None and real[60]["epochs_to_fit"] is not None
    assert noisy[60]["epochs_to_fit"] is None  # random labels: not memorised in 15 epochs (real data: about 10)
    summary = tmp_path / "fig6" / "summary"
    curve = dict(scalars(summary, "fig6/real/epochs_to_fit_vs_examples"))
    assert curve == {30: real[30]["epochs_to_fit"], 60: real[60]["epochs_to_fit"]}
    saved = json.loads((tmp_path / "fig6" / "results.json").read_text())
    assert saved == results
    assert_png(tmp_path / "fig6" / "fig6.png")


def test_fig2_filters(tmp_path):
    fig2 = load("fig2")
    results = fig2.main(["--dataset", "digits", "--crop", "0", "--width", "0.05", "--epochs", "2", "--subset", "600",
                         "--batch-size", "32", "--max-filters", "8", "--out", str(tmp_path)])
    assert set(results) == {"initialisation", "real", "randY"}
    assert results["initialisation"]["distance_from_init"] == 0.0
    for variant in ("real", "randY"):
        r = results[variant]
        assert -1.0 <= r["smoothness"] <= 1.0
        assert r["distance_from_init"] > 0.0
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0
        folder = run_dir(tmp_path, "fig2", variant)
        assert json.loads((folder / "config.json").read_text())["variant"] == variant
        acc = accumulator(folder)
        images = acc.Images("filters/conv1")
        assert [e.step for e in images] == [0, 1, 2]  # before training and after each epoch
        assert images[0].width > 0 and images[0].height > 0
        assert len(acc.Scalars("val/acc")) == 2
    assert results["real"]["val_acc"] > 0.4  # chance is 0.1
    assert results["initialisation"]["train_acc"] is None  # nothing trained: no accuracy, not a made-up one
    assert json.loads((tmp_path / "fig2" / "results.json").read_text()) == results
    assert_png(tmp_path / "fig2" / "fig2.png")


def test_fig2_smoothness_matches_numpy_reference():
    fig2 = load("fig2")
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 3, 5, 5, generator=g).cumsum(dim=-1)  # some smooth, all different
    got = fig2.smoothness(weight)
    for f, w in enumerate(weight.numpy()):
        pairs = [(w[c, i, j], w[c, i, j + 1]) for c in range(3) for i in range(5) for j in range(4)]
        pairs += [(w[c, i, j], w[c, i + 1, j]) for c in range(3) for i in range(4) for j in range(5)]
        a, b = np.array(pairs).T
        assert got[f].item() == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-6)
    iid = fig2.smoothness(torch.randn(2000, 3, 5, 5, generator=g))
    assert abs(iid.mean().item()) < 0.02  # i.i.d. weights: no spatial correlation


def test_fig6_rejects_a_bad_cap(tmp_path):
    with pytest.raises(SystemExit, match="--max-epochs must be an int >= 1, got 0"):
        load("fig6").main(["--dataset", "digits", "--max-epochs", "0", "--out", str(tmp_path)])


def test_fig2_first_conv_needs_a_convolution():
    with pytest.raises(ValueError, match="Sequential has no nn.Conv2d layer"):
        load("fig2").first_conv(torch.nn.Sequential(torch.nn.Linear(2, 2)))
