"""The forward process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0), as pure functions.

Works on any (N, C, ...) tensor, images or latents alike. Timesteps ``t`` are 0-based (see
``ddpm.diffusion.schedule``).
"""

from __future__ import annotations

import torch

from ddpm.diffusion.schedule import Schedule, extract


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Ho et al. Eq. 4 in one step: x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) noise."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_mean_variance(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor):
    """Mean, variance and log-variance of q(x_t | x0) (Ho et al. Eq. 4)."""
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
    var = extract(1.0 - schedule.alphas_cumprod, t, x0.ndim)
    return mean, var, var.log()


def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (Ho et al. Eqs. 6-7)."""
    mean = (
        extract(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
        + extract(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t
    )
    var = extract(schedule.posterior_variance, t, x_t.ndim)
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t.ndim)
    return mean, var, log_var
