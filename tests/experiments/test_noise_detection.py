"""experiments/noise_detection.py with tiny settings: every signal and cleanlab scored, table and figure written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_png, load


def test_noise_detection_script(tmp_path: Path):
    pytest.importorskip("cleanlab")
    script = load("noise_detection")
    result = script.main(["--fractions", "0.4", "--seeds", "0", "--epochs", "3", "--early-epoch", "1", "--folds", "2",
                          "--hidden", "16", "--out", str(tmp_path)])
    folder = tmp_path / "noise_detection"
    assert json.loads((folder / "config.json").read_text())["config"]["folds"] == 2
    (row,) = result["rows"]
    assert json.loads((folder / "results.json").read_text()) == result["rows"]
    assert row["noisy"] == 600 and row["examples"] == 1500
    for name in script.SIGNALS:
        assert 0.0 <= row[f"auroc_{name}"] <= 1.0 and 0.0 <= row[f"ap_{name}"] <= 1.0
    # three epochs already separate random labels: noisy examples keep a low probability of their label
    assert row["auroc_confidence"] > 0.7 and row["auroc_cleanlab"] > 0.6
    assert 0 <= row["cleanlab_flag_recall"] <= 1
    assert (folder / "table.md").read_text() == result["table"] and "| 0.4 |" in result["table"]
    assert_png(folder / "noise_detection.png")


@pytest.mark.parametrize(("argv", "message"), [
    (["--early-epoch", "5", "--epochs", "3"], "--early-epoch must be at most --epochs"),
    (["--folds", "1"], "--folds must be an int >= 2, got 1"),
])
def test_noise_detection_usage_errors(tmp_path: Path, argv, message):
    script = load("noise_detection")
    with pytest.raises(SystemExit, match=message) as err:
        script.main([*argv, "--out", str(tmp_path)])
    assert err.value.code == 2
    assert not (tmp_path / "noise_detection").exists()
