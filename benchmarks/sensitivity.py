"""Benchmarks of LossSensitivity: proxy overhead on the paper's MNIST MLP, unrolled cost in the Figure 3 setting.

    python -m benchmarks.sensitivity [--proxy-steps 40] [--repeats 2] [--skip-proxy] [--skip-unrolled]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from memo_callbacks import LossSensitivity
from memo_callbacks.functional import SGDWindowRecorder, gini, unrolled_sensitivity
from models import MLP, PaperCNN

#: Where the Trainers may write (nothing goes to the current directory); removed at exit.
SCRATCH = tempfile.TemporaryDirectory(prefix="memo-callbacks-bench-")


class Classifier(pl.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def mnist_like(n: int, seed: int = 0, shape: tuple[int, ...] = (1, 28, 28)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    data = torch.utils.data.TensorDataset(x, y, torch.arange(n))
    return torch.utils.data.DataLoader(data, batch_size=128, shuffle=False)


def time_training(steps: int, callback: LossSensitivity | None, net: str = "mlp") -> float:
    """Seconds of ``steps`` training steps (batch 128) of the paper's MLP (``"mlp"``), the paper's CIFAR-10 CNN at
    width 0.25 (``"cnn"``), or a tiny CNN for smoke runs (``"tiny-cnn"``)."""
    torch.manual_seed(0)
    shape = (1, 28, 28) if net == "mlp" else (3, 32, 32)
    nets = {"mlp": lambda: MLP(784, 10, hidden=(4096, 4096)), "cnn": lambda: PaperCNN(shape, 10, width=0.25),
            "tiny-cnn": lambda: PaperCNN(shape, 10, width=0.05)}
    model = Classifier(nets[net](), lr=0.01)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tempfile.mkdtemp(dir=SCRATCH.name),  # one folder per run: no -vN files
                         callbacks=[callback] if callback else [])
    loader = mnist_like(128 * steps, shape=shape)
    start = time.perf_counter()
    trainer.fit(model, loader)
    return time.perf_counter() - start


def bench_proxy(steps: int, repeats: int) -> None:
    time_training(3, None)  # warm-up
    base, proxy = [], []
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        base.append(time_training(steps, None))
        proxy.append(time_training(steps, LossSensitivity(mode="proxy")))
    b, p = min(base), min(proxy)
    print(f"proxy: MLP 784-4096-4096-10, batch 128, {steps} steps, best of {repeats}: "
          f"without {b:.2f}s, with {p:.2f}s, overhead {100 * (p / b - 1):+.1f}%  (all: {base} {proxy})")


def bench_proxy_every(steps: int, repeats: int, nets: tuple[str, ...] = ("mlp", "cnn"), ks=(1, 2, 4, 8)) -> None:
    """The proxy's cost per training step by model and ``every_n_steps`` (interleaved runs, best of ``repeats``)."""
    for net in nets:
        time_training(2, None, net)  # warm-up
        base, runs = [], {k: [] for k in ks}
        for _ in range(repeats):
            base.append(time_training(steps, None, net))
            for k in ks:
                runs[k].append(time_training(steps, LossSensitivity(mode="proxy", every_n_steps=k), net))
        b = min(base)
        cells = ", ".join(f"k={k}: {100 * (min(v) / b - 1):+.1f}%" for k, v in runs.items())
        print(f"proxy every_n_steps, {net}, batch 128, {steps} steps, best of {repeats}: without {b:.2f}s; {cells}")


def gini_point(n: int, total_steps: int, window: int, measure_every: int = 2, per_class: bool = False, seed: int = 0):
    """Figure 3: train the 2x16 MLP with plain SGD (lr 0.05, batch 32 with replacement) for ``total_steps``, replay
    the last ``window`` steps, return (gini, seconds for training, seconds for the replay)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 14, 14, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(seed)
    model = MLP(196, 10, hidden=(16, 16), init="glorot_uniform")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = SGDWindowRecorder(model, opt)
    t0 = time.perf_counter()
    for step in range(total_steps):
        idx = torch.randint(0, n, (32,), generator=g)
        if step == total_steps - window:
            rec.start()
        if rec.started:
            rec.record(idx)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    t1 = time.perf_counter()
    w = rec.window
    out = unrolled_sensitivity(model, w.params, x, y, w.batch_indices, lr=w.lrs,
                               measure_steps=range(1, window, measure_every), per_class=per_class, num_classes=10)
    t2 = time.perf_counter()
    return gini(out.g_bar), t1 - t0, t2 - t1


def bench_unrolled() -> None:
    value, train_s, replay_s = gini_point(1000, 2000, 500)
    print(f"unrolled, Figure 3 point (N=1000, 14x14, MLP 2x16, batch 32, T=2000, window 500, every 2nd step): "
          f"gini {value:.3f}, training {train_s:.1f}s + replay {replay_s:.1f}s = {train_s + replay_s:.1f}s")
    for k in (100, 200, 500):
        _, _, s = gini_point(1000, k, k)
        print(f"  scaling with K: N=1000, window {k:4d}: replay {s:6.1f}s")
    for n in (250, 1000, 4000):
        _, _, s = gini_point(n, 200, 200)
        print(f"  scaling with N: window 200, N={n:5d}: replay {s:6.1f}s")
    _, _, s = gini_point(1000, 500, 500, per_class=True)
    print(f"  per-class matrix, N=1000, window 500, every 2nd step: replay {s:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--skip-unrolled", action="store_true")
    parser.add_argument("--skip-every", action="store_true", help="no proxy every_n_steps table")
    parser.add_argument("--every-steps", type=int, default=16, help="training steps per every_n_steps run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_unrolled:
        bench_unrolled()
    if not args.skip_proxy:
        bench_proxy(args.proxy_steps, args.repeats)
    if not args.skip_every:
        bench_proxy_every(args.every_steps, args.repeats)


if __name__ == "__main__":
    main()
