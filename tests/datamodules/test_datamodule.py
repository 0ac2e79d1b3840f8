import pytest
import torch

from datamodules import IndexSampler, NoisyBatch, NoisyDigits, NoisyMNIST


def test_one_class_per_example_and_subset():
    dm = NoisyDigits(one_class_per_example=True, subset=100, noise="random_inputs", input_noise="uniform",
                     normalize=False)
    assert dm.num_classes == 100  # known before setup, for building the model
    dm.setup()
    assert dm.num_classes == 100
    assert torch.equal(dm.train_y, torch.arange(100))
    assert dm.train_x.min() >= 0 and dm.train_x.max() <= 1


def test_subset_first_and_random():
    full = NoisyDigits(normalize=False)
    full.setup()
    first = NoisyDigits(subset=50, normalize=False)
    first.setup()
    assert torch.equal(first.train_x, full.train_x[:50])
    rand = NoisyDigits(subset=50, subset_mode="random", normalize=False, seed=4)
    rand.setup()
    assert not torch.equal(rand.train_x, full.train_x[:50])


def test_downscale_average_pools():
    full = NoisyDigits(normalize=False)
    full.setup()
    small = NoisyDigits(downscale=2, normalize=False)
    small.setup()
    assert small.input_shape == (1, 4, 4)
    torch.testing.assert_close(small.train_x[:, :, 0, 0], full.train_x[:, :, :2, :2].mean(dim=(2, 3)))


def test_normalisation_and_unit_conversion():
    dm = NoisyDigits(normalize=True)
    dm.setup()
    x = dm.train_x
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3
    lo, hi = dm.input_bounds
    torch.testing.assert_close(lo, -dm.mean / dm.std)
    torch.testing.assert_close(dm.pixels_to_input_units(0.3), 0.3 / 255 / dm.std)
    assert x.min() >= lo.min() - 1e-5 and x.max() <= hi.max() + 1e-5


def test_batches_carry_index_and_noisy_flag():
    dm = NoisyDigits(noise="random_labels", noise_fraction=0.5, batch_size=64)
    dm.setup()
    seen = []
    for batch in dm.train_dataloader():
        assert isinstance(batch, NoisyBatch)
        assert torch.equal(batch.y, dm.train_y[batch.index])
        assert torch.equal(batch.noisy, dm.noisy_mask[batch.index])
        assert torch.equal(batch.x, dm.train_x[batch.index])
        seen.append(batch.index)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(dm.num_train))
    val = list(dm.val_dataloader())
    assert sum(b.x.shape[0] for b in val) == dm.num_val and not any(b.noisy.any() for b in val)


def test_epochs_reshuffle_deterministically():
    dm = NoisyDigits(batch_size=2000)
    dm.setup()
    loader = dm.train_dataloader()
    e0 = next(iter(loader)).index
    loader.sampler.set_epoch(1)
    e1 = next(iter(loader)).index
    assert not torch.equal(e0, e1)
    loader.sampler.set_epoch(0)
    assert torch.equal(next(iter(loader)).index, e0)


@pytest.mark.parametrize("n,world", [(10, 3), (9, 3), (1, 2)])
def test_index_sampler_shards(n, world):
    padded = [IndexSampler(n, True, 0, r, world, pad=True).indices() for r in range(world)]
    assert len({len(p) for p in padded}) == 1  # equal step counts on every rank
    assert set(torch.cat(padded).tolist()) == set(range(n))
    exact = [IndexSampler(n, True, 0, r, world, pad=False).indices() for r in range(world)]
    assert sorted(torch.cat(exact).tolist()) == list(range(n))  # each example exactly once


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(noise_fraction=1.5, noise="random_labels"), r"`noise_fraction` must be in \[0, 1\], got 1.5"),
        (dict(noise_fraction=-0.1, noise="random_inputs"), r"`noise_fraction` must be in \[0, 1\], got -0.1"),
        (dict(noise="randY"), r"`noise` must be one of .*got 'randY'"),
        (dict(noise_fraction=0.5), r"`noise_fraction` must be left unset with noise='none', got 0.5"),
        (dict(label_noise="flip", noise="random_labels"), r"`label_noise` must be one of .*got 'flip'"),
        (dict(input_noise="pink", noise="random_inputs"), r"`input_noise` must be one of .*got 'pink'"),
        (dict(downscale=3), r"`downscale` must divide the image size 8x8, got 3"),
        (dict(downscale=0), r"`downscale` must be a positive integer, got 0"),
        (dict(subset=0), r"`subset` must be a positive integer or None, got 0"),
        (dict(subset_mode="last"), r"`subset_mode` must be 'first' or 'random', got 'last'"),
        (dict(batch_size=0), r"`batch_size` must be >= 1, got 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoisyDigits(**kwargs)


def test_subset_larger_than_dataset():
    with pytest.raises(ValueError, match=r"`subset` must be at most the training set size 60000, got 70000"):
        NoisyMNIST(subset=70000)
    dm = NoisyDigits(subset=5000)
    with pytest.raises(ValueError, match=r"`subset` must be at most the training set size 1500, got 5000"):
        dm.setup()


def test_properties_before_setup():
    dm = NoisyDigits()
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)
    with pytest.raises(RuntimeError, match="call `dm.setup"):
        dm.corruption


def test_trainer_reshuffles_every_epoch():
    import pytorch_lightning as pl

    class FirstIndices(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.first = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.first.append(batch.index[:8].clone())
            return torch.nn.functional.cross_entropy(self.lin(batch.x.flatten(1)), batch.y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = NoisyDigits(batch_size=256, seed=1)
    model = FirstIndices()
    pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(model, dm)
    assert len(model.first) == 3
    assert not torch.equal(model.first[0], model.first[1]) and not torch.equal(model.first[1], model.first[2])
    dm.setup()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    assert torch.equal(next(iter(loader)).index[:8], model.first[2])  # the order is a function of (seed, epoch)


def test_mid_epoch_resume_continues_with_the_batches_not_yet_trained_on(tmp_path):
    """Lightning restarts a plain dataloader at its first batch after a mid-epoch checkpoint (replaying some batches,
    skipping others); this loader resumes exactly where the checkpoint was taken."""
    import pytorch_lightning as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch_idx, batch.index.clone()))
            return torch.nn.functional.cross_entropy(self.lin(batch.x.flatten(1)), batch.y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = NoisyDigits(subset=600, batch_size=128, seed=0)  # 5 batches per epoch
    kw = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    straight = Recorder()
    pl.Trainer(max_epochs=2, enable_checkpointing=False, **kw).fit(straight, dm)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    first = Recorder()
    pl.Trainer(max_epochs=1, max_steps=2, callbacks=[ckpt], **kw).fit(first, dm)
    resumed = Recorder()
    pl.Trainer(max_epochs=2, enable_checkpointing=False, **kw).fit(resumed, dm, ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    both = first.seen + resumed.seen
    assert [(e, i) for e, i, _ in both] == [(e, i) for e, i, _ in straight.seen]
    for (_, _, a), (_, _, b) in zip(both, straight.seen):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="`batches_done` must be >= 0, got -1"):
        dm.train_dataloader().resume_at(-1)
