"""Data loaders: the real MNIST / CIFAR-10 files in ../shared/data, and synthetic folders for the edge cases."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data.datasets import load_dataset
from ddpm.data.named import read_idx
from ddpm.data.transforms import fit_tensor
from ddpm.errors import UserError
from ddpm.training.loop import train
from tests.conftest import SHARED_DATA, tiny_config

MNIST = SHARED_DATA / "mnist"
CIFAR = SHARED_DATA / "cifar10-test"
needs_mnist = pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="no shared MNIST")
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason="no shared CIFAR-10 folder")


@needs_mnist
def test_mnist_from_test_idx_files():
    data = load_dataset("mnist", str(MNIST))
    assert data.images.shape == (10_000, 1, 28, 28) and data.images.dtype == torch.float32
    assert data.images.min() == -1 and data.images.max() == 1
    assert data.labels.dtype == torch.int64 and data.num_classes == 10
    # Independent decoding of the IDX layout: 16-byte header for images, 8 for labels.
    raw = np.frombuffer(gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8).copy()
    labels = np.frombuffer(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8)
    for i in (0, 1234, 9999):
        img = raw[16 + 784 * i: 16 + 784 * (i + 1)].reshape(28, 28)
        assert torch.equal(data.images[i, 0], torch.from_numpy(img).float() / 127.5 - 1)
        assert data.labels[i] == labels[8 + i]
    assert torch.equal(data.labels.bincount(), torch.from_numpy(np.bincount(labels[8:])).long())


def test_idx_reader_rejects_truncated_files(tmp_path):
    header = bytes([0, 0, 8, 3]) + np.array([2, 28, 28], ">i4").tobytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(header + bytes(100))
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "x-idx3-ubyte")


def test_named_set_without_files_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="no mnist IDX files") as e:
        load_dataset("mnist", str(tmp_path))
    assert "\n" not in str(e.value)


def test_cifar10_binary_batches(tmp_path):
    """Records of 1 label byte + R, G, B planes; the loader must put plane 0 in channel 0."""
    rng = np.random.default_rng(0)
    records = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
    records[:, 0] = [3, 0, 9]
    (tmp_path / "test_batch.bin").write_bytes(records.tobytes())
    data = load_dataset("cifar10", str(tmp_path))
    assert data.images.shape == (3, 3, 32, 32) and data.labels.tolist() == [3, 0, 9]
    planes = torch.from_numpy(records[:, 1:].reshape(3, 3, 32, 32).astype(np.float32)) / 127.5 - 1
    assert torch.equal(data.images, planes)
    assert data.class_names[3] == "cat"


@needs_cifar
def test_cifar_folder_labels_from_folder_names():
    data = load_dataset(str(CIFAR), image_size=(32, 32), channels=3)
    classes = sorted(d.name for d in CIFAR.iterdir() if d.is_dir())
    assert data.images.shape == (10_000, 3, 32, 32) and data.class_names == tuple(classes)
    assert data.labels.bincount().tolist() == [1000] * 10
    # Files are sorted, so image 1000 * k + j is the j-th file of class k.
    k = classes.index("cat")
    first_cat = sorted((CIFAR / "cat").iterdir())[0]
    expected = torch.from_numpy(np.array(Image.open(first_cat).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
    assert data.labels[1000 * k] == k and torch.equal(data.images[1000 * k], expected)
    # The named set pointed at the same folder gives the same labels (CIFAR-10's order is alphabetical).
    named = load_dataset("cifar10", str(CIFAR))
    assert torch.equal(named.labels, data.labels)


def _write(path, size=(12, 10), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_corrupt_image_error_names_file_or_is_skipped(tmp_path):
    for i in range(3):
        _write(tmp_path / f"ok{i}.png")
    (tmp_path / "sub").mkdir()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="broken.jpg") as e:
        load_dataset(str(tmp_path), image_size=(8, 8), channels=3)
    assert "--skip-bad-images" in str(e.value)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        data = load_dataset(str(tmp_path), image_size=(8, 8), channels=3, skip_bad_images=True)
    assert len(data) == 3 and data.skipped == (str(bad),)


def test_empty_and_too_small_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images in"):
        load_dataset(str(tmp_path))
    _write(tmp_path / "a.png")
    with pytest.raises(UserError, match="at least 2"):
        load_dataset(str(tmp_path), min_images=2)
    with pytest.raises(UserError, match="data folder not found"):
        load_dataset(str(tmp_path / "missing"))


def test_resize_covers_then_centre_crops(tmp_path):
    """A 40x20 image, left half red, right half blue, fitted to 10x10: scaled to 20x10, centre 10 columns."""
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    img[:, 20:] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = load_dataset(str(tmp_path), image_size=(10, 10), channels=3).images[0]
    assert x.shape == (3, 10, 10)
    # Away from the seam (cols 4 and 5 blend), the left half is red and the right half blue.
    assert torch.allclose(x[:, :, :4], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1), atol=0.02)
    assert torch.allclose(x[:, :, 6:], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1), atol=0.02)
    grey = load_dataset(str(tmp_path), image_size=(10, 10), channels=1).images[0]
    assert grey.shape == (1, 10, 10)
    # ITU-R 601 luma of pure red: 0.299 * 255.
    assert abs(float(grey[0, 5, 0]) - (round(0.299 * 255) / 127.5 - 1)) < 0.01


def test_transparency_becomes_white_and_labels_follow_subfolders(tmp_path):
    _write(tmp_path / "b" / "x.png", color=(0, 0, 0, 0), mode="RGBA")
    _write(tmp_path / "a" / "deep" / "y.png", color=(0, 0, 0))
    data = load_dataset(str(tmp_path), image_size=(4, 4), channels=3)
    assert data.class_names == ("a", "b") and data.labels.tolist() == [0, 1]
    assert torch.all(data.images[1] == 1.0) and torch.all(data.images[0] == -1.0)
    _write(tmp_path / "loose.png")  # an image outside any class folder: the set is unlabelled
    assert load_dataset(str(tmp_path), image_size=(4, 4), channels=3).labels is None


def test_fit_tensor_channels_and_size():
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    rgb = fit_tensor(x, None, 3)
    assert rgb.shape == (2, 3, 28, 28) and all(torch.equal(rgb[:, c], x[:, 0]) for c in range(3))
    grey = fit_tensor(rgb, None, 1)
    assert torch.allclose(grey, x, atol=1e-6)  # luma weights sum to 1
    big = fit_tensor(x, (32, 32))
    assert big.shape == (2, 1, 32, 32) and big.min() >= -1 and big.max() <= 1
    assert torch.equal(fit_tensor(x, (28, 28), 1), x)


def test_training_fits_folder_to_the_model(tmp_path):
    """The loop passes the model's size and channels: RGB 12x10 files train an 8x8 grey model."""
    for i in range(4):
        _write(tmp_path / "imgs" / f"{i}.png", color=(40 * i, 100, 200))
    cfg = tiny_config(steps=1, checkpoint_every=1, data=str(tmp_path / "imgs"))
    run = train(cfg, tmp_path / "run", progress=False)
    assert (run / "ema.safetensors").is_file() and (run / "loss.png").is_file()


