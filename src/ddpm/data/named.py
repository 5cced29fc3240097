"""The named sets in their original file formats: MNIST / Fashion-MNIST (IDX) and CIFAR-10.

With ``data_dir`` the original files are read from there (any of ``DIR``, ``DIR/raw``,
``DIR/MNIST/raw`` ...; gzipped or not). MNIST-family folders may hold only the ``t10k`` test files,
in which case the 10,000 test images are used. Without ``data_dir`` torchvision downloads the
training split into ``$DDPM_DATA_DIR`` (default ``~/.cache/ddpm/data``); offline, a one-line error
says to pass ``--data-dir``.

Each loader returns ``(uint8 images (N, H, W[, C]), int64 labels (N,), class names, description)``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ddpm.errors import UserError

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class MissingFiles(UserError):
    """``data_dir`` does not hold the original files (it may still be a folder of images)."""


def default_data_root() -> Path:
    return Path(os.environ.get("DDPM_DATA_DIR", Path.home() / ".cache" / "ddpm" / "data"))


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally gzipped) as a uint8 array of its stated shape."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then each
    # dimension as a big-endian int32.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: header says {dims}, file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _find(data_dir: Path, stem: str, subdirs: tuple[str, ...]) -> Path | None:
    for d in (data_dir, *(data_dir / s for s in subdirs)):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def load_mnist_family(name: str, data_dir: str | None):
    """MNIST or Fashion-MNIST: the training split when its files are there, else the t10k test split."""
    folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    classes = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES
    if data_dir is None:
        return _download_mnist_family(name, folder, classes)
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root} is not a folder")
    subdirs = ("raw", f"{folder}/raw")
    for split in ("train", "t10k"):
        images = _find(root, f"{split}-images-idx3-ubyte", subdirs)
        labels = _find(root, f"{split}-labels-idx1-ubyte", subdirs)
        if images and labels:
            x, y = read_idx(images), read_idx(labels)
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise UserError(f"{images} and {labels} do not form an image set ({x.shape} vs {y.shape})")
            what = "training" if split == "train" else "test"
            return x, y.astype(np.int64), classes, f"{name} {what} split ({len(x)} images) from {images.parent}"
    raise MissingFiles(f"no {name} IDX files in {root} (expected train- or t10k-images-idx3-ubyte[.gz] "
                       "and -labels-idx1-ubyte[.gz])")


def _download_mnist_family(name, folder, classes):
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    root = default_data_root()
    try:
        ds = cls(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError/URLError/OSError offline
        raise UserError(f"cannot download {name} (offline? {type(e).__name__}); pass --data-dir FOLDER "
                        "holding the original IDX files") from None
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64), classes, f"{name} training split from {root}"


def _read_cifar_bin(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary batches: records of 1 label byte + 3072 bytes (R, G, B planes of 32x32)."""
    rows = []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size % 3073:
            raise UserError(f"{f} is not a CIFAR-10 binary batch ({raw.size} bytes)")
        rows.append(raw.reshape(-1, 3073))
    data = np.concatenate(rows)
    return data[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), data[:, 0].astype(np.int64)


def load_cifar10(name: str, data_dir: str | None):
    """CIFAR-10 training split from the binary or python batches in ``data_dir`` (or downloaded)."""
    from torchvision import datasets

    if data_dir is None:
        root = default_data_root()
        try:
            ds = datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001 - see _download_mnist_family
            raise UserError(f"cannot download cifar10 (offline? {type(e).__name__}); pass --data-dir FOLDER "
                            "holding the CIFAR-10 python or binary batches") from None
        return ds.data, np.asarray(ds.targets, np.int64), CIFAR10_CLASSES, f"cifar10 training split from {root}"
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root} is not a folder")
    # The binary version is plain bytes; prefer it (the python version is pickled).
    for d in (root, root / "cifar-10-batches-bin"):
        train = sorted(d.glob("data_batch_[1-5].bin"))
        files = train or sorted(d.glob("test_batch.bin"))
        if files:
            x, y = _read_cifar_bin(files)
            what = "training" if train else "test"
            return x, y, CIFAR10_CLASSES, f"cifar10 {what} split ({len(x)} images) from {d}"
    for d in (root, root / "cifar-10-batches-py"):
        if (d / "data_batch_1").is_file() or (d / "test_batch").is_file():
            # torchvision reads the python batches and checks every file's MD5 first.
            ds = _torchvision_cifar(d)
            return ds.data, np.asarray(ds.targets, np.int64), CIFAR10_CLASSES, f"cifar10 from {d}"
    raise MissingFiles(f"no CIFAR-10 batches in {root} (expected cifar-10-batches-bin/*.bin or "
                       "cifar-10-batches-py/data_batch_1 ...)")


def _torchvision_cifar(batches: Path):
    from torchvision import datasets

    root = batches.parent
    if batches.name != "cifar-10-batches-py":
        raise UserError(f"put the CIFAR-10 python batches in a folder named cifar-10-batches-py (found {batches})")
    try:
        return datasets.CIFAR10(str(root), train=True, download=False)
    except RuntimeError:
        raise UserError(f"the CIFAR-10 python batches in {batches} are incomplete or corrupted "
                        "(torchvision checks all six files)") from None
