"""LASS engine speed against the model's own limit and two straightforward implementations, in one run.

For the paper's MNIST MLP (784-4096-4096-10) and the paper's CIFAR-10 CNN at width 0.25, at batch 256:

1. **limit**: with no sample flipping (radius 0: the iterate cannot move, so the prediction cannot change, but every
   step still takes its gradient, draws its noise and projects), engine sample-iterations/s over the model's own
   forward + backward (w.r.t. the input) throughput at batch 256. Target >= 85%.
2. **per-sample loop**: a straightforward LASS, one sample at a time (batch 1), one forward + backward per step.
   Timed on a few samples and iterations and extrapolated per sample-iteration. Target >= 20x.
3. **early stopping**: half the samples sit on a decision boundary (bisected between two inputs predicted
   differently) and flip within a few steps; the other half never flip. Engine vs a batched loop that runs every
   sample for ``max_iter`` steps at batch 256 (as attack libraries run PGD), timed for a few of its steps and
   extrapolated to ``max_iter``. Target >= 1.6x.

4. **peer**: against ``torchattacks.PGD(model, eps=r, alpha=0.25, steps=100, random_start=False)`` given the
   predicted labels, on the same trained MLP (784-512-512-10) and CNN, the same 1,000 synthetic MNIST-shaped inputs,
   r in {0.3, 3, 10} pixel units, 1 and 2 threads: critical share found by each, sample-iterations/s (LASS counts
   the steps it takes, a flip ends a sample's search) and wall time. Targets: >= 1.0x per iteration with no
   flips, >= 1.5x when half flip early. Also one default CSR measurement in training epochs. Needs the ``bench``
   extra (``torchattacks``); prints a skip line without it.

Run: ``python -m benchmarks.lass`` (``--quick`` for a smoke run, ``--skip-engine`` for the peer part only).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from memo_callbacks.functional import lass
from models import MLP, PaperCNN

BATCH = 256


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def model_throughput(model: nn.Module, x: torch.Tensor, iters: int) -> float:
    """Sample forward+backward (w.r.t. the input) passes per second at the batch size of ``x``."""
    ref = model(x).argmax(1)

    def run():
        for _ in range(iters):
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xi), ref, reduction="sum"), xi)

    run()  # warm-up
    return x.shape[0] * iters / timed(run, 2)


def per_sample_loop(model, x, r, alpha, beta, iters, gen):
    """The straightforward LASS: one sample at a time, one forward + backward per step."""
    for i in range(x.shape[0]):
        x0 = x[i : i + 1]
        c = model(x0).argmax(1)
        xt = x0.clone()
        for _ in range(iters):
            xt.requires_grad_(True)
            logits = model(xt)
            if logits.argmax(1).item() != c.item():
                break
            (g,) = torch.autograd.grad(F.cross_entropy(logits, c), xt)
            with torch.no_grad():
                xt = xt + alpha * g.sign() + beta * torch.randn(xt.shape, generator=gen)
                xt = torch.minimum(torch.maximum(xt, x0 - r), x0 + r)


def pgd_loop(model, x, r, alpha, beta, iters, gen):
    """Every sample of a batch for `iters` steps, recording the first flip but never stopping (PGD-style)."""
    with torch.no_grad():
        c = model(x).argmax(1)
    xt, first = x.clone(), torch.zeros(x.shape[0], dtype=torch.long)
    for t in range(1, iters + 1):
        xt.requires_grad_(True)
        logits = model(xt)
        first = torch.where((first == 0) & (logits.argmax(1) != c), t, first)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, c, reduction="sum"), xt)
        with torch.no_grad():
            xt = xt + alpha * g.sign() + beta * torch.randn(xt.shape, generator=gen)
            xt = torch.minimum(torch.maximum(xt, x - r), x + r)
    return first


@torch.no_grad()
def boundary_points(model: nn.Module, x: torch.Tensor, steps: int = 30) -> torch.Tensor:
    """For each x[i], a point on the segment to another input predicted differently, just on x[i]'s side."""
    pred = model(x).argmax(1)
    partner = torch.empty(len(x), dtype=torch.long)
    for i in range(len(x)):
        others = (pred != pred[i]).nonzero().flatten()
        partner[i] = others[i % len(others)]
    a, b = x, x[partner]
    lo, hi = torch.zeros(len(x)), torch.ones(len(x))
    shape = (-1, *([1] * (x.dim() - 1)))
    for _ in range(steps):
        mid = (lo + hi) / 2
        same = model(a + mid.view(shape) * (b - a)).argmax(1) == pred
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return a + lo.view(shape) * (b - a)


