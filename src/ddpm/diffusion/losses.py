"""Training losses as small callables returning per-example terms.

Algorithm 1 of Ho et al. (2020): x0 ~ data, t ~ Uniform({0..T-1}) (0-based), eps ~ N(0, I), and a
gradient step on || target - model(x_t, t) ||^2 (L_simple, Eq. 14), where the target is eps, x0 or v
according to the parametrization.
"""

from __future__ import annotations

import torch

from ddpm.diffusion.parametrization import training_target
from ddpm.diffusion.process import q_sample
from ddpm.diffusion.schedule import Schedule, extract


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.flatten(1).mean(dim=1)


def simple_loss(
    model,
    schedule: Schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    prediction: str = "eps",
    y: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L_simple per example: {"mse": (N,), "loss": (N,)}."""
    x_t = q_sample(schedule, x0, t, noise)
    out = model(x_t, t) if y is None else model(x_t, t, y)
    a = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim)
    s = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
    mse = mean_flat((out.float() - training_target(x0, noise, a, s, prediction)) ** 2)
    return {"mse": mse, "loss": mse}
