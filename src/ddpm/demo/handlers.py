"""What the demo page does, as plain functions of a ``Run`` (no Gradio here, so pytest calls them directly).

``sample`` is a generator over the pipeline's steps (``Run.steps``): every few network calls it yields the
current x_t and predicted x0 as image grids with a progress line, and at the end the final grid and the
trajectory GIF. Sample i comes from seed SEED + i alone, as in ``ddpm sample``, so a picture made here
can be drawn again from the command line. Requests over the ``Limits`` are refused with a message
(``DemoError``), never run.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ddpm.config import RuntimeConfig
from ddpm.data.datasets import load_dataset, to_unit_range
from ddpm.data.folder import load_image
from ddpm.diffusion.process import q_sample
from ddpm.errors import UserError
from ddpm.pipeline import GuidanceOptions, Run, SamplingOptions, interpolate_images, interpolate_seeds
from ddpm.sampling.noise import seed_generators
from ddpm.viz.figures import save_gif
from ddpm.viz.grid import auto_scale, make_grid, to_uint8


class DemoError(UserError):
    """A request the demo refuses (over a limit, a bad upload): shown on the page as a message."""


@dataclass(frozen=True)
class Limits:
    """Caps that keep a shared machine alive (``ddpm demo --max-images ...``)."""

    max_images: int = 16
    max_steps: int = 1000
    max_upload_mb: float = 10.0
    frames: int = 40  # live updates (and GIF frames) per sampling run, at most


def picture(x: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """A batch (N, C, H, W) in [-1, 1] as one uint8 grid, small images enlarged to be seen."""
    grid = make_grid(to_uint8(x), nrow=nrow, scale=auto_scale(x.shape[-2]))
    return grid[..., 0] if grid.shape[-1] == 1 else grid


def check_sample_request(run: Run, limits: Limits, *, n: int, steps: int | None, guidance: float | None,
                         class_label: int | None) -> None:
    if not 1 <= n <= limits.max_images:
        raise DemoError(f"number of images must be between 1 and {limits.max_images}, got {n}")
    T = run.schedule.num_timesteps
    if steps is not None and not 1 <= steps <= min(T, limits.max_steps):
        raise DemoError(f"steps must be between 1 and {min(T, limits.max_steps)}, got {steps}")
    if steps is None and T > limits.max_steps:
        raise DemoError(f"all {T} steps are over this demo's limit of {limits.max_steps}; choose fewer steps")
    if class_label is None and guidance:
        raise DemoError("guidance needs a class")


def sample(run: Run, limits: Limits, *, sampler: str = "ancestral", steps: int | None = None, seed: int = 0,
           n: int = 4, guidance: float | None = None, class_label: int | None = None,
           runtime: RuntimeConfig | dict | None = None) -> Iterator[dict]:
    """Yield {"x_t", "x0", "progress"} (grids, a line) every few calls, then once more with "images" (the
    final grid), "samples" ((n, C, H, W) in [-1, 1]) and "gif" (a path to the trajectory)."""
    check_sample_request(run, limits, n=n, steps=steps, guidance=guidance, class_label=class_label)
    options = SamplingOptions(sampler, steps=steps)
    steps_ = run.steps(n, generator=seed_generators(range(seed, seed + n)), sampling=options,
                       guidance=GuidanceOptions(guidance if class_label is not None else None),
                       y=class_label, runtime=runtime)
    every = max(1, len(steps_) // limits.frames)
    frames, captions, x = [], [], None
    for step in steps_:
        x = step.x_next
        if step.i % every == 0 or step.i + 1 == len(steps_):
            pair = np.concatenate([picture(step.x_t), picture(step.x0)], axis=1)
            frames.append(pair if pair.ndim == 3 else pair[..., None])
            captions.append(f"t = {step.t}: x_t | predicted x0")
            yield {"x_t": picture(step.x_t), "x0": picture(step.x0),
                   "progress": f"step {step.i + 1} of {len(steps_)} (t = {step.t})"}
    fd, gif = tempfile.mkstemp(prefix="ddpm-trajectory-", suffix=".gif")
    os.close(fd)
    save_gif(frames, gif, captions)
    yield {"x_t": picture(x), "x0": picture(x), "progress": f"done: {len(steps_)} network calls",
           "images": picture(x), "samples": x, "gif": gif}


def read_upload(run: Run, limits: Limits, path: str | Path | None) -> torch.Tensor:
    """An uploaded image file as (1, C, H, W) in [-1, 1] fitted to the model; a bad one is a DemoError."""
    if path is None:
        raise DemoError("upload an image first")
    size = Path(path).stat().st_size
    if size > limits.max_upload_mb * 2**20:
        raise DemoError(f"the image is {size / 2**20:.1f} MB, over this demo's limit of {limits.max_upload_mb:g} MB")
    try:
        array = load_image(path, tuple(run.config.model.image_size), run.config.model.in_channels)
    except UserError as e:
        raise DemoError(f"not an image this demo can read: {e}") from None
    return to_unit_range(array[None]).to(run.device)


def data_image(run: Run, index: int) -> torch.Tensor:
    """Image ``index`` of the run's own data set as (1, C, H, W) in [-1, 1], fitted to the model."""
    data = run.config.train
    if not data.data:
        raise DemoError("this run names no data set (a converted checkpoint?); upload an image instead")
    images = load_dataset(data.data, data.data_dir, image_size=run.config.model.image_size,
                          channels=run.config.model.in_channels).images
    if not 0 <= index < len(images):
        raise DemoError(f"the data set has images 0 to {len(images) - 1}, not {index}")
    return images[index:index + 1].to(run.device)


