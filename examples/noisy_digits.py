"""A short working example: the noisy variants of a real dataset, and which examples are noisy."""

from datamodules import NoisyDigits

for noise, fraction in [("none", None), ("random_labels", 0.4), ("random_inputs", 1.0)]:
    dm = NoisyDigits(noise=noise, noise_fraction=fraction, seed=0)
    dm.setup("fit")
    c = dm.corruption
    changed = int((c.targets != c.clean_targets).sum())
    print(
        f"{noise:>14} fraction={dm.noise_fraction:.1f}: {c.num_corrupted}/{dm.num_train} corrupted "
        f"({changed} labels changed), first noisy indices {c.indices[:5].tolist()}, "
        f"input shape {dm.input_shape}, {dm.num_classes} classes"
    )
batch = next(iter(dm.train_dataloader()))
print("a batch:", {k: tuple(v.shape) for k, v in batch._asdict().items()})
