"""Test helpers: datasets written in their real on-disk formats, and a real two-process DDP launcher."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write MNIST's idx files (uncompressed, as torchvision keeps them in ``root/MNIST/raw``)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        # idx3: magic 0x00000803, then N, rows, cols as big-endian int32, then the bytes.
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, n, 28, 28], dtype=">i4").tobytes() + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([0x801, n], dtype=">i4").tobytes() + labels.tobytes())
        out.append((images, labels))
    return out[0]


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 10, seed: int = 0):
    """Write CIFAR-10's python pickles (``root/cifar-10-batches-py``) and return the md5 table torchvision checks.

    The official files were pickled by Python 2, whose ``str`` keys torchvision reads back with ``latin1`` as ``str``.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    train = []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows are R, G, B planes of 32x32
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
        if name != "test_batch":
            train.append((data, labels))
    classes = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [c.decode() for c in classes]}, f)
    md5["batches.meta"] = hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()
    x = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.array(l) for _, l in train])
    return md5, x, y


def run_ddp_script(body: str, tmp_path: Path, devices: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``body`` as a script under a real 2-process Lightning DDP (gloo, CPU).

    Lightning's ``ddp`` strategy re-launches the script once per extra process, exactly as on a multi-GPU machine.
    The script gets ``OUT`` (a folder) and ``DEVICES`` as globals.
    """
    script = tmp_path / "ddp_script.py"
    header = f"OUT = {str(tmp_path)!r}\nDEVICES = {devices}\n"
    # Tear the process group down before the interpreter exits: gloo's worker threads otherwise may still hold
    # work objects at finalization and abort the process ("terminate called without an active exception", -6).
    footer = (
        "\nimport torch.distributed as _dist\n"
        "if _dist.is_available() and _dist.is_initialized():\n"
        "    _dist.barrier()\n"
        "    _dist.destroy_process_group()\n"
    )
    script.write_text(header + textwrap.dedent(body) + footer)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"DDP script failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


# ------------------------------------------------------------------ the experiment scripts (not a package)
EXPERIMENTS = REPO / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))  # the scripts import the shared runner as `common`


def load(name: str) -> ModuleType:
    """Import ``experiments/<name>.py`` (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the config's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def accumulator(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in accumulator(folder).Scalars(tag)]


def run_dir(root: Path, figure: str, name: str) -> Path:
    (folder,) = (root / figure / name).glob("version_*")
    return folder


def assert_png(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas


# ------------------------------------------------------------------ a quiet CPU Trainer for unit tests
def quiet_trainer(tmp_path: Path, **kwargs):
    """A one-epoch CPU ``pl.Trainer`` without logger, checkpoints, progress bar, summary or sanity check;
    ``kwargs`` override any of these."""
    import pytorch_lightning as pl

    options = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, max_epochs=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)
