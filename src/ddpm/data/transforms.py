"""Fitting images to a model: channel conversion, resizing and centre-cropping.

Two entry points with the same geometry: ``fit_image`` for one decoded file (PIL), ``fit_tensor`` for
a set already in memory (MNIST at 28x28 asked for at 32x32, say). Both resize so the image *covers*
the target size (shorter side first, aspect ratio kept) and then cut the centre, as torchvision's
``Resize(size)`` + ``CenterCrop(size)`` do; nothing is ever stretched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ddpm.errors import UserError

# Lower-case suffixes that PIL decodes and an image folder is searched for.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")

# ITU-R 601-2 luma, the weights PIL's convert("L") uses, so both paths agree on grey.
_LUMA = (0.299, 0.587, 0.114)


def check_target(image_size: tuple[int, int] | None, channels: int | None) -> None:
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise UserError(f"image size must be two positive numbers, got {tuple(image_size)}")
    if channels is not None and channels not in (1, 3):
        raise UserError(f"images can be loaded with 1 (grey) or 3 (RGB) channels, not {channels}")


def cover_size(h: int, w: int, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest (h', w') with the aspect ratio of (h, w) that covers ``target`` (th, tw)."""
    th, tw = target
    scale = max(th / h, tw / w)
    return max(th, round(h * scale)), max(tw, round(w * scale))


def fit_image(img: Image.Image, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """One PIL image -> uint8 (H, W, C): upright (EXIF), flattened on white, converted, resized, cropped."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):
        # 16-bit grey (PIL's modes I;16 and, for older Pillows, I): convert("L") clips at 255 instead of
        # scaling, which would turn a 16-bit PNG white. Scale the 16-bit range down to 8 bits.
        img = Image.fromarray((np.asarray(img, dtype=np.float64) * (255 / 65535)).round().clip(0, 255)
                              .astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels would otherwise become whatever colour they hide (often black).
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    th, tw = image_size
    nh, nw = cover_size(img.height, img.width, (th, tw))
    if (nh, nw) != (img.height, img.width):
        # PIL's bicubic filter widens with the scale factor, so downscaling is antialiased.
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - th) // 2, (nw - tw) // 2
    img = img.crop((left, top, left + tw, top + th))
    a = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)
    return a[..., None] if a.ndim == 2 else a


def fit_tensor(images: torch.Tensor, image_size: tuple[int, int] | None = None,
               channels: int | None = None) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> the same set with ``channels`` and ``image_size`` (None: unchanged)."""
    check_target(image_size, channels)
    x = images
    if channels is not None and channels != x.shape[1]:
        if x.shape[1] == 1 and channels == 3:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] == 3 and channels == 1:
            x = sum(w * x[:, i:i + 1] for i, w in enumerate(_LUMA))
        else:
            raise UserError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if image_size is not None and tuple(image_size) != tuple(x.shape[-2:]):
        th, tw = image_size
        nh, nw = cover_size(x.shape[-2], x.shape[-1], (th, tw))
        antialias = nh < x.shape[-2]
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=antialias)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw].clamp(-1, 1)
    return x.contiguous()


def compact(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as uint8 when that loses nothing (they were decoded from 8-bit files: a quarter of
    the memory), else unchanged; ``expand`` undoes it per batch, bit for bit."""
    if images.dtype != torch.float32 or not bool(torch.isfinite(images).all()):
        return images
    levels = images.add(1.0).mul(127.5).round()
    if not torch.equal(levels.div(127.5).sub(1.0), images):
        return images
    return levels.to(torch.uint8)


def expand(batch: torch.Tensor) -> torch.Tensor:
    """A batch of ``compact`` images as float32 in [-1, 1] (the arithmetic of ``to_unit_range``)."""
    return batch.float().div(127.5).sub(1.0) if batch.dtype == torch.uint8 else batch


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2, drawn from ``generator`` (one draw per image)."""
    flip = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
