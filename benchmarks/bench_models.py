"""Cost of the LightningModule (Trainer loop, clean / noisy metrics) over a bare PyTorch training loop.

Measures, in one run, on the same in-memory batches of MNIST-shaped data (40% of them flagged noisy):

1. a bare loop: the paper's MLP, ``cross_entropy``, ``backward``, ``SGD.step``;
2. ``Trainer.fit`` of :class:`models.MLPClassifier` with the same network, optimiser and batches, logging
   ``train/loss``, ``train/acc``, ``train/acc_clean``, ``train/acc_noisy`` (timed from the end of the warm-up
   steps to the end of the epoch, so the epoch-end metric computation is included).

Target: (2) within 10% of (1) per step on the paper's 2 x 4096 MLP (no host sync per step). Run on a GPU with
``--device cuda``; on a CPU, ``--hidden 1024 1024`` keeps it short.

    python benchmarks/bench_models.py [--device cuda] [--hidden 4096 4096] [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules import IndexSampler, TensorBatchLoader  # noqa: E402
from models import MLPClassifier  # noqa: E402

#: Where the Trainers may write (nothing goes to the current directory); removed at exit.
SCRATCH = tempfile.TemporaryDirectory(prefix="memo-callbacks-bench-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(pl.Callback):
    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(self.device)
        self.seconds = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096, 4096])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    torch.manual_seed(0)
    n = args.batch_size * (args.steps + args.warmup)
    x = torch.randn(n, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    noisy = torch.rand(n, device=device) < 0.4
    loader = TensorBatchLoader(x, y, noisy, args.batch_size, IndexSampler(n, shuffle=False, seed=0))

    model = MLPClassifier((1, 28, 28), 10, hidden=tuple(args.hidden)).to(device)
    net = model.network
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    batches = list(loader)
    for b in batches[: args.warmup]:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(b.x), b.y).backward()
        opt.step()
    sync(device)
    start = time.perf_counter()
    for b in batches[args.warmup :]:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(b.x), b.y).backward()
        opt.step()
    sync(device)
    bare = (time.perf_counter() - start) / args.steps

    model = MLPClassifier((1, 28, 28), 10, hidden=tuple(args.hidden))
    timer = EpochTimer(args.warmup, device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        default_root_dir=SCRATCH.name,
    )  # fmt: skip
    trainer.fit(model, loader)
    lightning = timer.seconds / args.steps

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; MLP {'x'.join(map(str, args.hidden))}, batch {args.batch_size}, {args.steps} timed steps")
    print(f"bare PyTorch loop:         {bare * 1e3:8.3f} ms/step")
    print(f"MLPClassifier + Trainer:   {lightning * 1e3:8.3f} ms/step  -> {lightning / bare:.3f}x the bare loop")
    print("logged:", {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})


if __name__ == "__main__":
    main()
