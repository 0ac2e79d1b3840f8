"""Speed of the in-memory noisy datamodule against torchvision's MNIST pipeline and against a training epoch.

Measures, in one run, on MNIST-size data (60,000 x 28 x 28, written to disk in MNIST's real idx format):

1. one epoch of ``NoisyMNIST.train_dataloader()`` at batch 128 (random labels on 40%, to include the noise);
2. one epoch of torchvision's ``MNIST(transform=ToTensor())`` through a standard shuffled ``DataLoader``;
3. one training epoch of the paper's 2 x 4096 MLP at batch 128 (SGD, forward + backward + step), timed over
   ``--train-steps`` steps and extrapolated to the 469 steps of an epoch.

Targets (issue #2): (1) < 10% of (3), and (1) at least 10x faster than (2).

    python benchmarks/bench_datamodules.py
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))
from helpers import write_mnist  # noqa: E402  (MNIST's on-disk idx format)

from datamodules import NoisyMNIST  # noqa: E402
from models import MLP  # noqa: E402


def timed(fn, repeats: int = 1) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=30, help="MLP steps timed (extrapolated to an epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as root:
        write_mnist(Path(root), n_train=60_000, n_test=10_000)
        dm = NoisyMNIST(root, noise="random_labels", noise_fraction=0.4, batch_size=args.batch_size)
        setup_s = timed(lambda: dm.setup("fit"))
        loader = dm.train_dataloader()

        def ours() -> None:
            for batch in loader:
                batch.x.sum()  # touch the data, as a model would

        tv = DataLoader(datasets.MNIST(root, train=True, transform=ToTensor()), batch_size=args.batch_size, shuffle=True)

        def torchvision_loader() -> None:
            for x, _ in tv:
                x.sum()

        ours_s = timed(ours, args.repeats)
        tv_s = timed(torchvision_loader, 1)

        net = MLP(784, 10, hidden=(4096, 4096))
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        batches = [b for _, b in zip(range(args.train_steps + 2), loader)]

        def train(steps) -> None:
            for b in steps:
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(b.x), b.y).backward()
                opt.step()

        train(batches[:2])  # warm-up
        step_s = timed(lambda: train(batches[2:]), 1) / args.train_steps
        epoch_s = step_s * len(loader)

    print(f"threads: {torch.get_num_threads()}, batch {args.batch_size}, {len(loader)} batches per epoch")
    print(f"NoisyMNIST setup (load + noise + normalise, once): {setup_s:.2f} s")
    print(f"NoisyMNIST epoch:                         {ours_s * 1e3:9.1f} ms")
    print(f"torchvision MNIST + ToTensor + DataLoader: {tv_s * 1e3:9.1f} ms  -> ours is {tv_s / ours_s:.0f}x faster")
    print(f"MLP 2x4096 training epoch (extrapolated):  {epoch_s * 1e3:9.1f} ms  -> data is {100 * ours_s / epoch_s:.2f}% of it")


if __name__ == "__main__":
    main()
