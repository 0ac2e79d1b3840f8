"""The benchmarks write nothing into the current directory (their Trainers use a temporary folder), and tiny smoke
runs of their parts work."""

import importlib.util

import pytest
import torch

from memo_callbacks import LossSensitivity


def test_sensitivity_benchmark_writes_nothing_to_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import benchmarks.sensitivity as sensitivity
    callback = LossSensitivity(mode="proxy")
    sensitivity.time_training(1, callback)
    assert list(tmp_path.iterdir()) == []
    (written,) = callback.saved_paths  # it did write its epoch file: into the benchmark's scratch folder
    assert str(written).startswith(sensitivity.SCRATCH.name)


def test_sensitivity_every_n_steps_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import benchmarks.sensitivity as sensitivity
    sensitivity.bench_proxy_every(2, 1, nets=("tiny-cnn",), ks=(1, 2))
    out = capsys.readouterr().out
    assert "proxy every_n_steps, tiny-cnn" in out and "k=2:" in out
    assert list(tmp_path.iterdir()) == []


def test_lass_peer_benchmark_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import benchmarks.lass as bench
    x, y = bench.synthetic_mnist(8)
    assert x.shape == (8, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1 and y.shape == (8,)
    before = torch.get_num_threads()
    monkeypatch.setattr(bench, "PEER_RADII", (3.0,))
    bench.bench_peer(quick=True, threads=(1,), cnn_samples=16)
    out = capsys.readouterr().out
    assert torch.get_num_threads() == before
    if importlib.util.find_spec("torchattacks") is None:
        assert "peer benchmark SKIPPED: torchattacks is not installed" in out
    else:
        assert "MLP 784-512-512-10" in out and "PaperCNN" in out and "training epochs of 60,000" in out
    assert list(tmp_path.iterdir()) == []


def test_lass_peer_benchmark_says_when_torchattacks_is_absent(monkeypatch, capsys):
    import builtins

    import benchmarks.lass as bench
    real = builtins.__import__

    def no_torchattacks(name, *args, **kwargs):
        if name == "torchattacks":
            raise ImportError("No module named 'torchattacks'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchattacks)
    bench.bench_peer(quick=True, threads=(1,))
    assert "peer benchmark SKIPPED: torchattacks is not installed" in capsys.readouterr().out
