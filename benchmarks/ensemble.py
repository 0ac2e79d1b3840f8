"""Figure 1 ensemble: 100 one-epoch MLP runs at once (``train_ensemble``) against sequential Lightning Trainer runs.

Setting (Figure 1 of Arpit et al. 2017, dataset and width not stated by the paper): 1,000 training examples, an MLP
with two hidden layers of 256 ReLU units, plain SGD lr 0.01, batch 32, one epoch, 100 runs with a new
initialisation and data order each. Two inputs: the real sklearn digits (64 features) and a synthetic MNIST-shaped
1,000 x 784 set (the heavier case). The Trainer reference is a real ``pytorch_lightning.Trainer`` + LightningModule,
one epoch per run, progress bar, logger, checkpointing and model summary off; ``--trainer-runs`` of them are timed
and the time per run is extrapolated to ``--members`` runs (said in the output).

Also prints the Figure 1 check on the digits: the spread of per-example misclassification rates for real data,
randY and randX against the Binomial(E, p) reference of the same mean rate.

    python -m benchmarks.ensemble [--members 100] [--trainer-runs 10] [--threads 2] [--hidden 256 256] [--skip-figure1]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules import NoisyDigits
from memo_callbacks.functional import binomial_reference, misclassification_rate, train_ensemble

#: Where the Trainers may write (nothing goes to the current directory); removed at exit.
SCRATCH = tempfile.TemporaryDirectory(prefix="memo-callbacks-bench-")

HIDDEN, LR, BATCH = (256, 256), 0.01, 32


class MLPModule(pl.LightningModule):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        widths = [in_features, *HIDDEN]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def trainer_runs(x: torch.Tensor, y: torch.Tensor, runs: int) -> float:
    """Seconds per sequential Trainer run (one epoch each, then an eval pass over the 1,000 examples)."""
    start = time.perf_counter()
    for r in range(runs):
        pl.seed_everything(r, verbose=False)
        model = MLPModule(x[0].numel(), int(y.max()) + 1)
        loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=SCRATCH.name)
        trainer.fit(model, loader)
        with torch.no_grad():
            (model.net(x).argmax(1) == y).cpu()
    return (time.perf_counter() - start) / runs


def ensemble_time(x: torch.Tensor, y: torch.Tensor, members: int, repeats: int = 3) -> float:
    train_ensemble(x, y, num_members=2, hidden=HIDDEN, lr=LR, batch_size=BATCH)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        train_ensemble(x, y, num_members=members, hidden=HIDDEN, lr=LR, batch_size=BATCH, seed=1)
        best = min(best, time.perf_counter() - start)
    return best


def digits(noise: str = "none"):
    kw = {} if noise == "none" else {"noise": noise}
    dm = NoisyDigits(subset=1000, seed=0, **kw)
    dm.setup("fit")
    return dm.train_x, dm.train_y


def figure1_check(members: int) -> None:
    print(f"\nFigure 1 check (digits, 1,000 examples, MLP 2x256, 1 epoch, {members} runs; lr 0.01 and lr 0.1)")
    print(f"{'data':8} {'lr':>5} {'mean rate':>10} {'std of rates':>13} {'binomial std':>13} {'ratio':>6}")
    for lr in (0.01, 0.1):
        for name, noise in (("real", "none"), ("randY", "random_labels"), ("randX", "random_inputs")):
            x, y = digits(noise)
            run = train_ensemble(x, y, num_members=members, hidden=HIDDEN, lr=lr, batch_size=BATCH, seed=0)
            rate = misclassification_rate(run.correct)
            p = float(rate.mean())
            ref = binomial_reference(members, p, x.shape[0])
            print(f"{name:8} {lr:5.2f} {p:10.3f} {rate.std().item():13.3f} {ref.std().item():13.3f} "
                  f"{rate.std().item() / max(ref.std().item(), 1e-12):6.2f}")


def main() -> None:
    global HIDDEN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--trainer-runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN), help="hidden widths")
    parser.add_argument("--skip-figure1", action="store_true")
    args = parser.parse_args()
    HIDDEN = tuple(args.hidden)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    cases = {
        "digits 1000x64": digits(),
        "synthetic 1000x784": (torch.randn(1000, 784, generator=g), torch.randint(0, 10, (1000,), generator=g)),
    }
    print(f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, {args.threads} threads, CPU")
    print(f"MLP {HIDDEN}, SGD lr {LR}, batch {BATCH}, 1 epoch, {args.members} runs")
    for name, (x, y) in cases.items():
        per_run = trainer_runs(x, y, args.trainer_runs)
        ens = ensemble_time(x, y, args.members)
        seq = per_run * args.members
        print(f"{name}: sequential Trainer {per_run:.3f} s/run (timed {args.trainer_runs} runs) -> "
              f"{seq:.1f} s extrapolated for {args.members}; ensemble {ens:.2f} s (best of 3); "
              f"speed-up {seq / ens:.1f}x")
    if not args.skip_figure1:
        figure1_check(args.members)


if __name__ == "__main__":
    main()
