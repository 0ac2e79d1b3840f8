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
    for variant, metrics in results.items():
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
    a = fig9.main([*args, "--out", str(tmp_path / "a")])["randX"].rows
    b = fig9.main([*args, "--out", str(tmp_path / "b")])["randX"].rows
    assert a == b


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


def test_fig4_diagonal_measures():
    fig4 = load("fig4")
    m = torch.tensor([[4.0, 1.0], [2.0, 2.0]])
    assert fig4.diagonal_share(m) == pytest.approx(6 / 9)
    assert fig4.diagonal_dominance(m) == pytest.approx((4 / 1 + 2 / 2) / 2)


@pytest.mark.parametrize("figure", ["fig7", "fig8"])
def test_noise_level_figures(tmp_path: Path, figure: str):
    script = load(figure)
    results = script.main(["--quick", "--epochs", "1", "--hidden", "16", "--csr-samples", "20", "--max-iter", "3",
                           "--fractions", "0", "0.5", "--out", str(tmp_path)])
    assert set(results) == {0.0, 0.5}
    assert "train/acc_noisy" in results[0.5].rows[-1] and "train/acc_noisy" not in results[0.0].rows[-1]
    kind = "randY" if figure == "fig7" else "randX"
    config = json.loads((run_dir(tmp_path, figure, f"{kind}_0.50") / "config.json").read_text())
    assert config["fraction"] == 0.5
    assert_png(tmp_path / figure / f"{figure}.png")


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
    with pytest.raises(SystemExit, match="unknown dataset 'imagenet'"):
        fig9.main(["--dataset", "imagenet", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown variant 'randZ'"):
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
    # forgetting counts: at most every other epoch, or the never-learned mark (= epochs)
    f = saved["forgetting"]
    assert ((f <= 1) | (f == 3)).all()
    assert (folder / "table.md").read_text() == result["table"] and "| 0.4 | mem |" in result["table"]
    assert_png(folder / "memorization_scores.png")
