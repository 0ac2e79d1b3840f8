"""The experiment scripts' command line (``experiments/common.py``): usage errors before any data work, the device
check and CPU DDP, ``--help`` for every flag, progress lines, quiet Lightning banners and the figure archive."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from datamodules import NoisyDataModule
from helpers import EXPERIMENTS, REPO, load  # noqa: F401

import common  # noqa: E402  (experiments/ is on sys.path through helpers)

SCRIPTS = ["fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9", "fig9_batchnorm", "fig10", "fig11",
           "memorization_scores"]
RUN_FLAGS = ["--accelerator", "--devices", "--gpus", "--nodes", "--out", "--precision", "--quick"]


@pytest.fixture
def no_data_work(monkeypatch):
    """Any datamodule built from here on fails the test: errors must come before the data."""

    def boom(self, *args, **kwargs):
        raise AssertionError("a datamodule was built before the command line was checked")

    monkeypatch.setattr(NoisyDataModule, "__init__", boom)


def usage_error(script: str, argv: list[str], capsys) -> str:
    """Run ``script``'s main on ``argv``; it must exit with status 2; returns the ``error:`` line of stderr."""
    with pytest.raises(SystemExit) as exc:
        load(script).main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: "), err
    (line,) = [line for line in err.splitlines() if ": error: " in line]
    assert line.split(": error: ", 1)[1] == str(exc.value)  # the exception carries the message printed
    return str(exc.value)


# ----------------------------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("fig9", ["--epochs", "-1"], "--epochs must be an int >= 1, got -1"),  # Lightning's -1 would train forever
        ("fig9", ["--epochs", "0"], "--epochs must be an int >= 1, got 0"),  # used to crash after training
        ("fig9", ["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
        ("fig9", ["--width", "0"], r"--width must be a finite number > 0.0, got 0.0"),
        ("fig9", ["--lr", "nan"], r"--lr must be a finite number > 0.0, got nan"),
        ("fig9", ["--momentum", "1"], r"--momentum must be a finite number in [0.0, 1.0), got 1.0"),
        ("fig9", ["--hidden", "16", "0"], "--hidden must be an int >= 1, got 0"),
        ("fig9", ["--seeds", "0", "0"], "--seeds lists a value twice, got 0 0"),
        ("fig9", ["--seeds", "2.5"], "argument --seeds: invalid int value: '2.5'"),
        ("fig9", ["--seeds", str(2**64)], r"--seeds must be in [-2**63, 2**64 - 1] (torch's seed range), got "),
        ("fig9", ["--model", "rnn"], "--model must be cnn or mlp, got 'rnn'"),
        ("fig9", ["--dataset", "imagenet"], "--dataset must be mnist, cifar10, cifar10-jpg or digits, got 'imagenet'"),
        ("fig9", ["--variants", "real", "randZ"], "--variants must be among ['randX', 'randY', 'real'], got "
                                                  "['real', 'randZ']"),
        ("fig9", ["--precision", "8"], "--precision must be 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or "
                                       "64-true, got '8'"),
        ("fig9", ["--devices", "0"], "--devices must be an int >= 1, got 0"),
        ("fig9", ["--accelerator", "tpu"], "--accelerator must be auto, cpu or gpu, got 'tpu'"),
        ("fig5", ["--fractions", "0.2", "1.5"], "--fractions must be a finite number in [0.0, 1.0], got 1.5"),
        ("fig6", ["--max-epochs", "0"], "--max-epochs must be an int >= 1, got 0"),
        ("fig3", ["--norm", "l3"], "--norm must be l1, l2 or linf, got 'l3'"),
        ("fig3", ["--dataset", "cifar10"], "--dataset must be mnist or digits, got 'cifar10'"),
        ("fig3", ["--steps", "100", "0"], "--steps must be an int >= 1, got 0"),
        ("fig4", ["--engine", "gpu"], "--engine must be functional or callback, got 'gpu'"),
        ("fig7", ["--noises", "randZ"], "--noises must be among ['randX', 'randY'], got ['randZ']"),
        ("fig10", ["--regularisers", "dropout", "nope"], "--regularisers must be among "),
        ("fig10", ["--dropout", "1.0"], r"--dropout must be a finite number in [0.0, 1.0), got 1.0"),
        ("memorization_scores", ["--subset-ratio", "1"], r"--subset-ratio must be a finite number in (0.0, 1.0)"),
        ("memorization_scores", ["--num-models", "1"], "--num-models must be an int >= 2, got 1"),
        ("fig1", ["--runs", "0"], "--runs must be an int >= 1, got 0"),
    ],
)
def test_bad_options_are_usage_errors_before_any_data_work(script, argv, message, tmp_path, capsys, no_data_work):
    got = usage_error(script, [*argv, "--out", str(tmp_path / "out")], capsys)
    assert got.startswith(message), got
    assert not (tmp_path / "out").exists()  # nothing written: checked before --out is even created


