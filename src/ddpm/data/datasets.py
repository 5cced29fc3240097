"""Data sets as in-memory tensors scaled to [-1, 1], shape (N, C, H, W), with optional labels.

Small sets are decoded once and kept on the training device, so a batch is an index, not a copy
through a DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ddpm.errors import UserError


@dataclass
class ImageDataset:
    images: torch.Tensor  # float32 in [-1, 1], (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,) or None
    num_classes: int | None
    name: str

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
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = torch.from_numpy(d.images).float().div(16.0).mul(2.0).sub(1.0)[:, None].contiguous()
    return ImageDataset(images, torch.from_numpy(d.target).long(), 10, "digits")


# name -> loader(data_dir). Later data sets register here.
DATASETS: dict[str, Callable[[str | None], ImageDataset]] = {"digits": load_digits}


def load_dataset(name: str, data_dir: str | None = None) -> ImageDataset:
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir)
