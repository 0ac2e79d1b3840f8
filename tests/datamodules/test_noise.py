import pytest
import torch

from datamodules import NoisyDigits
from datamodules.noise import channel_stats, choose_corrupted, corrupt_inputs, corrupt_labels, generator_from_seed

FRACTIONS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.333]


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("noise", ["random_labels", "random_inputs"])
def test_exact_corruption_count(noise, fraction):
    dm = NoisyDigits(noise=noise, noise_fraction=fraction, seed=3)
    dm.setup()
    n = dm.num_train
    assert dm.corruption.num_corrupted == round(fraction * n)
    assert dm.noisy_mask.dtype == torch.bool and dm.noisy_mask.shape == (n,)
    clean = NoisyDigits(seed=3)
    clean.setup()
    untouched = ~dm.noisy_mask
    # Untouched examples are bit-identical to the clean data; touched ones differ in the corrupted part only.
    assert torch.equal(dm.train_x[untouched], clean.train_x[untouched])
    assert torch.equal(dm.train_y[untouched], clean.train_y[untouched])
    if noise == "random_labels":
        assert torch.equal(dm.train_x, clean.train_x)
        assert torch.equal(dm.corruption.clean_targets, clean.train_y)
    else:
        assert torch.equal(dm.train_y, clean.train_y)
        if fraction > 0:
            assert not torch.isclose(dm.train_x[dm.noisy_mask], clean.train_x[dm.noisy_mask]).all(dim=(1, 2, 3)).any()


def test_wrong_labels_all_change_and_uniform_keeps_about_one_in_k():
    wrong = NoisyDigits(noise="random_labels", label_noise="wrong", seed=1)
    wrong.setup()
    assert (wrong.train_y != wrong.corruption.clean_targets).all()
    uniform = NoisyDigits(noise="random_labels", label_noise="uniform", seed=1)
    uniform.setup()
    kept = (uniform.train_y == uniform.corruption.clean_targets).float().mean().item()
    assert 0.05 < kept < 0.15  # about 1/K = 0.1 stay correct by chance
    counts = torch.bincount(uniform.train_y, minlength=10).float()
    assert counts.min() > 0.6 * counts.mean()  # uniform over classes


def test_same_seed_same_data_other_seed_different():
    kw = dict(noise="random_labels", noise_fraction=0.4)
    a, b, c = NoisyDigits(seed=5, **kw), NoisyDigits(seed=5, **kw), NoisyDigits(seed=6, **kw)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.noisy_mask, b.noisy_mask)
    assert not torch.equal(a.noisy_mask, c.noisy_mask)
    order_a = next(iter(a.train_dataloader())).index
    order_b = next(iter(b.train_dataloader())).index
    assert torch.equal(order_a, order_b)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dm = NoisyDigits(noise="random_inputs", noise_fraction=0.5, subset=500, subset_mode="random", seed=2)
    dm.setup()
    list(dm.train_dataloader())
    assert torch.equal(torch.rand(3), expected)


def test_random_inputs_match_clean_statistics():
    x = torch.rand(4000, 3, 4, 4) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    mask = torch.ones(4000, dtype=torch.bool)
    noisy = corrupt_inputs(x, mask, "gaussian", generator_from_seed(0))
    m_clean, s_clean = channel_stats(x)
    m_noise, s_noise = channel_stats(noisy)
    torch.testing.assert_close(m_noise, m_clean, atol=0.01, rtol=0)
    torch.testing.assert_close(s_noise, s_clean, atol=0.01, rtol=0.02)
    glob = corrupt_inputs(x, mask, "gaussian_global", generator_from_seed(0))
    assert abs(glob.mean() - x.mean()) < 0.01 and abs(glob.std() - x.std()) < 0.01
    uni = corrupt_inputs(x, mask, "uniform", generator_from_seed(0))
    assert uni.min() >= 0 and uni.max() <= 1 and abs(uni.mean() - 0.5) < 0.01


def test_random_inputs_in_datamodule_use_clean_training_stats():
    dm = NoisyDigits(noise="random_inputs", normalize=False, seed=0)
    dm.setup()
    clean = NoisyDigits(normalize=False, seed=0)
    clean.setup()
    mean, std = channel_stats(clean.train_x)
    m, s = channel_stats(dm.train_x)
    assert abs(m - mean).max() < 0.01 and abs(s - std).max() < 0.01
    assert dm.train_x.min() < 0  # Gaussian noise is not clipped, as in the paper


def test_choose_corrupted_and_label_helpers_validate():
    with pytest.raises(ValueError, match=r"`noise_fraction` must be in \[0, 1\], got 1.5"):
        choose_corrupted(10, 1.5, generator_from_seed(0))
    with pytest.raises(ValueError, match="`label_noise` must be one of"):
        corrupt_labels(torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool), 10, "bogus", generator_from_seed(0))
    with pytest.raises(ValueError, match="at least 2 classes"):
        corrupt_labels(torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool), 1, "wrong", generator_from_seed(0))
    with pytest.raises(ValueError, match="`input_noise` must be one of"):
        corrupt_inputs(torch.zeros(3, 1, 2, 2), torch.ones(3, dtype=torch.bool), "salt", generator_from_seed(0))


def test_seeds_are_hashed_only_as_ints():
    import numpy as np

    from datamodules.noise import derive_seed

    assert derive_seed(3, "mask") == derive_seed(np.int64(3), "mask") == derive_seed(np.uint32(3), "mask")
    for seed in (3.0, "3", torch.tensor(3), None, False):
        with pytest.raises(TypeError, match=r"`seed` must be an int \(a python or numpy integer, not a bool\)"):
            generator_from_seed(seed, "mask")
