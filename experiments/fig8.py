"""Figure 8: CSR and accuracies for 0-80% random inputs (see ``noise_levels.py`` for the claim).

    python experiments/fig8.py --gpus 2        # CIFAR-10 CNN
    python experiments/fig8.py --quick         # scikit-learn digits, MLP, a few minutes on a CPU
"""

from noise_levels import run


def main(argv: list[str] | None = None):
    return run("fig8", "random_inputs", argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
