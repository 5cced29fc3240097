"""Labelled image grids and animated GIFs: the pictures of the forward and reverse processes.

``save_labeled_grid`` draws a (rows x columns) table of images with a label over each column and
beside each row, pixel-exact (small images are upscaled by whole factors with ``auto_scale``, never
blurred). ``save_gif`` writes frames as an animated GIF, each with its caption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ddpm.errors import UserError
from ddpm.io import save_figure_atomic, save_image_atomic
from ddpm.viz.grid import auto_scale, make_grid, to_uint8

_DPI = 100


def resolve_steps(steps: Sequence[int], num_timesteps: int) -> list[int]:
    """Check 0-based steps against T, taking ``T`` itself as the last step ``T-1``.

    The papers count t = 1..T, so a figure "at t = 1000" is step 999 here (``ddpm.diffusion.schedule``);
    ``T`` is accepted as that alias so the papers' lists (0, 5, 10, 50, 100, 1000) work as written.
    Repeats are dropped, order kept.
    """
    out: list[int] = []
    for t in steps:
        t = int(t)
        if t == num_timesteps:
            t = num_timesteps - 1
        if not 0 <= t < num_timesteps:
            raise UserError(f"step {t} is outside 0..{num_timesteps - 1} (T = {num_timesteps}, steps are 0-based)")
        if t not in out:
            out.append(t)
    return out


def as_uint8_cells(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(R, K, C, H, W) in [-1, 1] -> uint8 (R, K, H, W, C); uint8 arrays pass through."""
    if isinstance(x, np.ndarray):
        return x
    r, k = x.shape[:2]
    return to_uint8(x.reshape(r * k, *x.shape[2:])).reshape(r, k, x.shape[3], x.shape[4], x.shape[2])


def save_labeled_grid(cells: torch.Tensor | np.ndarray, path: str | Path, *, col_labels: Sequence[str] = (),
                      row_labels: Sequence[str] = (), title: str | None = None, scale: int | None = None,
                      pad: int = 1) -> Path:
    """Images ``cells`` (R, K, ...) as a table: column labels on top, row labels on the left, a title.

    ``cells`` is a tensor (R, K, C, H, W) in [-1, 1] or uint8 (R, K, H, W, C); blank cells are 255.
    """
    from matplotlib.figure import Figure

    cells = as_uint8_cells(cells)
    r, k, h, w, c = cells.shape
    scale = scale or auto_scale(min(h, w))
    grid = make_grid(cells.reshape(r * k, h, w, c), nrow=k, pad=pad, scale=scale)
    gh, gw = grid.shape[:2]
    longest_row = max((len(s) for s in row_labels), default=0)
    left = 8 + 7 * longest_row if row_labels else 4
    top = (22 if col_labels else 4) + (24 if title else 0)
    bottom, right = 4, 4
    if title:  # widen to the title (about 6.5 px a character at 10 pt), keeping the table centred
        extra = max(0, int(6.5 * len(title)) + 8 - (gw + left + right))
        left, right = left + extra // 2, right + extra - extra // 2
    width, height = gw + left + right, gh + top + bottom
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    ax = fig.add_axes((left / width, bottom / height, gw / width, gh / height))
    if c == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    # Cell centres in pixel coordinates (pixel i spans i - 0.5 .. i + 0.5).
    ax.set_xticks([(pad + j * (w + pad) + w / 2) * scale - 0.5 for j in range(len(col_labels))])
    ax.set_xticklabels(list(col_labels), fontsize=9)
    ax.set_yticks([(pad + i * (h + pad) + h / 2) * scale - 0.5 for i in range(len(row_labels))])
    ax.set_yticklabels(list(row_labels), fontsize=9)
    ax.xaxis.tick_top()
    ax.tick_params(length=0, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.text(0.5, 1 - 4 / height, title, ha="center", va="top", fontsize=10)
    return save_figure_atomic(fig, path, dpi=_DPI)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def captioned(frame: np.ndarray, caption: str) -> Image.Image:
    """uint8 (H, W, C) -> a PIL image with a white caption bar on top."""
    img = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
    bar = 18
    out = Image.new(img.mode, (img.width, img.height + bar), 255 if img.mode == "L" else (255, 255, 255))
    out.paste(img, (0, bar))
    ImageDraw.Draw(out).text((4, 2), caption, fill=0 if img.mode == "L" else (0, 0, 0), font=_font(12))
    return out


def save_gif(frames: Sequence[np.ndarray], path: str | Path, captions: Sequence[str] | None = None,
             duration_ms: int = 60, hold_last_ms: int = 2000) -> Path:
    """uint8 (H, W, C) frames -> an animated GIF that loops, holding the last frame ``hold_last_ms``."""
    if not frames:
        raise ValueError("no frames")
    images = [captioned(f, c) for f, c in zip(frames, captions)] if captions else [
        Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [hold_last_ms]
    return save_image_atomic(images[0], path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                             optimize=False)


def stack_rows(rows: Sequence[torch.Tensor]) -> np.ndarray:
    """Equal-length batches (K, C, H, W) -> uint8 cells (len(rows), K, H, W, C)."""
    return np.stack([to_uint8(r) for r in rows])


def frame_grid(rows: Sequence[torch.Tensor]) -> np.ndarray:
    """Batches (K, C, H, W) stacked as rows of one upscaled uint8 picture (for GIF frames)."""
    cells = stack_rows(rows)
    r, k, h, w, c = cells.shape
    return make_grid(cells.reshape(r * k, h, w, c), nrow=k, scale=auto_scale(min(h, w)))
