"""Data sets as in-memory tensors scaled to [-1, 1], shape (N, C, H, W), with optional labels.

Small sets are decoded once and kept on the training device, so a batch is an index, not a copy
through a DataLoader.

``load_dataset(name, data_dir, image_size=None, channels=None)`` takes

- a registered name: ``digits`` (scikit-learn's 8x8 digits), ``mnist``, ``fashion-mnist``,
  ``cifar10`` (``ddpm.data.named``: original files in ``data_dir``, or a torchvision download),
  ``mnist-pairs`` (two captioned MNIST digits side by side, ``ddpm.data.pairs``);
- a folder of images, searched recursively, labels from sub-folder names (``ddpm.data.folder``), or
  with a ``metadata.jsonl`` the images it lists and their captions (``ddpm.data.captions``);
- ``hf:NAME[:SPLIT]``, a Hugging Face data set (needs the ``datasets`` package and a network), with
  captions when it has a ``caption_column`` column.

Every set is fitted to ``image_size`` (H, W) and ``channels`` when they are given (resized to cover,
centre-cropped, converted to grey or RGB: ``ddpm.data.transforms``). Decoded sets are kept in memory
for the life of the process, so a second load of the same files costs a copy, not a decode.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ddpm.data import captions as captioned
from ddpm.data import folder, named, pairs
from ddpm.data.folder import find_images
from ddpm.data.transforms import check_target, fit_tensor
from ddpm.errors import UserError


@dataclass
class ImageDataset:
    images: torch.Tensor  # float32 in [-1, 1], (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,) or None
    num_classes: int | None
    name: str
    class_names: tuple[str, ...] | None = None  # label i is class_names[i]
    skipped: tuple[str, ...] = ()  # unreadable files left out (with skip_bad_images)
    captions: tuple[str, ...] | None = None  # captions[i] describes images[i] (text-to-image sets)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def to_unit_range(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(x_uint8))
    if x.ndim == 3:
        x = x[:, None]
    else:
        x = x.permute(0, 3, 1, 2)
    return x.float().div(127.5).sub(1.0).contiguous()


def load_digits(data_dir: str | None = None) -> ImageDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, values 0..16), shipped inside scikit-learn."""
    from sklearn.datasets import load_digits as sk_load_digits  # start-up cost: scikit-learn is slow to import

    d = sk_load_digits()
    images = torch.from_numpy(d.images).float().div(16.0).mul(2.0).sub(1.0)[:, None].contiguous()
    return ImageDataset(images, torch.from_numpy(d.target).long(), 10, "digits")


def _named(name: str):
    """A registry loader for a set read by ``ddpm.data.named`` (uint8 files -> [-1, 1])."""

    def load(data_dir: str | None = None) -> ImageDataset:
        reader = named.load_cifar10 if name == "cifar10" else named.load_mnist_family
        images, labels, classes, _ = reader(name, data_dir)
        return ImageDataset(to_unit_range(images), torch.from_numpy(labels), len(classes), name, classes)

    load.__doc__ = f"{name} from its original files (see ddpm.data.named)."
    return load


def load_mnist_pairs(data_dir: str | None = None) -> ImageDataset:
    """Two MNIST digits on a 32x64 canvas with a caption and a label 10a + b (see ddpm.data.pairs)."""
    canvases, labels, classes, captions, _ = pairs.load_mnist_pairs(data_dir)
    return ImageDataset(to_unit_range(canvases), torch.from_numpy(labels), len(classes), "mnist-pairs", classes,
                        captions=captions)


# name -> loader(data_dir), giving the set at its own size. Later data sets register here.
DATASETS: dict[str, Callable[[str | None], ImageDataset]] = {
    "digits": load_digits,
    "mnist": _named("mnist"),
    "fashion-mnist": _named("fashion-mnist"),
    "cifar10": _named("cifar10"),
    "mnist-pairs": load_mnist_pairs,
}

# The named sets that --data-dir may give as a folder of images, <class>/<n>.png, at their native size.
_NATIVE = {"mnist": ((28, 28), 1), "fashion-mnist": ((28, 28), 1), "cifar10": ((32, 32), 3)}

# Decoded sets by what identifies them; bounded, since each may be hundreds of MB.
_CACHE: OrderedDict[tuple, ImageDataset] = OrderedDict()
_CACHE_ENTRIES = 3
_CACHE_MAX_BYTES = 1 << 30


