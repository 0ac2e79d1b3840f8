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

Run: ``python -m benchmarks.lass`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations only (smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, CPU")
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


if __name__ == "__main__":
    main()
