"""Pictures of the two processes: images noised by q(x_t | x0), and every step of the reverse process.

Steps are 0-based (``ddpm.diffusion.schedule``); ``resolve_steps`` accepts T as the last step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ddpm.diffusion.process import q_sample
from ddpm.diffusion.schedule import Schedule
from ddpm.sampling.noise import Generators, randn
from ddpm.sampling.steps import Step
from ddpm.viz.figures import frame_grid, save_gif, save_labeled_grid


def default_forward_steps(num_timesteps: int) -> list[int]:
    """Ho et al.'s forward-process figure steps (0, 5, 10, 50, 100 of 1000, then the last), scaled to T."""
    return sorted({min(num_timesteps - 1, round(s * num_timesteps / 1000)) for s in (0, 5, 10, 50, 100)}
                  | {num_timesteps - 1})


def forward_strip(x0: torch.Tensor, schedule: Schedule, steps: Sequence[int],
                  generator: Generators = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, len(steps), C, H, W): each image at each step by Ho et al. Eq. 4.

    One noise draw per image serves every step, so a row shows one path of growing noise
    x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps, each x_t with its exact marginal.
    """
    noise = randn(x0.shape, generator, x0.device, x0.dtype)
    cols = [q_sample(schedule, x0, torch.full((x0.shape[0],), t, dtype=torch.long), noise) for t in steps]
    return torch.stack(cols, dim=1)


def save_forward_strip(x0: torch.Tensor, schedule: Schedule, steps: Sequence[int], path: str | Path,
                       generator: Generators = None, title: str | None = None) -> Path:
    """A strip per image: the data, then x_t at each step, columns labelled with t."""
    strip = forward_strip(x0, schedule, steps, generator)
    cells = torch.cat([x0[:, None], strip], dim=1)
    return save_labeled_grid(cells, path, col_labels=["data"] + [f"t={t}" for t in steps], title=title)


def nearest_on_grid(steps: Sequence[int], grid: Sequence[int]) -> list[int]:
    """Each requested step moved to the nearest step the sampler visits (ties to the noisier one)."""
    out: list[int] = []
    for s in steps:
        g = min(grid, key=lambda v: (abs(v - s), -v))
        if g not in out:
            out.append(g)
    return sorted(out, reverse=True)


class TrajectoryRecorder:
    """A ``Run.sample`` callback (it takes each ``Step``) that keeps the first ``k`` samples' x_t and x0-hat.

    Snapshots at ``steps`` (which must lie on the sampler's grid: see ``nearest_on_grid``) make the
    grid picture; about ``max_frames`` evenly spread steps make the GIF.
    """

    def __init__(self, steps: Sequence[int], grid: Sequence[int], k: int = 8, max_frames: int = 100):
        self.steps = list(steps)
        self.k = k
        every = max(1, len(grid) // max_frames)
        self.frame_steps = set(list(grid)[::every]) | {grid[-1]}
        self.snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.frames: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, step: Step) -> None:
        t = step.t
        if t in self.steps:
            self.snapshots[t] = (step.x_t[: self.k].float().cpu(), step.x0[: self.k].float().cpu())
        if t in self.frame_steps:
            self.frames.append((t, step.x_t[: self.k].float().cpu(), step.x0[: self.k].float().cpu()))

    def save(self, final: torch.Tensor, png: str | Path, gif: str | Path | None = None) -> list[Path]:
        """The grid (per sample a row of x_t and a row of x0-hat at each step, then the output) and GIF."""
        final = final[: self.k].float().cpu()
        steps = [t for t in self.steps if t in self.snapshots]
        blank = torch.ones_like(final)  # white in [-1, 1]
        rows, labels = [], []
        for j in range(final.shape[0]):
            rows.append(torch.stack([self.snapshots[t][0][j] for t in steps] + [final[j]]))
            rows.append(torch.stack([self.snapshots[t][1][j] for t in steps] + [blank[j]]))
            labels += [f"#{j} x_t", f"#{j} pred x0"]
        cols = [f"t={t}" for t in steps] + ["output"]
        written = [save_labeled_grid(torch.stack(rows), png, col_labels=cols, row_labels=labels,
                                     title="reverse process: x_t (noisy input at step t) and the model's x0")]
        if gif is not None:
            frames = [frame_grid([x, x0]) for _, x, x0 in self.frames] + [frame_grid([final, final])]
            captions = [f"t={t}  top: x_t  bottom: pred x0" for t, _, _ in self.frames] + ["output"]
            written.append(save_gif(frames, gif, captions))
        return written
