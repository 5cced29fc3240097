"""Timestep grids for samplers: always descending, always starting at the last training step.

Starting at ``T-1`` (0-based) means the first network call sees pure noise, the convention whose
absence was diffusers #2585. Every grid ends at ``0``.
"""

from __future__ import annotations

import numpy as np

from ddpm.errors import UserError


def timestep_grid(num_timesteps: int, steps: int | None = None, kind: str = "even") -> list[int]:
    """``steps`` 0-based timesteps from T-1 down to 0 (all T when ``steps`` is None).

    ``kind="even"`` spaces them evenly; ``"quadratic"`` packs them near t = 0 (Song et al. 2021, DDIM).
    """
    if steps is None or steps == num_timesteps:
        return list(range(num_timesteps - 1, -1, -1))
    if not 1 <= steps <= num_timesteps:
        raise UserError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    if kind == "even":
        grid = np.linspace(0, num_timesteps - 1, steps)
    elif kind == "quadratic":
        grid = np.linspace(0, np.sqrt(num_timesteps - 1), steps) ** 2
    else:
        raise UserError(f"unknown timestep grid {kind!r}; choose even or quadratic")
    out = sorted({int(round(v)) for v in grid}, reverse=True)
    if len(out) != steps:
        raise UserError(f"{steps} {kind} steps collide on a grid of {num_timesteps}; use fewer steps")
    return out
