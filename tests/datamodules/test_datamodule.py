import pytest
import torch

from datamodules import IndexSampler, NoisyBatch, NoisyDigits, NoisyMNIST, TensorBatchLoader


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
        (dict(batch_size=0), r"`batch_size` must be an int >= 1, got 0"),
        (dict(val_batch_size=0), r"`val_batch_size` must be an int >= 1 or None, got 0"),
        (dict(subset=True), r"`subset` must be a positive integer or None, got True"),
        (dict(subset=10.0), r"`subset` must be a positive integer or None, got 10.0"),
        (dict(val_size=True), r"`val_size` must be a positive integer or None, got True"),
        (dict(downscale=2.0), r"`downscale` must be a positive integer, got 2.0"),
        (dict(noise="random_labels", noise_fraction=True), r"`noise_fraction` must be in \[0, 1\], got True"),
        (dict(noise="random_labels", noise_fraction="0.5"), r"`noise_fraction` must be in \[0, 1\], got '0.5'"),
        (dict(noise_fraction=False), r"`noise_fraction` must be left unset with noise='none', got False"),
        (dict(seed=2**64), r"`seed` must be in \[-2\*\*63, 2\*\*64 - 1\] \(torch's seed range\), got 18446744073709551616"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoisyDigits(**kwargs)


BAD_TYPES = [
    (dict(batch_size=2.5), r"`batch_size` must be an int >= 1, got 2.5 \(float\)"),
    (dict(batch_size="8"), r"`batch_size` must be an int >= 1, got '8' \(str\)"),
    (dict(batch_size=True), r"`batch_size` must be an int >= 1, got True \(bool\)"),
    (dict(val_batch_size=1.5), r"`val_batch_size` must be an int >= 1 or None, got 1.5 \(float\)"),
    (dict(seed="x"), r"`seed` must be an int \(a python or numpy integer, not a bool\), got 'x' \(str\)"),
    (dict(seed=None), r"`seed` must be an int .*got None \(NoneType\)"),
    (dict(seed=1.5), r"`seed` must be an int .*got 1.5 \(float\)"),
    (dict(seed=0.0), r"`seed` must be an int .*got 0.0 \(float\)"),
    (dict(seed=True), r"`seed` must be an int .*got True \(bool\)"),
    (dict(seed=torch.tensor(0)), r"`seed` must be an int .*got tensor\(0\) \(Tensor\)"),
    (dict(shuffle="no"), r"`shuffle` must be a bool, got 'no' \(str\)"),
    (dict(normalize=1), r"`normalize` must be a bool, got 1 \(int\)"),
    (dict(drop_last=None), r"`drop_last` must be a bool, got None"),
    (dict(on_device="cuda"), r"`on_device` must be a bool, got 'cuda'"),
    (dict(one_class_per_example=0), r"`one_class_per_example` must be a bool, got 0"),
    (dict(data_dir=3), r"`data_dir` must be a path \(str or os.PathLike\), got 3 \(int\)"),
]


@pytest.mark.parametrize("kwargs, match", BAD_TYPES, ids=[f"{k}={v!r}" for d, _ in BAD_TYPES for k, v in d.items()])
def test_bad_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        NoisyDigits(**kwargs)


def test_seeds_are_ints_and_numpy_ints_name_the_same_data():
    import numpy as np

    a = NoisyDigits(noise="random_labels", noise_fraction=0.3, seed=5)
    b = NoisyDigits(noise="random_labels", noise_fraction=0.3, seed=np.int64(5))
    c = NoisyDigits(noise="random_labels", noise_fraction=0.3, seed=6)
    for dm in (a, b, c):
        dm.setup()
    assert b.seed == 5 and type(b.seed) is int
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.noisy_mask, b.noisy_mask)
    assert not torch.equal(a.noisy_mask, c.noisy_mask)


@pytest.mark.parametrize(
    "args, error, match",
    [
        (dict(num_examples=-1), ValueError, r"`num_examples` must be an int >= 0, got -1"),
        (dict(num_examples=4.0), TypeError, r"`num_examples` must be an int >= 0, got 4.0"),
        (dict(shuffle=1), TypeError, r"`shuffle` must be a bool, got 1"),
        (dict(seed="0"), TypeError, r"`seed` must be an int"),
        (dict(world_size=0), ValueError, r"`world_size` must be an int >= 1, got 0"),
        (dict(rank=2, world_size=2), ValueError, r"`rank` must be in \[0, world_size=2\), got 2"),
        (dict(pad="yes"), TypeError, r"`pad` must be a bool, got 'yes'"),
    ],
)
def test_index_sampler_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        IndexSampler(**(dict(num_examples=4, shuffle=True, seed=0) | args))


def test_tensor_batch_loader_bad_arguments():
    x, y, noisy = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool)
    sampler = IndexSampler(4, False, 0)
    with pytest.raises(TypeError, match=r"`batch_size` must be an int >= 1, got 2.5"):
        TensorBatchLoader(x, y, noisy, 2.5, sampler)
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1, got 0"):
        TensorBatchLoader(x, y, noisy, 0, sampler)
    with pytest.raises(TypeError, match=r"`sampler` must be an IndexSampler, got range"):
        TensorBatchLoader(x, y, noisy, 2, range(4))
    with pytest.raises(ValueError, match=r"`y` must be a tensor with the sampler's 4 rows, got \(3,\)"):
        TensorBatchLoader(x, y[:3], noisy, 2, sampler)
    with pytest.raises(TypeError, match=r"`drop_last` must be a bool, got 'no'"):
        TensorBatchLoader(x, y, noisy, 2, sampler, drop_last="no")


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
