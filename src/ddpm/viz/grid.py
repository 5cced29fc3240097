"""Turning [-1, 1] image batches into uint8 arrays, grids and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm.io import save_image_atomic


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (H', W', C) grid with ``nrow`` images per row, upscaled ``scale``x."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def auto_scale(h: int) -> int:
    """Upscale small images (8x8 digits) so a grid is readable; 64 px and up stay as they are."""
    return max(1, 64 // h) if h < 64 else 1


def save_image(array: np.ndarray, path: str | Path) -> None:
    a = array[..., 0] if array.shape[-1] == 1 else array
    save_image_atomic(Image.fromarray(a), path)


def save_grid(x: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None) -> None:
    images = to_uint8(x) if isinstance(x, torch.Tensor) else x
    save_image(make_grid(images, nrow, scale=auto_scale(images.shape[1])), path)
