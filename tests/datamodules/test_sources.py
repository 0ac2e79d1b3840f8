"""MNIST, CIFAR-10 and image folders, read through torchvision from files written in their real on-disk formats."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from datamodules import NoisyCIFAR10, NoisyImageFolder, NoisyMNIST
from helpers import write_cifar10, write_mnist


def test_mnist_reads_idx_files(tmp_path):
    images, labels = write_mnist(tmp_path, n_train=60, n_test=20)
    dm = NoisyMNIST(str(tmp_path), noise="random_labels", noise_fraction=0.5, normalize=False, downscale=2)
    dm.prepare_data()
    dm.setup()
    assert dm.num_train == 60 and dm.num_val == 20 and dm.input_shape == (1, 14, 14)
    expected = torch.nn.functional.avg_pool2d(torch.from_numpy(images).float().unsqueeze(1) / 255, 2)
    torch.testing.assert_close(dm.train_x, expected)
    assert torch.equal(dm.corruption.clean_targets, torch.from_numpy(labels).long())
    assert dm.corruption.num_corrupted == 30


def test_cifar10_reads_pickles(tmp_path, monkeypatch):
    md5, x, y = write_cifar10(tmp_path, per_batch=10, n_test=10)
    # torchvision checks the official archive's md5 sums; point them at the files this test wrote.
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setitem(datasets.CIFAR10.meta, "md5", md5["batches.meta"])
    dm = NoisyCIFAR10(str(tmp_path), noise="random_inputs", noise_fraction=0.2, normalize=False)
    dm.setup()
    assert dm.num_train == 50 and dm.input_shape == (3, 32, 32) and dm.num_classes == 10
    clean = ~dm.noisy_mask
    torch.testing.assert_close(dm.train_x[clean], torch.from_numpy(x).float()[clean] / 255)
    assert torch.equal(dm.train_y, torch.from_numpy(y).long())
    assert dm.corruption.num_corrupted == 10


@pytest.mark.parametrize("cls", [NoisyMNIST, NoisyCIFAR10])
def test_missing_dataset_without_download(tmp_path, cls):
    dm = cls(str(tmp_path / "nowhere"), download=False)
    with pytest.raises(FileNotFoundError, match=r"not found in data_dir=.*nowhere.*`download=True`.*NoisyDigits"):
        dm.setup()


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x04" + bytes(12)),
         r"IDX file '.*train-images-idx3-ubyte' has magic number 0x00000804, expected 0x00000803"),
        (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_text("not an idx file"),
         r"IDX file '.*t10k-labels-idx1-ubyte' has magic number .*, expected 0x00000801"),
        (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes()[:-5]),
         r"IDX file '.*train-labels-idx1-ubyte' is 63 bytes, but its header \(shape \[60\]\) says 68"),
        (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00"),
         r"IDX file '.*train-labels-idx1-ubyte' is truncated"),
        (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(np.array([0x801, 3], dtype=">i4").tobytes() + bytes(3)),
         r"MNIST files in '.*raw' disagree: t10k-images-idx3-ubyte holds 20 images but t10k-labels-idx1-ubyte 3"),
    ],
)
def test_corrupt_mnist_file_is_named(tmp_path, corrupt, match):
    write_mnist(tmp_path, n_train=60, n_test=20)
    corrupt(tmp_path / "MNIST" / "raw")
    with pytest.raises(ValueError, match=match):
        NoisyMNIST(str(tmp_path)).setup()


def test_download_failure_offline_says_what_to_do(tmp_path, monkeypatch):
    # A loopback port where nothing listens: the download fails at once, as it does on an offline machine.
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    dm = NoisyMNIST(str(tmp_path), download=True)
    with pytest.raises(RuntimeError, match=r"(?s)Downloading MNIST to data_dir=.* failed .*NoisyImageFolder.*NoisyDigits"):
        dm.prepare_data()


def _write_folder(root, split, per_class, size=(6, 6), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for cls in ("cat", "dog", "emu"):
        d = root / split / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(a).save(d / f"{i:03d}.png")  # lossless, so pixels can be compared exactly
            arrays[(cls, i)] = a
    return arrays


def test_image_folder_decodes_and_caches(tmp_path, monkeypatch):
    arrays = _write_folder(tmp_path / "imgs", "train", 4)
    _write_folder(tmp_path / "imgs", "test", 2, seed=1)
    cache = tmp_path / "cache"
    dm = NoisyImageFolder(str(tmp_path / "imgs"), cache_dir=cache, normalize=False, noise="random_labels",
                          noise_fraction=0.25)
    dm.setup()
    assert dm.num_train == 12 and dm.num_val == 6 and dm.num_classes == 3 and dm.input_shape == (3, 6, 6)
    assert dm.corruption.num_corrupted == 3
    # ImageFolder order: classes sorted, files sorted; example 4 is dog/000.png.
    torch.testing.assert_close(dm.train_x[4], torch.from_numpy(arrays[("dog", 0)]).permute(2, 0, 1).float() / 255)
    assert dm.corruption.clean_targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(list(cache.glob("*.pt"))) == 2

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(NoisyImageFolder, "_decode", no_decode)
    again = NoisyImageFolder(str(tmp_path / "imgs"), cache_dir=cache, normalize=False)
    again.setup()
    clean = ~dm.noisy_mask
    torch.testing.assert_close(again.train_x, dm.train_x)  # label noise leaves inputs alone
    assert torch.equal(again.train_y[clean], dm.train_y[clean])


def test_image_folder_resize_and_errors(tmp_path):
    _write_folder(tmp_path / "a", "train", 2, size=(6, 6))
    (tmp_path / "a" / "train" / "cat" / "big.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "train" / "cat" / "big.png")
    dm = NoisyImageFolder(str(tmp_path / "a"), val_dir=None, val_size=2, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="different sizes.*`image_size`"):
        dm.setup()
    dm = NoisyImageFolder(str(tmp_path / "a"), val_dir=None, val_size=2, image_size=4, cache_dir=tmp_path / "c")
    dm.setup()
    assert dm.input_shape == (3, 4, 4) and dm.num_train + dm.num_val == 7
    with pytest.raises(FileNotFoundError, match=r"image folder .*test.* does not exist"):
        NoisyImageFolder(str(tmp_path / "a"), cache_dir=tmp_path / "c").setup()
    with pytest.raises(ValueError, match="`val_dir` is None: pass `val_size`"):
        NoisyImageFolder(str(tmp_path / "a"), val_dir=None)
    with pytest.raises(ValueError, match="`mode` must be 'RGB' or 'L', got 'CMYK'"):
        NoisyImageFolder(str(tmp_path / "a"), mode="CMYK")
    with pytest.raises(ValueError, match=r"`image_size` must be a positive int or \(H, W\), got True"):
        NoisyImageFolder(str(tmp_path / "a"), image_size=True)
    with pytest.raises(ValueError, match=r"`image_size` must be a positive int or \(H, W\), got \(4.5, 4\)"):
        NoisyImageFolder(str(tmp_path / "a"), image_size=(4.5, 4))
    with pytest.raises(TypeError, match=r"`train_dir` must be a non-empty string, got ''"):
        NoisyImageFolder(str(tmp_path / "a"), train_dir="")
    with pytest.raises(TypeError, match=r"`cache_dir` must be a path \(str or os.PathLike\) or None, got 5"):
        NoisyImageFolder(str(tmp_path / "a"), cache_dir=5)
    with pytest.raises(TypeError, match=r"`download` must be a bool, got 'yes'"):
        NoisyMNIST(str(tmp_path), download="yes")


def test_undecodable_image_is_named(tmp_path):
    _write_folder(tmp_path / "a", "train", 2)
    (tmp_path / "a" / "train" / "dog" / "notes.png").write_text("this is not a png")
    dm = NoisyImageFolder(str(tmp_path / "a"), val_dir=None, val_size=2, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"cannot decode the image file '.*dog/notes.png' \(corrupt or not an image\)"):
        dm.setup()


def test_image_folder_first_subset_of_one_class_warns(tmp_path):
    _write_folder(tmp_path / "imgs", "train", 4)
    _write_folder(tmp_path / "imgs", "test", 1, seed=1)
    # ImageFolder order is class by class: the first 4 training images are all cats.
    first = NoisyImageFolder(str(tmp_path / "imgs"), cache_dir=tmp_path / "c", subset=4, normalize=False)
    with pytest.warns(UserWarning, match=r"hold only 1 of its 3 classes.*subset_mode='random'"):
        first.setup()
    rand = NoisyImageFolder(str(tmp_path / "imgs"), cache_dir=tmp_path / "c", subset=4, subset_mode="random",
                            normalize=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rand.setup()
    assert rand.train_y.unique().numel() > 1
