"""The benchmarks write nothing into the current directory (their Trainers use a temporary folder)."""

from memo_callbacks import LossSensitivity


def test_sensitivity_benchmark_writes_nothing_to_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import benchmarks.sensitivity as sensitivity
    callback = LossSensitivity(mode="proxy")
    sensitivity.time_training(1, callback)
    assert list(tmp_path.iterdir()) == []
    (written,) = callback.saved_paths  # it did write its epoch file: into the benchmark's scratch folder
    assert str(written).startswith(sensitivity.SCRATCH.name)
