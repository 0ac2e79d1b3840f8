"""Figure 8: CSR and accuracies on CIFAR-10 (the CNN) at 0-80% random labels and random inputs.

See ``noise_levels.py`` for the claims. The paper's CIFAR-10 CNN, SGD with momentum 0.9, lr 0.01 halved every 15
epochs; CSR at the paper's radius r = 0.3 pixel units (0-255 scale, divided by each channel's std).

    python experiments/fig8.py --gpus 2 --seeds 0 1 2           # CIFAR-10 (torchvision files), 3 seeds
    python experiments/fig8.py --dataset cifar10-jpg --width 0.1 --subset 5000 --epochs 20 \
        --csr-samples 200 --csr-every 5 --seeds 0 1 2       # CPU-sized, JPEGs (REPRODUCTION.md; ~45 min per kind)
    python experiments/fig8.py --quick            # scikit-learn digits (8x8), MLP 2 x 512, r = 3 (see below)

``--quick`` runs on scikit-learn's 8x8 digits, where r = 0.3 pixel units flips almost no sample, so it uses r = 3
pixel units; every CIFAR-10 run keeps r = 0.3.
"""

from __future__ import annotations

from dataclasses import dataclass

from common import Dataset, Model
from noise_levels import NoiseLevelConfig, run


@dataclass
class Fig8Config(NoiseLevelConfig):
    dataset: Dataset = "cifar10"
    model: Model = "cnn"


def main(argv: list[str] | None = None):
    return run("fig8", Fig8Config, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