def test_hf_without_the_datasets_package_is_a_clear_error():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install datasets"):
            load_dataset("hf:mnist")
    else:
        pytest.skip("`datasets` is installed; loading would need the network")


def test_compact_storage_is_lossless_and_only_when_it_can_be():
    from ddpm.data.datasets import to_unit_range
    from ddpm.data.transforms import compact, expand

    pixels = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    x = to_unit_range(pixels)
    c = compact(x)
    assert c.dtype == torch.uint8 and torch.equal(expand(c), x)
    y = x * 0.999  # not 8-bit levels any more (a resized image): kept as it is
    assert compact(y) is y
    z = x.clone()
    z[0, 0, 0, 0] = float("nan")
    assert compact(z) is z


def test_random_flip_mirrors_about_half_the_images_from_the_generator():
    from ddpm.data.transforms import random_hflip

    x = torch.arange(2 * 1 * 1 * 3, dtype=torch.float32).reshape(2, 1, 1, 3).repeat(500, 1, 1, 1)
    a = random_hflip(x, torch.Generator().manual_seed(0))
    b = random_hflip(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    mirrored = (a != x).any(dim=(1, 2, 3))
    assert torch.equal(a[mirrored], x[mirrored].flip(-1)) and torch.equal(a[~mirrored], x[~mirrored])
    assert 400 < int(mirrored.sum()) < 600


def test_flips_default_follows_ho_et_al():
    from ddpm.config import TrainConfig, flips

    assert not flips(TrainConfig(data="digits")) and not flips(TrainConfig(data="mnist"))
    assert flips(TrainConfig(data="cifar10")) and flips(TrainConfig(data="/some/folder"))
    assert not flips(TrainConfig(data="cifar10", flip=False)) and flips(TrainConfig(data="digits", flip=True))
