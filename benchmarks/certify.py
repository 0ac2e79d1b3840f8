"""The certify screen before LASS: how many samples it proves non-critical, and what the CSR costs with and without it.

At the paper's radius (r = 0.3 pixel units, step 0.25, noise 0.2, 100 steps; converted with the data's std) the
critical sample ratio of a trained network is near 0, so plain LASS runs nearly every sample for all 100 steps.
``CriticalSampleRatio(certify=True)`` first bounds each sample's margin over its box and searches only the rest.
In one process, this script measures

1. **certified fraction** (IBP alone, IBP then CROWN-IBP, then CROWN) and the CSR, on 1,000 training examples
   (the callback's ``num_train_samples``), for networks trained a few epochs on real digits, on randX (Gaussian
   inputs) and on randY (random labels): the digits MLP and CNN (8x8) and the MNIST-sized MLPs 784-512-512 and
   784-4096-4096 (fed the same digits upsampled to 28x28: real handwritten digits at MNIST's size; the randX
   variant is Gaussian noise at that size);
2. **time** of one CSR measurement (``lass`` on those 1,000 samples, batch 256, as the callback runs it) with and
   without the screen, checking that the critical flags are identical, and as a fraction of one 60,000-example
   training epoch of the same network (SGD, batch 128: 30 steps timed, extrapolated to 469). Target: <= 0.2 of an
   epoch for the real-data-trained MNIST-sized MLP.

Run: ``python -m benchmarks.certify`` (``--quick``: fewer samples and epochs, a smoke run).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from datamodules import NoisyDigits
from memo_callbacks.functional import lass, pixels_to_input_units
from memo_callbacks.functional.certify import certify
from models import CNNClassifier, MLPClassifier

PAPER = dict(radius=0.3, step_size=0.25, noise_std=0.2)  # pixel units


def uptime() -> str:
    return os.popen("uptime").read().strip()


def fit(network: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int = 0) -> nn.Module:
    """Adam, batch 128, ``epochs`` passes in a seeded order; returns the network in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    network.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(network(x[idx]), y[idx]).backward()
            opt.step()
    return network.eval()


def epoch_seconds(network: nn.Module, in_shape: tuple[int, ...], steps: int) -> float:
    """One 60,000-example epoch of plain SGD at batch 128 (469 steps), from ``steps`` timed ones."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, *in_shape, generator=g), torch.randint(0, 10, (128,), generator=g)
    opt = torch.optim.SGD(network.parameters(), lr=1e-4)
    network.train()

    def step():
        opt.zero_grad()
        F.cross_entropy(network(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    network.eval()
    return (time.perf_counter() - start) / steps * 469


def datasets(size: int | None) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``{kind: (train_x, train_y, pixel unit [C, 1, 1])}`` for real, randX and randY digits, 8x8 or ``size`` square."""
    out = {}
    for kind, noise in (("real", "none"), ("randX", "random_inputs"), ("randY", "random_labels")):
        dm = NoisyDigits(noise=noise, normalize=size is None, seed=0)
        dm.setup("fit")
        x, y = dm.train_x, dm.train_y
        if size is not None:  # raw [0, 1] digits upsampled, normalised by their own statistics
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            if kind == "randX":  # Gaussian inputs at MNIST's size, with the real images' mean and std
                x = x.mean() + x.std() * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            mean, std = x.mean(), x.std()
            x = (x - mean) / std
            unit = pixels_to_input_units(1.0, std, 1 / 255)
        else:
            unit = pixels_to_input_units(1.0, dm.std, dm.pixel_scale)
        out[kind] = (x, y, unit)
    return out


def measure(name: str, kind: str, model: nn.Module, x: torch.Tensor, unit: torch.Tensor, epoch: float, rows: list):
    box = {k: v * unit for k, v in PAPER.items()}
    ids = torch.arange(len(x))
    fractions = {}
    for method in ("ibp", "crown-ibp", "crown"):
        fractions[method] = float(certify(model, x, radius=box["radius"], method=method).certified.float().mean())
    start = time.perf_counter()
    certify(model, x, radius=box["radius"])
    t_certify = time.perf_counter() - start
    start = time.perf_counter()
    screened = lass(model, x, **box, sample_ids=ids, batch_size=256, certify=True)
    t_screen = time.perf_counter() - start
    start = time.perf_counter()
    plain = lass(model, x, **box, sample_ids=ids, batch_size=256)
    t_plain = time.perf_counter() - start
    same = torch.equal(plain.critical, screened.critical)
    rows.append(dict(
        model=name, data=kind, n=len(x), ibp=fractions["ibp"], crown_ibp=fractions["crown-ibp"], crown=fractions["crown"],
        csr=float(plain.critical.float().mean()), same=same, t_plain=t_plain, t_screen=t_screen, t_certify=t_certify,
        epoch=epoch, steps_plain=int(plain.iterations.sum()), steps_screen=int(screened.iterations.sum()),
    ))
    r = rows[-1]
    print(
        f"| {name} | {kind} | {r['ibp']:.1%} / {r['crown_ibp']:.1%} / {r['crown']:.1%} | {r['csr']:.1%} | "
        f"{'yes' if same else '**NO**'} | {t_plain:.1f} s | {t_screen:.2f} s (certify {t_certify:.2f} s) | "
        f"{t_plain / t_screen:.1f}x | {epoch:.1f} s | {t_plain / epoch:.3f} | {t_screen / epoch:.3f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and epochs (a smoke run)")
    parser.add_argument("--samples", type=int, default=1000, help="CSR samples (the callback's default)")
    parser.add_argument("--only", default=None, help="run only the models whose name contains this")
    args = parser.parse_args()
    n = 64 if args.quick else args.samples
    epochs = 1 if args.quick else 5
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; start: {uptime()}")
    print("\n| model | data | certified: IBP / +CROWN-IBP / +CROWN | CSR | same flags | CSR plain | CSR screened | "
          "speed-up | 60k epoch | plain / epoch | screened / epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows: list = []
    small, large = datasets(None), datasets(28)
    builders = {
        "digits MLP 64-512-512": (small, lambda: MLPClassifier((1, 8, 8), 10, hidden=(512, 512)).network, (1, 8, 8), 1e-3),
        "digits CNN w0.25 (noise, dropout, BN)": (
            small,
            lambda: CNNClassifier((1, 8, 8), 10, width=0.25, crop=1, dropout=0.3, input_noise_std=0.05),
            (1, 8, 8), 1e-3,
        ),
        "MLP 784-512-512": (large, lambda: MLPClassifier((1, 28, 28), 10, hidden=(512, 512)).network, (1, 28, 28), 1e-3),
        "MLP 784-4096-4096": (large, lambda: MLPClassifier((1, 28, 28), 10, hidden=(4096, 4096)).network, (1, 28, 28), 2e-4),
    }
    for name, (data, build, in_shape, lr) in builders.items():
        if args.only and args.only not in name:
            continue
        epoch = None
        for kind, (x, y, unit) in data.items():
            torch.manual_seed(0)
            model = build()
            fit(model.network if hasattr(model, "network") else model, x, y, epochs * (4 if kind != "real" else 1), lr)
            if epoch is None:
                epoch = epoch_seconds(build(), in_shape, 5 if args.quick else 30)
            sub = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n].sort().values
            measure(name, kind, model, x[sub], unit, epoch, rows)
    print(f"\nend: {uptime()}")


if __name__ == "__main__":
    main()
