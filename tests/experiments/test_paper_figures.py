"""The figure scripts 1, 3, 4, 7-11 end to end on scikit-learn's digits, with tiny settings.

Each runs a script's ``main`` with command-line flags, then reads its outputs back: the resolved config, the
TensorBoard event files (with TensorBoard's own reader), the returned numbers and the PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import accumulator, assert_png, load, run_dir


def test_fig9_csr_curves(tmp_path: Path):
    fig9 = load("fig9")
    results = fig9.main(["--quick", "--epochs", "2", "--hidden", "32", "--csr-samples", "40", "--max-iter", "5",
                         "--variants", "real", "randY", "--out", str(tmp_path)])
    assert set(results) == {"real", "randY"}
    for variant, (metrics,) in results.items():
        epochs, csr = metrics.series("csr/val")
        assert epochs == [1, 2] and all(0.0 <= c <= 1.0 for c in csr)
        folder = run_dir(tmp_path, "fig9", variant)
        config = json.loads((folder / "config.json").read_text())
        assert config["config"]["dataset"] == "digits" and config["config"]["radius"] == 3.0  # --quick applied
        assert config["config"]["hidden"] == [32] and config["name"] == variant  # explicit flags override it
        logged = [e.value for e in accumulator(folder).Scalars("csr/val")]
        assert logged == pytest.approx(csr)
    assert_png(tmp_path / "fig9" / "fig9.png")


def test_fig9_same_seed_same_numbers(tmp_path: Path):
    fig9 = load("fig9")
    args = ["--quick", "--epochs", "1", "--hidden", "16", "--csr-samples", "30", "--max-iter", "3",
            "--variants", "randX"]
    a = fig9.main([*args, "--out", str(tmp_path / "a")])["randX"][0].rows
    b = fig9.main([*args, "--out", str(tmp_path / "b")])["randX"][0].rows
    drop = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert drop(a) == drop(b)  # everything but the wall-clock csr/seconds
    assert all("csr/seconds" in r for r in a if "csr/val" in r)


def test_fig9_seeds_run_every_variant_per_seed(tmp_path: Path):
    fig9 = load("fig9")
    results = fig9.main(["--quick", "--epochs", "1", "--hidden", "8", "--csr-samples", "10", "--max-iter", "2",
                         "--variants", "real", "--seeds", "0", "1", "--out", str(tmp_path)])
    (first, second), = results.values()
    assert first.rows != second.rows
    assert json.loads((run_dir(tmp_path, "fig9", "real/seed1") / "config.json").read_text())["seed"] == 1
    assert_png(tmp_path / "fig9" / "fig9.png")


def test_fig1_ensemble(tmp_path: Path):
    fig1 = load("fig1")
    summary = fig1.main(["--quick", "--runs", "6", "--examples", "200", "--hidden", "16", "--out", str(tmp_path)])
    assert set(summary) == {"real", "randX", "randY"}
    for row in summary.values():
        assert 0.0 <= row["mean_rate"] <= 1.0 and row["std"] >= 0 and row["binomial_std"] >= 0
    rates = torch.load(tmp_path / "fig1" / "rates.pt")
    assert rates["real"]["rate"].shape == (200,)
    assert summary["real"]["mean_rate"] == pytest.approx(float(rates["real"]["rate"].mean()))
    assert "fig1/real/spread_ratio" in accumulator(tmp_path / "fig1").Tags()["scalars"]
    assert_png(tmp_path / "fig1" / "fig1.png")


def test_fig3_gini_points(tmp_path: Path):
    fig3 = load("fig3")
    results = fig3.main(["--quick", "--steps", "40", "80", "--window", "20", "--examples", "100", "--hidden", "8",
                         "--out", str(tmp_path)])
    assert set(results) == {"real", "random"}
    for rows in results.values():
        assert [r["steps"] for r in rows] == [40, 80]
        assert all(0.0 <= r["gini"] <= 1.0 and 0.0 <= r["gini_proxy"] <= 1.0 for r in rows)
    events = accumulator(tmp_path / "fig3")
    assert [e.step for e in events.Scalars("fig3/real/gini")] == [40, 80]
    assert_png(tmp_path / "fig3" / "fig3.png")


def test_fig4_matrix(tmp_path: Path):
    fig4 = load("fig4")
    summary = fig4.main(["--quick", "--steps", "60", "--window", "20", "--examples", "100", "--hidden", "8",
                         "--out", str(tmp_path)])
    matrices = torch.load(tmp_path / "fig4" / "matrices.pt")
    for name in ("real", "random"):
        m = matrices[name]
        assert m.shape == (10, 10) and (m >= 0).all()
        assert summary[name]["diagonal_share"] == pytest.approx(float(m.diagonal().sum() / m.sum()))
    assert_png(tmp_path / "fig4" / "fig4.png")


def test_sensitivity_engines_give_the_same_numbers():
    """The callback engine (Trainer + LossSensitivity) replays the functional engine's trajectory: same numbers."""
    runs = load("sensitivity_runs")
    dm = runs.fig3_datamodule("digits", "./unused", False, False, 100, 0)
    kw = dict(hidden=(8, 8), lr=0.05, batch_size=8, window=40, measure_every=2, seed=0, per_class=True, norm="l2")
    a = runs.run_protocol(dm, 60, engine="functional", **kw)  # a window (40) longer than nothing: 60 steps, one epoch
    b = runs.run_protocol(dm, 60, engine="callback", **kw)
    assert a.unrolled.steps.tolist() == list(range(1, 40, 2)) and float(a.g_bar.max()) > 0
    torch.testing.assert_close(b.g_bar, a.g_bar, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(b.class_matrix, a.class_matrix, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(b.proxy, a.proxy, rtol=1e-5, atol=1e-9)
    assert b.train_acc == a.train_acc


def test_fig3_callback_engine_norm_and_one_class_per_example_panel(tmp_path: Path):
    fig3 = load("fig3")
    args = ["--quick", "--steps", "30", "--window", "20", "--examples", "60", "--hidden", "8", "--norm", "linf",
            "--one-class-per-example"]
    a = fig3.main([*args, "--out", str(tmp_path / "a")])
    b = fig3.main([*args, "--engine", "callback", "--out", str(tmp_path / "b")])
    assert set(a) == {"real", "random", "real, 1 class/example", "random, 1 class/example"}
    for name in a:
        assert [r["gini"] for r in b[name]] == pytest.approx([r["gini"] for r in a[name]], rel=1e-5)
    config = json.loads((tmp_path / "b" / "fig3" / "config.json").read_text())["config"]
    assert config["norm"] == "linf" and config["engine"] == "callback"
    assert_png(tmp_path / "b" / "fig3" / "fig3.png")
    with pytest.raises(SystemExit, match="--norm must be l1, l2 or linf, got 'l3'"):
        fig3.main(["--quick", "--norm", "l3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--engine must be functional or callback, got 'gpu'"):
        fig3.main(["--quick", "--engine", "gpu", "--out", str(tmp_path)])


def test_fig4_shared_colour_scale():
    fig4 = load("fig4")
    scale = fig4.shared_log_scale({"real": torch.tensor([[4.0, 0.5], [0.0, 2.0]]), "random": torch.tensor([[9.0, 0.1]])})
    assert (scale.vmin, scale.vmax) == (pytest.approx(0.1), pytest.approx(9.0))


def test_fig4_diagonal_measures():
    fig4 = load("fig4")
    m = torch.tensor([[4.0, 1.0], [2.0, 2.0]])
    assert fig4.diagonal_share(m) == pytest.approx(6 / 9)
    assert fig4.diagonal_dominance(m) == pytest.approx((4 / 1 + 2 / 2) / 2)


@pytest.mark.parametrize("figure", ["fig7", "fig8"])
def test_noise_level_figures_run_both_noise_kinds(tmp_path: Path, figure: str):
    script = load(figure)
    results = script.main(["--quick", "--epochs", "1", "--hidden", "16", "--csr-samples", "20", "--max-iter", "3",
                           "--fractions", "0", "0.5", "--out", str(tmp_path)])
    assert set(results) == {"randY", "randX"}
    for kind in ("randY", "randX"):
        assert set(results[kind]) == {0.0, 0.5} and len(results[kind][0.5]) == 1
        assert "train/acc_noisy" in results[kind][0.5][0].rows[-1]
        assert "train/acc_noisy" not in results[kind][0.0][0].rows[-1]
        config = json.loads((run_dir(tmp_path, figure, f"{kind}_0.50/seed0") / "config.json").read_text())
        assert config["fraction"] == 0.5 and config["seed"] == 0
    assert results["randY"][0.0][0] is results["randX"][0.0][0]  # the clean run is shared by both kinds
    assert_png(tmp_path / figure / f"{figure}.png")


def test_noise_levels_csr_every_measures_only_those_epochs(tmp_path: Path):
    fig8 = load("fig8")
    fig8.main(["--quick", "--epochs", "4", "--hidden", "8", "--csr-samples", "10", "--max-iter", "2",
               "--csr-every", "2", "--fractions", "0", "0.5", "--noises", "randY", "--out", str(tmp_path)])
    events = accumulator(run_dir(tmp_path, "fig8", "real/seed0"))
    assert [e.step for e in events.Scalars("by_epoch/csr/val")] == [1, 3]  # epochs 2 and 4 (0-based steps 1, 3)
    assert_png(tmp_path / "fig8" / "fig8.png")


def test_paper_datasets_and_radius_of_figures_7_and_8():
    fig7, fig8 = load("fig7"), load("fig8")
    assert (fig7.Fig7Config.dataset, fig7.Fig7Config.model, fig7.Fig7Config.radius) == ("mnist", "mlp", 0.3)
    assert (fig8.Fig8Config.dataset, fig8.Fig8Config.model, fig8.Fig8Config.radius) == ("cifar10", "cnn", 0.3)
    assert fig7.Fig7Config.noises == fig8.Fig8Config.noises == ("randY", "randX")


def test_noise_levels_seeds_give_a_mean_and_band(tmp_path: Path):
    fig7 = load("fig7")
    results = fig7.main(["--quick", "--epochs", "2", "--hidden", "8", "--csr-samples", "10", "--max-iter", "2",
                         "--fractions", "0.5", "--noises", "randY", "--seeds", "0", "1", "--out", str(tmp_path)])
    runs = results["randY"][0.5]
    assert len(runs) == 2 and runs[0].series("train/acc") != runs[1].series("train/acc")  # different seeds differ
    for seed in (0, 1):
        assert json.loads((run_dir(tmp_path, "fig7", f"randY_0.50/seed{seed}") / "config.json").read_text())["seed"] == seed
    assert_png(tmp_path / "fig7" / "fig7.png")
    with pytest.raises(SystemExit, match=r"--noises must be among \['randX', 'randY'\], got \['randZ'\]"):
        fig7.main(["--quick", "--noises", "randZ", "--out", str(tmp_path)])


def test_seed_band_reference():
    common = load("common")
    xs, mean, low, high = common.seed_band([([1, 2, 3], [0.0, 1.0, 2.0]), ([1, 2], [2.0, 3.0])])
    assert (xs, mean, low, high) == ([1, 2], [1.0, 2.0], [0.0, 1.0], [2.0, 3.0])


def test_fig10_and_fig11_regularisers(tmp_path: Path):
    fig10 = load("fig10")
    curves = fig10.main(["--quick", "--epochs", "1", "--hidden", "16", "--regularisers", "dropout", "adversarial",
                         "--dropout", "0.5", "--adversarial", "0.5", "--adversarial-max-iter", "2",
                         "--out", str(tmp_path)])
    assert [s for s, _, _ in curves["dropout"]] == [0.0, 0.5]
    assert curves["dropout"][0] == curves["adversarial"][0]  # one shared baseline
    for pts in curves.values():
        assert all(0.0 <= t <= 1.0 and 0.0 <= v <= 1.0 for _, t, v in pts)
    config = json.loads((run_dir(tmp_path, "fig10", "adversarial_0.5/randY") / "config.json").read_text())
    assert config["regulariser"] == "adversarial" and config["strength"] == 0.5
    assert_png(tmp_path / "fig10" / "fig10.png")
    fig11 = load("fig11")
    runs = fig11.main(["--quick", "--epochs", "1", "--hidden", "16", "--regularisers", "dropout",
                       "--out", str(tmp_path)])
    assert set(runs) == {("dropout", 0.0), ("dropout", 0.5), ("dropout", 0.9)}
    assert_png(tmp_path / "fig11" / "fig11.png")


def test_unknown_dataset_and_variant_are_clear(tmp_path: Path):
    fig9 = load("fig9")
    with pytest.raises(SystemExit, match="--dataset must be mnist, cifar10, cifar10-jpg or digits, got 'imagenet'"):
        fig9.main(["--dataset", "imagenet", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--variants must be among \['randX', 'randY', 'real'\], got \['randZ'\]"):
        fig9.main(["--quick", "--variants", "randZ", "--out", str(tmp_path)])


def test_fig9_csr_every_measures_only_those_epochs(tmp_path: Path):
    fig9 = load("fig9")
    fig9.main(["--quick", "--epochs", "3", "--hidden", "16", "--csr-samples", "20", "--max-iter", "3",
               "--csr-every", "2", "--variants", "real", "--out", str(tmp_path)])
    events = accumulator(run_dir(tmp_path, "fig9", "real"))
    assert len(events.Scalars("csr/val")) == 1  # epoch 2 only: nothing logged (or plotted) for epochs 1 and 3


def test_memorization_scores_script(tmp_path: Path):
    script = load("memorization_scores")
    result = script.main(["--fractions", "0.4", "--seeds", "0", "--num-models", "6", "--epochs", "3",
                          "--hidden", "16", "--out", str(tmp_path)])
    folder = tmp_path / "memorization_scores"
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["num_models"] == 6 and config["config"]["fractions"] == [0.4]
    (row,) = result["rows"]
    assert json.loads((folder / "results.json").read_text()) == result["rows"]
    assert row["noisy"] == 600 and row["examples"] <= 1500
    for key, value in row.items():
        if key.startswith("auroc_"):
            assert 0.0 <= value <= 1.0
        if key.startswith("rho_"):
            assert -1.0 <= value <= 1.0
    saved = torch.load(folder / "scores.pt")["randY0.4_seed0"]
    noisy = saved["noisy"]
    assert int(noisy.sum()) == 600
    ok = saved["mem"].isfinite()
    assert row["mem_noisy"] == pytest.approx(float(saved["mem"][noisy & ok].mean()))
    # forgetting counts: at most every other epoch, or the never-learned mark (one above the largest count)
    f = saved["forgetting"]
    learned_max = float(f[f <= 1].max())
    assert ((f <= 1) | (f == learned_max + 1)).all()
    assert (folder / "table.md").read_text() == result["table"] and "| 0.4 | mem |" in result["table"]
    assert_png(folder / "memorization_scores.png")
