"""Images to evaluate: drawn from a run in seeded batches, or read from samples.npz / an image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm.data.datasets import to_unit_range
from ddpm.errors import UserError
from ddpm.io import progress_bar
from ddpm.pipeline import Run
from ddpm.sampling.noise import seed_generators
from ddpm.training import distributed as dist

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def generate_samples(run: Run, n: int, *, seed: int = 0, batch_size: int = 256, progress: bool = True, y=None,
                     **options) -> torch.Tensor:
    """n samples (n, C, H, W) in [-1, 1] on the CPU; sample i is drawn from seed ``seed + i`` alone, as in
    ``ddpm sample``, so the set does not depend on the batch size. ``y``: one class (an int) or (n,) labels;
    ``options`` are ``Run.sample``'s (``sampling``, ``guidance``, ``runtime``). Under torchrun each rank
    draws its block of the seeds and every rank gets the whole set."""
    env = dist.DistEnv.from_environ()
    mine = dist.shard(n, env)
    out = [torch.zeros((0, *run.image_shape))]
    for start in progress_bar(range(mine.start, mine.stop, batch_size), desc="generating", unit="batch",
                      disable=not progress or not env.is_main):
        count = min(batch_size, mine.stop - start)
        gens = seed_generators(range(seed + start, seed + start + count))
        labels = y if y is None or isinstance(y, int) else y[start:start + count]
        out.append(run.sample(count, generator=gens, progress=False, y=labels, **options).float().cpu())
    return dist.gather_shards(torch.cat(out), n, env)


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def load_samples(path: str | Path, n: int | None = None) -> torch.Tensor:
    """Images from a ``samples.npz`` (one uint8 array (N, H, W[, C])) or a folder of image files, as
    (N, C, H, W) in [-1, 1]; the first ``n`` of them when given (sorted by file name for a folder)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"samples not found: {p}")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {p}")
        files = files[:n] if n else files
        arrays = [_read_image(f) for f in files]
        if len({a.shape for a in arrays}) > 1:
            raise UserError(f"the images in {p} do not all have the same size and channels")
        array = np.stack(arrays)
    else:
        if p.read_bytes()[:4] != b"PK\x03\x04":  # an .npz is a zip file; np.load would try to unpickle others
            raise UserError(f"{p} is not an .npz file (ddpm sample writes samples.npz)")
        try:
            with np.load(p) as z:
                if len(z.files) != 1:
                    raise UserError(f"{p} must hold one array of images, holds {', '.join(z.files)}")
                array = z[z.files[0]]
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read samples {p}: {e}") from None
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
        raise UserError(f"samples must be uint8 (N, H, W) or (N, H, W, C) with C = 1 or 3; "
                        f"got {array.dtype} {array.shape} in {p}")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if n is not None and len(array) < n:
        raise UserError(f"--n {n} asked for, but {p} holds only {len(array)} images")
    return to_unit_range(array[:n] if n else array)