def bench(name: str, model: nn.Module, shape: tuple[int, ...], quick: bool) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    model.eval()
    x = torch.randn(BATCH, *shape, generator=gen)
    iters = 5 if quick else 20
    beta = 0.2 / 255  # the paper's noise, so the engine pays for its noise draws

    # 1. limit: radius 0, nothing can flip.
    limit = model_throughput(model, x, iters)
    t = timed(lambda: lass(model, x, radius=0.0, step_size=0.25 / 255, noise_std=beta, max_iter=iters))
    engine = BATCH * iters / t

    # 2. per-sample loop, extrapolated per sample-iteration.
    few, few_iters = (2, 3) if quick else (4, 10)
    t_loop = timed(lambda: per_sample_loop(model, x[:few], 0.0, 0.25 / 255, beta, few_iters, gen))
    loop = few * few_iters / t_loop

    # 3. half flip early: boundary points + confident points, max_iter = 100, N = 2 * BATCH through 256 slots.
    max_iter = 20 if quick else 100
    n = 2 * BATCH
    xs = torch.randn(n, *shape, generator=gen)
    xs[: n // 2] = boundary_points(model, xs[: n // 2])
    xs = xs[torch.randperm(n, generator=gen)]
    r, alpha = 2e-3, 5e-4
    start = time.perf_counter()
    out = lass(model, xs, radius=r, step_size=alpha, noise_std=alpha / 2, max_iter=max_iter, batch_size=BATCH)
    t_engine = time.perf_counter() - start
    pgd_iters = 2 if quick else 10
    t_pgd_few = timed(lambda: pgd_loop(model, xs[:BATCH], r, alpha, alpha / 2, pgd_iters, gen))
    t_pgd = t_pgd_few * (max_iter / pgd_iters) * (n / BATCH)
    flipped = out.critical.float().mean().item()
    early = (out.critical & (out.iterations <= 10)).float().mean().item()
    return dict(
        name=name, limit=limit, engine=engine, ratio=engine / limit, loop=loop, speedup_loop=engine / loop,
        flipped=flipped, early=early, mean_iter=out.iterations[out.critical].float().mean().item(),
        t_engine=t_engine, t_pgd=t_pgd, speedup_pgd=t_pgd / t_engine,
    )


# ------------------------------------------------------------------------------------------- peer: torchattacks
PEER_RADII = (0.3, 3.0, 10.0)  # pixel units


def synthetic_mnist(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-shaped inputs in [0, 1]: ten smooth class prototypes plus pixel noise, so a net learns them."""
    g = torch.Generator().manual_seed(seed)
    protos = F.avg_pool2d(torch.rand(10, 1, 28, 28, generator=g), 5, 1, 2)  # [10, 1, 28, 28]
    protos = (protos - protos.amin((1, 2, 3), keepdim=True)) / protos.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.6 * protos[y] + 0.4 * torch.rand(n, 1, 28, 28, generator=g)).clamp(0, 1)
    return x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 0.05) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def epoch_seconds(model: nn.Module, shape: tuple[int, ...], n_epoch: int = 60_000, steps: int = 20) -> float:
    """One training epoch of ``n_epoch`` examples at batch 128 (SGD), extrapolated from ``steps`` steps."""
    import copy

    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.rand(128, *shape), torch.randint(0, 10, (128,))

    def run():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()

    run()
    return timed(run, 2) / steps * math.ceil(n_epoch / 128)


def bench_peer(quick: bool, threads: tuple[int, ...], cnn_samples: int | None = None) -> None:
    """LASS vs ``torchattacks.PGD`` on the same trained nets, the same inputs, the same radii, in one process."""
    try:
        import torchattacks
    except ImportError:
        print("\npeer benchmark SKIPPED: torchattacks is not installed (pip install 'memo-callbacks[bench]')")
        return
    n, n_train, max_iter = (64, 512, 10) if quick else (1000, 10_000, 100)
    x_train, y_train = synthetic_mnist(n_train)
    x_eval, _ = synthetic_mnist(n, seed=1)
    torch.manual_seed(0)
    nets = {
        "MLP 784-512-512-10": train(MLP(784, 10, hidden=(512, 512)), x_train, y_train, 1 if quick else 3),
        "PaperCNN 1x28x28 width 0.25": train(PaperCNN((1, 28, 28), 10, width=0.25), x_train, y_train, 1 if quick else 2),
    }
    print(f"\npeer: LASS vs torchattacks {torchattacks.__version__} PGD(eps=r, alpha=0.25, steps={max_iter}, "
          f"random_start=False) on the predicted labels, {n} inputs, pixel units (inputs in [0, 1]); "
          f"LASS noise 0.2, clip (0, 1) like PGD's")
    print(f"{'model':28s} {'N':>5s} {'thr':>3s} {'r':>5s} {'LASS crit':>9s} {'PGD crit':>8s} {'LASS s':>7s} {'PGD s':>7s} "
          f"{'LASS it/s':>10s} {'PGD it/s':>9s} {'it/s ratio':>10s} {'speedup':>7s}")
    saved = torch.get_num_threads()
    for name, net in nets.items():
        with torch.no_grad():
            pred = torch.cat([net(c).argmax(1) for c in x_eval.split(256)])
        xs, ps = x_eval, pred
        if cnn_samples is not None and "CNN" in name:
            xs, ps = x_eval[:cnn_samples], pred[:cnn_samples]  # the first of the same inputs (a slower net)
        m = len(xs)
        for t in threads:
            torch.set_num_threads(t)
            for r in PEER_RADII:
                eps, alpha, beta = r / 255, 0.25 / 255, 0.2 / 255
                run_lass = lambda xs=xs: lass(net, xs, radius=eps, step_size=alpha, noise_std=beta, max_iter=max_iter,
                                        clip=(0.0, 1.0), batch_size=256)
                run_lass(xs[:32])  # warm-up
                start = time.perf_counter()
                out = run_lass()
                t_lass = time.perf_counter() - start
                atk = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=max_iter, random_start=False)
                start = time.perf_counter()
                adv = torch.cat([atk(xc, yc) for xc, yc in zip(xs.split(256), ps.split(256))])
                t_pgd = time.perf_counter() - start
                with torch.no_grad():
                    pgd_crit = (torch.cat([net(c).argmax(1) for c in adv.split(256)]) != ps).float().mean().item()
                lass_its = int(out.iterations.sum())  # steps actually taken (a flip ends a sample's search)
                lass_rate, pgd_rate = lass_its / t_lass, m * max_iter / t_pgd
                print(f"{name:28s} {m:5d} {t:3d} {r:5.1f} {100 * out.critical.float().mean().item():8.1f}% "
                      f"{100 * pgd_crit:7.1f}% {t_lass:7.2f} {t_pgd:7.2f} {lass_rate:10.0f} {pgd_rate:9.0f} "
                      f"{lass_rate / pgd_rate:9.2f}x {t_pgd / t_lass:6.2f}x")
    torch.set_num_threads(saved)
    # the cost of one default CSR measurement (1,000 samples x 100 steps, r = 0.3) in training epochs
    net = nets["MLP 784-512-512-10"]
    start = time.perf_counter()
    lass(net, x_eval, radius=0.3 / 255, step_size=0.25 / 255, noise_std=0.2 / 255, max_iter=max_iter)
    t_csr = time.perf_counter() - start
    t_epoch = epoch_seconds(net, (1, 28, 28), steps=3 if quick else 20)
    print(f"one default CSR measurement ({n} samples x {max_iter} steps, r = 0.3) on the MLP: {t_csr:.2f}s = "
          f"{t_csr / t_epoch:.3f} training epochs of 60,000 examples (batch 128, {t_epoch:.1f}s each, extrapolated), "
          f"{torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations only (smoke run)")
    parser.add_argument("--skip-engine", action="store_true", help="only the peer comparison")
    parser.add_argument("--skip-peer", action="store_true", help="no torchattacks comparison")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of the peer runs")
    parser.add_argument("--cnn-samples", type=int, default=None, help="peer: the CNN on the first N inputs only")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, CPU, "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")
    if not args.skip_engine:
        rows = [
            bench("MLP 784-4096-4096-10", MLP(784, 10, hidden=(4096, 4096)), (1, 28, 28), args.quick),
            bench("PaperCNN width 0.25", PaperCNN((3, 32, 32), 10, width=0.25), (3, 32, 32), args.quick),
        ]
        for r in rows:
            print(f"\n{r['name']}")
            print(f"  1. model fwd+bwd {r['limit']:.0f} sample-it/s, engine {r['engine']:.0f} sample-it/s "
                  f"(no flips): {100 * r['ratio']:.1f}% of the limit (target >= 85%)")
            print(f"  2. per-sample loop {r['loop']:.1f} sample-it/s (extrapolated): engine {r['speedup_loop']:.1f}x "
                  f"faster (target >= 20x)")
            print(f"  3. {100 * r['flipped']:.0f}% flipped ({100 * r['early']:.0f}% within 10 steps, mean "
                  f"{r['mean_iter']:.1f} steps); engine {r['t_engine']:.2f}s vs PGD-style {r['t_pgd']:.2f}s "
                  f"(extrapolated): {r['speedup_pgd']:.2f}x (target >= 1.6x)")
    if not args.skip_peer:
        bench_peer(args.quick, tuple(args.threads), args.cnn_samples)
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