def forward(run: Run, x0: torch.Tensor, t: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """q(x_t | x0) at 0-based step t for one image: (x0 | x_t picture, a line with alpha-bar_t)."""
    T = run.schedule.num_timesteps
    if not 0 <= t < T:
        raise DemoError(f"t must be between 0 and {T - 1}, got {t}")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    x_t = q_sample(run.schedule, x0, torch.tensor([t], device=x0.device), noise)
    abar = run.schedule.host.alphas_cumprod[t]
    return picture(torch.cat([x0, x_t])), (f"t = {t}: alpha-bar = {abar:.4f}, signal sqrt(alpha-bar) = "
                                           f"{abar ** 0.5:.3f}, noise sqrt(1 - alpha-bar) = {(1 - abar) ** 0.5:.3f}")


def seeds_row(run: Run, limits: Limits, seed_a: int, seed_b: int, count: int, sampler: str = "ddim",
              steps: int | None = 50) -> np.ndarray:
    """slerp between two seeds' noises, sampled (DDIM by default, so the ends are the seeds' samples)."""
    check_sample_request(run, limits, n=count, steps=steps, guidance=None, class_label=None)
    lambdas = np.linspace(0, 1, count).tolist()
    return picture(interpolate_seeds(run, seed_a, seed_b, lambdas, sampling=SamplingOptions(sampler, steps=steps),
                                     progress=False), nrow=count)


def images_row(run: Run, limits: Limits, x_a: torch.Tensor, x_b: torch.Tensor, t: int, count: int,
               seed: int = 0) -> np.ndarray:
    """Ho et al.'s interpolation: both images diffused to t with one noise, mixed, denoised from t."""
    if not 1 <= count <= limits.max_images:
        raise DemoError(f"number of images must be between 1 and {limits.max_images}, got {count}")
    if not 0 <= t < min(run.schedule.num_timesteps, limits.max_steps):
        raise DemoError(f"t must be between 0 and {min(run.schedule.num_timesteps, limits.max_steps) - 1}, got {t}")
    lambdas = np.linspace(0, 1, count).tolist()
    rows = interpolate_images(run, x_a, x_b, [t], lambdas, seed=seed)
    return picture(torch.cat([x_a, rows[0], x_b]), nrow=count + 2)

