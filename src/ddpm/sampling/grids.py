"""Timestep grids for samplers: always descending, always starting at the last training step.

Starting at ``T-1`` (0-based) means the first network call sees pure noise, the convention whose
absence was diffusers #2585. Every grid but ``trailing`` ends at ``0``.

The last call of every sampler returns x0_hat, the jump to the data. On a grid that ends at 0 that call
happens where x is nearly clean already (sigma_0 = 0.01 for the linear schedule), so it is spent on a
step that changes little; ``trailing`` (diffusers' name, from Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps Are Flawed", Table 2) instead spaces K points by T / K from T-1 down to
T / K - 1 and jumps to the data from there: 999, 899, ..., 99 for K = 10. With K = T both are the full grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ddpm.errors import UserError

if TYPE_CHECKING:
    from ddpm.diffusion.schedule import Schedule


GRIDS = ("even", "trailing", "quadratic", "logsnr")


def timestep_grid(num_timesteps: int, steps: int | None = None, kind: str = "even", *,
                  schedule: Schedule | None = None) -> list[int]:
    """``steps`` 0-based timesteps from T-1 down to 0 (all T when ``steps`` is None).

    ``kind="even"`` spaces them evenly; ``"trailing"`` by T / steps, down to T / steps - 1 instead of 0;
    ``"quadratic"`` packs them near t = 0 (Song et al. 2021, DDIM);
    ``"logsnr"`` spaces them evenly in log-SNR lambda_t = log(alpha_t / sigma_t) (Lu et al. 2022,
    DPM-Solver §3.3 "uniform logSNR"), each point rounded to the training step of nearest lambda, and
    needs the ``schedule``.
    """
    if steps is None or steps == num_timesteps:
        return list(range(num_timesteps - 1, -1, -1))
    if not 1 <= steps <= num_timesteps:
        raise UserError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    if kind == "even":
        grid = np.linspace(0, num_timesteps - 1, steps)
    elif kind == "trailing":
        grid = num_timesteps - np.arange(steps) * (num_timesteps / steps) - 1
    elif kind == "quadratic":
        grid = np.linspace(0, np.sqrt(num_timesteps - 1), steps) ** 2
    elif kind == "logsnr":
        grid = _logsnr_grid(num_timesteps, steps, schedule)
    else:
        raise UserError(f"unknown timestep grid {kind!r}; choose one of {', '.join(GRIDS)}")
    out = sorted({int(round(v)) for v in grid}, reverse=True)
    if len(out) != steps:
        raise UserError(f"{steps} {kind} steps collide on a grid of {num_timesteps}; use fewer steps")
    return out


def _logsnr_grid(num_timesteps: int, steps: int, schedule: Schedule | None) -> np.ndarray:
    """Training steps whose log-SNR is nearest to ``steps`` values evenly spaced from lambda_{T-1} to lambda_0.

    Near t = 0 lambda moves by more than the spacing per training step (linear schedule: 4.6, 4.2,
    4.0, ... for t = 0, 1, 2), so neighbours may round to the same step; those are pushed to the next
    free step (one apart at most there), keeping ``steps`` distinct points from T-1 to 0.
    """
    if schedule is None:
        raise ValueError("the logsnr grid needs the schedule")
    if schedule.num_timesteps != num_timesteps:
        raise ValueError(f"schedule has {schedule.num_timesteps} steps, grid asked for {num_timesteps}")
    lam = schedule.log_snr().cpu().numpy()  # decreasing in t; the end points map to T-1 and 0 exactly
    targets = np.linspace(lam[-1], lam[0], steps)
    grid = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)  # descending from T-1 to 0
    for i in range(1, steps):  # strictly descending ...
        grid[i] = min(grid[i], grid[i - 1] - 1)
    for i in range(steps - 1, -1, -1):  # ... and room left below for the rest, ending at 0
        grid[i] = max(grid[i], steps - 1 - i)
    return grid.astype(np.float64)