def _folder_fingerprint(root: Path) -> tuple:
    """Changes when a file in the folder (or its metadata.jsonl) is added, removed or rewritten, so the
    cache never goes stale."""
    files = tuple((str(p), st.st_size, st.st_mtime_ns) for p in find_images(root) for st in [p.stat()])
    return files, captioned.metadata_fingerprint(root)


def _from_arrays(images, labels, classes, skipped, name: str, captions=None) -> ImageDataset:
    return ImageDataset(to_unit_range(images), None if labels is None else torch.from_numpy(labels),
                        None if classes is None else len(classes), name, classes, tuple(skipped), captions)


def _is_class_folder(data_dir: str | None, num_classes: int) -> bool:
    """Whether ``data_dir`` holds images in exactly ``num_classes`` first-level sub-folders."""
    if data_dir is None or not Path(data_dir).is_dir():
        return False
    classes = [d for d in Path(data_dir).iterdir() if d.is_dir() and not d.name.startswith(".")]
    return len(classes) == num_classes and all(find_images(d) for d in classes)


def _load_uncached(name, data_dir, image_size, channels, skip_bad_images, caption_column) -> ImageDataset:
    if name.startswith("hf:"):
        *arrays, captions = folder.load_hf(name[3:], image_size, channels, skip_bad_images, caption_column)
        return _from_arrays(*arrays, name, captions)
    if name in DATASETS:
        try:
            data = DATASETS[name](data_dir)
        except named.MissingFiles:
            # --data-dir may be the set as an image folder, <class>/<n>.png with one folder per class.
            if name not in _NATIVE or not _is_class_folder(data_dir, 10):  # all three have 10 classes
                raise
            native = _NATIVE[name]
            arrays = folder.load_image_folder(data_dir, image_size or native[0], channels or native[1],
                                              skip_bad_images)
            return _from_arrays(*arrays, name)
        data.images = fit_tensor(data.images, image_size, channels)
        return data
    path = Path(name)
    if path.is_dir() and captioned.has_metadata(path):
        images, captions, skipped = captioned.load_captioned_folder(path, image_size, channels, skip_bad_images,
                                                                    caption_column)
        return _from_arrays(images, None, None, skipped, name, captions)
    if path.is_dir():
        return _from_arrays(*folder.load_image_folder(path, image_size, channels, skip_bad_images), name)
    if path.exists():
        raise UserError(f"--data takes a folder of images or a data set name; {name} is a file")
    if "/" in name or name.startswith("."):
        raise UserError(f"data folder not found: {name}")
    raise UserError(f"unknown data set {name!r}: not a folder, nor one of {', '.join(sorted(DATASETS))} "
                    "(or hf:NAME[:SPLIT] for a Hugging Face data set)")


def load_dataset(name: str, data_dir: str | None = None, image_size: tuple[int, int] | None = None,
                 channels: int | None = None, skip_bad_images: bool = False,
                 min_images: int = 1, caption_column: str = "text") -> ImageDataset:
    """A data set by name, folder or ``hf:NAME[:SPLIT]``, fitted to (channels, *image_size) when given.

    ``caption_column`` names the caption key of a folder's ``metadata.jsonl`` and the caption column of
    an ``hf:`` set; sets without captions have ``captions`` None.

    Unreadable images raise a ``UserError`` naming the file, or with ``skip_bad_images`` are left out
    with one warning that counts them (``ImageDataset.skipped`` lists them). Fewer than
    ``min_images`` readable images is an error.
    """
    image_size = None if image_size is None else tuple(int(v) for v in image_size)
    check_target(image_size, channels)
    path = Path(name)
    is_folder = name not in DATASETS and not name.startswith("hf:") and path.is_dir()
    key = (str(path.resolve()) if is_folder else name, data_dir, image_size, channels, skip_bad_images,
           caption_column, _folder_fingerprint(path) if is_folder else None)
    data = _CACHE.get(key)
    if data is None:
        data = _load_uncached(name, data_dir, image_size, channels, skip_bad_images, caption_column)
        if data.images.numel() * data.images.element_size() <= _CACHE_MAX_BYTES:
            _CACHE[key] = data
            while len(_CACHE) > _CACHE_ENTRIES:
                _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    if len(data) < min_images:
        raise UserError(f"data set {name} has {len(data)} image(s); at least {min_images} are needed")
    # A copy, so a caller that edits its images in place cannot change what the next caller gets.
    return dataclasses.replace(data, images=data.images.clone())