def test_quick_values_and_explicit_flags_are_checked_alike(tmp_path, capsys, no_data_work):
    """``--quick`` applies its values first; an explicit bad flag on top of it is still an error."""
    got = usage_error("fig9", ["--quick", "--csr-samples", "0", "--out", str(tmp_path)], capsys)
    assert got == "--csr-samples must be an int >= 1, got 0"


def test_out_must_be_creatable(tmp_path, capsys, no_data_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    got = usage_error("fig9", ["--quick", "--out", str(blocker / "runs")], capsys)
    assert got.startswith(f"--out {str(blocker / 'runs')!r} cannot be created (") and "pass a folder" in got


def test_data_dir_must_be_a_folder(tmp_path, capsys, no_data_work):
    (tmp_path / "data").write_text("not a folder")
    got = usage_error("fig5", ["--quick", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path)], capsys)
    assert got == f"--data-dir {str(tmp_path / 'data')!r} is a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_out_must_be_writable(tmp_path, capsys, no_data_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    got = usage_error("fig9", ["--quick", "--out", str(locked)], capsys)
    assert got == f"--out {str(locked)!r} is not writable; pass a folder you can write to"


# -------------------------------------------------------------------------------------------------------- devices
def test_gpus_without_a_gpu_says_what_to_do(monkeypatch, tmp_path, capsys, no_data_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    got = usage_error("fig9", ["--gpus", "2", "--out", str(tmp_path)], capsys)  # used to fail after the download
    assert got.startswith("--gpus 2 needs a CUDA GPU, and this machine has none that torch can use")
    assert got.endswith("Run on the CPU with --accelerator cpu (add --devices N for N processes under DDP)")
    got = usage_error("fig5", ["--accelerator", "gpu", "--out", str(tmp_path)], capsys)
    assert got.startswith("--accelerator gpu needs a CUDA GPU")


def test_more_devices_than_gpus(monkeypatch, tmp_path, capsys, no_data_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    got = usage_error("fig9", ["--accelerator", "gpu", "--devices", "2", "--out", str(tmp_path)], capsys)
    assert got == "--devices 2 asks for 2 GPUs per node, this machine has 1; pass --devices 1 or fewer"


def test_gpus_conflicting_with_accelerator_or_devices(tmp_path, capsys, no_data_work):
    got = usage_error("fig9", ["--gpus", "1", "--accelerator", "cpu", "--out", str(tmp_path)], capsys)
    assert got == "--gpus 1 asks for GPUs, --accelerator cpu for the CPU: pass one of them"
    got = usage_error("fig9", ["--gpus", "1", "--devices", "2", "--out", str(tmp_path)], capsys)
    assert got.startswith("--gpus 1 is --accelerator gpu --devices 1, but --devices 2 was passed too")


@pytest.mark.parametrize("script", ["fig1", "fig3", "fig4", "memorization_scores"])
def test_single_process_scripts_refuse_several_devices(script, tmp_path, capsys, no_data_work):
    got = usage_error(script, ["--quick", "--accelerator", "cpu", "--devices", "2", "--out", str(tmp_path)], capsys)
    assert got.startswith(f"{script} runs in one process (")
    assert got.endswith("cannot use --devices 2; pass --devices 1")


def test_ddp_needs_the_script_run_from_the_command_line(tmp_path, capsys, no_data_work):
    """Lightning's DDP re-launches ``sys.argv``: main([...]) from Python with other arguments would train another
    configuration in the extra processes."""
    got = usage_error("fig9", ["--quick", "--accelerator", "cpu", "--devices", "2", "--out", str(tmp_path)], capsys)
    assert "run it as `python experiments/fig9.py ...`, not main([...])" in got


def test_cpu_devices_resolve_to_a_ddp_trainer(monkeypatch, tmp_path):
    from pytorch_lightning.strategies import DDPStrategy

    fig9 = load("fig9")
    argv = ["--quick", "--accelerator", "cpu", "--devices", "2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["fig9.py", *argv])  # as when run from the command line
    cfg, run = common.parse_config(fig9.Fig9Config, fig9.QUICK, "", argv, figure="fig9")
    assert (run.accelerator, run.devices, run.gpus) == ("cpu", 2, 0)
    trainer = common.make_trainer(run, "fig9", "real", 1, [])
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, auto = common.parse_config(fig9.Fig9Config, fig9.QUICK, "", ["--out", str(tmp_path)])
    assert (auto.accelerator, auto.devices) == ("cpu", 1)  # auto: the CPU on a machine without a GPU


@pytest.mark.slow
def test_fig9_trains_under_cpu_ddp_from_the_command_line(tmp_path):
    """The real thing: two CPU processes over gloo (Lightning re-launches the script); only rank 0 reports, plots
    and writes the summary, and Lightning's banners stay quiet."""
    out = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "fig9.py"), "--quick", "--accelerator", "cpu", "--devices", "2",
         "--epochs", "2", "--hidden", "16", "--csr-samples", "20", "--max-iter", "3", "--variants", "real",
         "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    config = json.loads(next((out / "fig9" / "real").glob("version_*/config.json")).read_text())
    assert config["world_size"] == 2 and config["run"]["devices"] == 2 and config["run"]["accelerator"] == "cpu"
    assert len(list((out / "fig9" / "real").glob("version_*"))) == 1  # one run folder: rank 0 logs, once
    assert proc.stdout.count("[fig9] figure:") == 1 and proc.stdout.count("[fig9] real seed 0: CSR") == 1
    assert re.search(r"\[fig9\] run 1/1 \(100%\), .* elapsed, ~.* expected; real done", proc.stdout)
    assert (out / "fig9" / "fig9.png").is_file()
    for banner in ("GPU available", "💡 Tip", "`Trainer.fit` stopped", "log_every_n_steps"):
        assert banner not in proc.stdout + proc.stderr, banner


# ----------------------------------------------------------------------------------------------------------- --help
def help_entries(text: str) -> dict[str, str]:
    """``{flag: its help}`` from argparse's help text (printed wide, one line per flag's help)."""
    entries, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  -"):
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            flag = parts[0].split()[0].rstrip(",")
            entries[flag] = parts[1] if len(parts) == 2 else lines[i + 1].strip()
    return entries


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_every_flag_and_shows_its_default_once(script, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exc:
        load(script).main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    entries = help_entries(text)
    usage_flags = set(re.findall(r"\[(--[a-z][a-z0-9-]*)", text.split("\n\n")[0]))
    assert usage_flags <= set(entries) and set(RUN_FLAGS) <= set(entries)
    for flag, help_text in entries.items():
        if flag == "-h":
            continue
        assert help_text.count("(default: ") == 1 and "(default: None)" not in help_text, (flag, help_text)
        description = help_text.split("(default: ")[0].strip()
        assert len(description) > 5, (flag, help_text)  # a description, not only the default


def test_help_shows_the_default_and_the_quick_value(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        load("fig9").main(["--help"])
    entries = help_entries(capsys.readouterr().out)
    assert entries["--epochs"] == "training epochs (not stated in the paper) (default: 60; --quick: 30)"
    assert entries["--dataset"] == "the datamodule; one of mnist, cifar10, cifar10-jpg, digits (default: cifar10; " \
                                   "--quick: digits)"
    assert entries["--hidden"].endswith("(default: 4096 4096; --quick: 512 512)")
    assert entries["--quick"].endswith("(default: off)")


# ------------------------------------------------------------------------------------------------------- progress
class _Tty:
    """A text stream that says it is a terminal."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_lines_have_elapsed_and_expected_time(monkeypatch):
    import io

    clock = iter([0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    p = common.Progress("[figX] real", 10, "epoch", stream=stream, blocks=5)  # start at t = 0
    for done in range(1, 11):  # epoch k ends at t = 2k
        p.update(done)
    lines = stream.getvalue().splitlines()
    assert [int(re.search(r"epoch (\d+)/10", line).group(1)) for line in lines] == [1, 2, 4, 6, 8, 10]
    assert lines[0] == "[figX] real: epoch 1/10 (10%), 2.0 s elapsed, ~20 s expected"  # from the first epoch
    assert lines[-1] == "[figX] real: epoch 10/10 (100%), 20 s elapsed, ~20 s expected"


def test_progress_of_a_short_job_is_quiet(monkeypatch):
    import io

    clock = iter([0.0, 1.0, 2.0, 3.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    p = common.Progress("[figX] real", 3, "epoch", stream=stream, quiet_below=20.0)  # 1 s an epoch: ~3 s
    for done in range(1, 4):
        p.update(done)
    assert stream.getvalue() == ""


def test_epoch_lines_of_a_long_run(tmp_path, capsys):
    """Lightning's bar is off when stderr is not a terminal; EpochProgress prints the epochs instead."""
    fig = load("fig9")
    run = common.RunArgs(accelerator="cpu", out=str(tmp_path))
    trainer = common.make_trainer(run, "figX", "real", 3, [])
    assert not trainer.progress_bar_callback  # pytest's stderr is no terminal
    (progress,) = [c for c in trainer.callbacks if isinstance(c, common.EpochProgress)]
    progress.quiet_below = 0.0
    dm = fig.make_datamodule("digits", str(tmp_path), "real", batch_size=256, subset=200, subset_mode="random")
    model = fig.build_classifier("mlp", dm, seed=0, hidden=(8,))
    with common.quiet_lightning():
        trainer.fit(model, dm)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[figX] real: epoch")]
    assert [line.split(" (")[0] for line in lines] == [f"[figX] real: epoch {k}/3" for k in (1, 2, 3)]
    assert all(re.search(r"\(\d+%\), [\d.]+ s elapsed, ~[\d.]+ s expected", line) for line in lines), lines


def test_progress_bar_on_a_terminal_and_only_on_rank_zero(monkeypatch):
    tty = _Tty()
    p = common.Progress("[fig3]", 4, "step", stream=tty, bar=True)
    for done in range(1, 5):
        p._last_bar = -1.0  # redraw every update
        p.update(done)
    assert tty.text.count("\r") == 4 and tty.text.endswith("\n") and "[####################] 4/4 steps" in tty.text
    monkeypatch.setenv("LOCAL_RANK", "1")
    silent = _Tty()
    common.Progress("[fig3]", 4, "step", stream=silent, bar=True).update(4)
    assert silent.text == ""


def test_format_duration():
    assert [common.format_duration(s) for s in (3.21, 42.4, 185, 7260)] == ["3.2 s", "42 s", "3 min 05 s",
                                                                            "2 h 01 min"]


def test_fig3_quick_reports_progress_within_its_runs(tmp_path, capsys):
    """fig3 used to print nothing until a whole run (minutes of SGD) was measured."""
    load("fig3").main(["--quick", "--steps", "20", "40", "--window", "6", "--examples", "60", "--hidden", "4",
                       "--out", str(tmp_path)])
    out = capsys.readouterr().out
    steps = [int(m) for m in re.findall(r"\[fig3\] step (\d+)/120 ", out)]  # 2 variants x (20 + 40) steps
    assert steps[0] == 1 and steps[-1] == 120 and steps == sorted(steps) and len(steps) >= 5
    assert "real, T=40" in out and "expected" in out


def test_quiet_lightning_drops_banners_not_warnings(tmp_path):
    import pytorch_lightning as pl

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("pytorch_lightning").addHandler(handler)
    try:
        with common.quiet_lightning():
            pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
            with pytest.warns(UserWarning, match="a real warning"):
                warnings.warn("a real warning", UserWarning)
        assert not [r for r in records if "GPU available" in r or "Tip" in r]
        pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)  # the levels are restored
        assert [r for r in records if "GPU available" in r]
    finally:
        logging.getLogger("pytorch_lightning").removeHandler(handler)


# -------------------------------------------------------------------------------------------------------- archive
def test_archive_moves_the_figure_files_and_keeps_the_run_folders(tmp_path, capsys):
    run = common.RunArgs(out=str(tmp_path))
    folder = tmp_path / "fig5"
    assert common.archive_previous(run, "fig5") is None  # nothing there yet
    (folder / "summary").mkdir(parents=True)
    (folder / "summary" / "events.out.tfevents.1").write_text("old curves")
    (folder / "fig5.png").write_bytes(b"old png")
    (folder / "results.json").write_text("[]")
    (folder / "real_h8" / "version_0").mkdir(parents=True)
    os.utime(folder / "fig5.png", (1.7e9, 1.7e9))  # the newest file gives the folder its name
    for p in (folder / "results.json", folder / "summary"):
        os.utime(p, (1.6e9, 1.6e9))
    target = common.archive_previous(run, "fig5")
    assert target.parent == folder / "previous" and target.name == _stamp(1.7e9)
    assert sorted(p.name for p in target.iterdir()) == ["fig5.png", "results.json", "summary"]
    assert (target / "fig5.png").read_bytes() == b"old png" and (target / "summary" / "events.out.tfevents.1").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["previous", "real_h8"]
    assert f"[fig5] moved the previous run's figure and summaries (fig5.png, results.json, summary) to {target}" in \
        capsys.readouterr().out
    (folder / "fig5.png").write_bytes(b"newer png")
    os.utime(folder / "fig5.png", (1.7e9, 1.7e9))  # the same second: a second folder, never over the first
    second = common.archive_previous(run, "fig5")
    assert second.name == f"{_stamp(1.7e9)}-2" and (target / "fig5.png").read_bytes() == b"old png"


def _stamp(t: float) -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S", time.localtime(t))


def test_rerun_with_fewer_variants_keeps_the_old_figure_with_its_runs(tmp_path, capsys):
    fig9 = load("fig9")
    args = ["--quick", "--epochs", "1", "--hidden", "8", "--csr-samples", "10", "--max-iter", "2", "--out",
            str(tmp_path)]
    fig9.main([*args, "--variants", "real", "randY"])
    first = (tmp_path / "fig9" / "fig9.png").read_bytes()
    capsys.readouterr()
    fig9.main([*args, "--variants", "real"])
    assert "[fig9] moved the previous run's figure and summaries (fig9.png) to " in capsys.readouterr().out
    (previous,) = (tmp_path / "fig9" / "previous").iterdir()
    assert (previous / "fig9.png").read_bytes() == first
    assert (tmp_path / "fig9" / "fig9.png").read_bytes() != first
