"""Figure 7: CSR and accuracies for 0-80% random labels (see ``noise_levels.py`` for the claim).

    python experiments/fig7.py --gpus 2        # CIFAR-10 CNN
    python experiments/fig7.py --quick         # scikit-learn digits, MLP, a few minutes on a CPU
"""

from noise_levels import run


def main(argv: list[str] | None = None):
    return run("fig7", "random_labels", argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
