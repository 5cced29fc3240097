"""A folder of images (searched recursively) or a Hugging Face data set, decoded once into memory.

Class labels come from the first level of sub-folders (``root/cat/001.jpg`` is class ``cat``), as
torchvision's ``ImageFolder`` does, when every image sits in one; otherwise the set is unlabelled.
Each image is fitted to the model by ``ddpm.data.transforms.fit_image``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddpm.data.transforms import IMAGE_EXTENSIONS, fit_image
from ddpm.errors import UserError
from ddpm.io import progress_bar

# Decoding errors PIL raises for truncated, corrupt or foreign files.
_BAD_IMAGE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (any depth, sorted, hidden files and folders left out)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def first_image_shape(path: Path) -> tuple[tuple[int, int], int]:
    """(size, channels) of one image, the default target for a folder when none is given."""
    try:
        with Image.open(path) as img:
            channels = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
            return (img.height, img.width), channels
    except _BAD_IMAGE as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def decode_images(paths, image_size, channels, skip_bad_images, where):
    """(uint8 (N, H, W, C) of the readable images, their indices in ``paths``, the skipped files)."""
    out = np.empty((len(paths), *image_size, channels), dtype=np.uint8)
    keep, skipped = [], []
    for i, p in enumerate(progress_bar(paths, desc="decoding", unit="img", leave=False, disable=len(paths) < 2000)):
        try:
            with Image.open(p) as img:
                if img.format == "JPEG":
                    # Decode big JPEGs at a reduced scale that still covers the target (much faster).
                    img.draft("L" if channels == 1 else "RGB", (image_size[1], image_size[0]))
                out[i] = fit_image(img, image_size, channels)
            keep.append(i)
        except _BAD_IMAGE as e:
            if not skip_bad_images:
                raise UserError(f"cannot read image {p}: {e} "
                                "(pass --skip-bad-images to skip unreadable files)") from None
            skipped.append(str(p))
    if skipped:
        shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {len(paths)} in {where}: {shown}",
                      stacklevel=3)
    return out[keep], keep, skipped


def load_image_folder(root: str | Path, image_size: tuple[int, int] | None, channels: int | None,
                      skip_bad_images: bool = False):
    """(uint8 (N, H, W, C), labels or None, class names or None, skipped files) for a folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder of images")
    paths = find_images(root)
    if not paths:
        raise UserError(f"no images in {root} (searched all sub-folders for {', '.join(IMAGE_EXTENSIONS)})")
    if image_size is None or channels is None:
        size0, ch0 = first_image_shape(paths[0])
        image_size, channels = image_size or size0, channels or ch0
    # Labels only when every image sits in a first-level sub-folder (the ImageFolder layout).
    tops = [p.relative_to(root).parts for p in paths]
    labelled = all(len(parts) >= 2 for parts in tops)
    images, keep, skipped = decode_images(paths, tuple(image_size), channels, skip_bad_images, root)
    if not keep:
        raise UserError(f"none of the {len(paths)} images in {root} could be read")
    if not labelled:
        return images, None, None, skipped
    classes = sorted({parts[0] for parts in tops})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[tops[i][0]] for i in keep], dtype=np.int64)
    return images, labels, tuple(classes), skipped


def load_hf(spec: str, image_size, channels, skip_bad_images: bool = False, caption_column: str = "text"):
    """``NAME[:SPLIT]`` from the Hugging Face hub through the ``datasets`` library (default split: train).

    (uint8 (N, H, W, C), labels or None, class names or None, skipped rows, captions or None): labels
    from the first ``ClassLabel`` column, captions from ``caption_column`` when the set has it.
    """
    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        import datasets
    except ImportError:
        raise UserError("hf: data sets need the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name and bad split all end here
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load Hugging Face data set {name!r} split {split!r}: {first}") from None
    features = ds.features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None:
        raise UserError(f"Hugging Face data set {name!r} has no image column (columns: {', '.join(features)})")
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if len(ds) == 0:
        raise UserError(f"Hugging Face data set {name!r} split {split!r} is empty")
    if image_size is None or channels is None:
        img0 = ds[0][image_col]
        image_size = image_size or (img0.height, img0.width)
        channels = channels or (1 if img0.mode in ("1", "L", "LA") else 3)
    out = np.empty((len(ds), *image_size, channels), dtype=np.uint8)
    keep, skipped = [], []
    for i in progress_bar(range(len(ds)), desc="decoding", unit="img", leave=False, disable=len(ds) < 2000):
        try:
            out[i] = fit_image(ds[i][image_col], tuple(image_size), channels)
            keep.append(i)
        except _BAD_IMAGE as e:
            if not skip_bad_images:
                raise UserError(f"cannot read image {i} of {name}: {e} (pass --skip-bad-images to skip it)") from None
            skipped.append(f"{name}[{i}]")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {len(ds)} in {name}", stacklevel=2)
    labels = classes = None
    if label_col is not None:
        labels = np.asarray(ds[label_col], dtype=np.int64)[keep]
        classes = tuple(features[label_col].names)
    captions = None
    if caption_column in features:
        column = ds[caption_column]  # the whole column at once: row access would decode every image again
        captions = tuple(_hf_caption(column[i], i, name, caption_column) for i in keep)
    return out[keep], labels, classes, skipped, captions


def _hf_caption(value, i: int, name: str, column: str) -> str:
    """One caption of an hf: set; sets with several captions an image (COCO's style) give their first."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if not isinstance(value, str):
        raise UserError(f"row {i} of Hugging Face data set {name!r}: caption column {column!r} holds "
                        f"{type(value).__name__}, not a string")
    return value


def load_image(path: str | Path, image_size: tuple[int, int] | None = None, channels: int | None = None,
               max_side: int | None = None) -> np.ndarray:
    """One image file fitted to (image_size, channels) as uint8 (H, W, C).

    Unset targets come from the file; ``max_side`` caps an unset size (a square of the shorter side).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    size0, ch0 = first_image_shape(path)
    if image_size is None:
        side = min(size0) if max_side is None else min(*size0, max_side)
        image_size = size0 if max_side is None else (side, side)
    try:
        with Image.open(path) as img:
            return fit_image(img, tuple(image_size), channels or ch0)
    except _BAD_IMAGE as e:
        raise UserError(f"cannot read image {path}: {e}") from None
