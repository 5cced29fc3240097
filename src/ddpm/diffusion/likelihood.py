"""The variational bound of Ho et al. (2020) Eq. 5 in bits per dimension, and the reverse-process
mean and (fixed or learned) variance it is evaluated on.

    L_vlb = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I))                      (prior term, no parameters)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))   (Gaussian KLs)
    L_0     = -log p(x0 | x_1)                                (discretized Gaussian decoder, Eq. 13)

With 0-based timesteps (``ddpm.diffusion.schedule``) the network call at index ``t`` gives the term
L_{t} of the paper's 1-based step t+1: a KL for ``t >= 1`` and the decoder for ``t == 0``.

A learned variance (Nichol & Dhariwal 2021) is a second block of output channels: ``"learned"``
reads it as the log-variance itself, ``"learned_range"`` as v with
Sigma = exp(v' log beta_t + (1 - v') log beta-tilde_t), v' = (v + 1) / 2 (Improved DDPM Eq. 15).
"""

from __future__ import annotations

import math

import torch

from ddpm.diffusion.parametrization import eps_from_x0, to_eps_x0
from ddpm.diffusion.process import q_posterior
from ddpm.diffusion.schedule import Schedule, extract

FIXED_VARIANCES = ("beta", "beta_tilde")  # Ho et al.'s two choices of sigma_t^2
LEARNED_VARIANCES = ("learned", "learned_range")  # the network outputs them (a second block of channels)
VARIANCES = (*FIXED_VARIANCES, *LEARNED_VARIANCES)
LN2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.flatten(1).mean(dim=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) element-wise, in nats.

    Log-variances (not variances) so a learned log-variance never goes through exp and log again.
    """
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v) for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor,
                                        num_bins: int = 256) -> torch.Tensor:
    """log p(x) element-wise for x on the centres of ``num_bins`` bins spanning [-1, 1] (Ho et al. Eq. 13).

    Each bin has half-width 1 / (num_bins - 1); the two outermost bins extend to -inf and +inf, so the
    probabilities of all bins sum to one.
    """
    half = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-0.5 * log_variance)
    upper = (x - mean + half) * inv_std
    lower = (x - mean - half) * inv_std
    # Mass of a middle bin, Phi(u) - Phi(l), on the lower-tail side (Phi(-l) - Phi(-u) when l > 0)
    # and in the log domain: float32 ndtr differences lose every digit once both are near 1, and
    # torch's float32 ndtr itself is off by 0.1% at -4.6 sigma and 0 at -6; log_ndtr is accurate.
    flip = lower > 0
    log_hi = torch.special.log_ndtr(torch.where(flip, -lower, upper))
    log_lo = torch.special.log_ndtr(torch.where(flip, -upper, lower))
    log_mid = log_hi + torch.log((-torch.expm1(log_lo - log_hi)).clamp(min=1e-12))
    edge = 1.0 - half  # halfway between the outermost centre and its neighbour
    return torch.where(x < -edge, torch.special.log_ndtr(upper),
                       torch.where(x > edge, torch.special.log_ndtr(-lower), log_mid))


def split_output(output: torch.Tensor, variance: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean prediction, raw variance output or None): a learned variance is the second channel half."""
    if variance in LEARNED_VARIANCES:
        mean_out, var_out = output.chunk(2, dim=1)
        return mean_out, var_out
    return output, None


def model_log_variance(var_output: torch.Tensor | None, variance: str, log_beta, log_beta_tilde):
    """log sigma_t^2 of p(x_{t-1} | x_t) from the beta and beta-tilde of the step (floats or tensors).

    ``"learned_range"`` interpolates in the log domain (Improved DDPM Eq. 15); the step's beta and
    beta-tilde are whatever grid the sampler runs on, so a respaced grid uses its own (§4).
    """
    if variance == "beta":
        return log_beta
    if variance == "beta_tilde":
        return log_beta_tilde
    if var_output is None:
        raise ValueError(f"variance {variance!r} needs the model's variance output, but it is missing")
    if variance == "learned":
        return var_output
    if variance == "learned_range":
        frac = (var_output + 1.0) / 2.0
        return frac * log_beta + (1.0 - frac) * log_beta_tilde
    raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")


def p_mean_variance(output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule, *,
                    prediction: str = "eps", variance: str = "beta", clip_x0: bool = False) -> dict[str, torch.Tensor]:
    """Mean and log-variance of p(x_{t-1} | x_t) from a network ``output`` at (x_t, t) on the full schedule.

    The mean is the posterior mean mu-tilde(x_t, x0_hat) (Ho et al. Eqs. 7 and 11); at ``t == 0`` the
    beta-tilde table holds beta-tilde_1 (its clipped log), as beta-tilde_0 = 0. Returns
    ``{"mean", "log_variance", "x0", "eps"}``.
    """
    mean_out, var_out = split_output(output, variance)
    a = extract(schedule.sqrt_alphas_cumprod, t, x_t.ndim)
    s = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
    eps, x0 = to_eps_x0(mean_out, x_t, a, s, prediction)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(x0, x_t, a, s)
    mean, _, _ = q_posterior(schedule, x0, x_t, t)
    log_var = model_log_variance(var_out, variance, extract(schedule.betas.log(), t, x_t.ndim),
                                 extract(schedule.posterior_log_variance_clipped, t, x_t.ndim))
    return {"mean": mean, "log_variance": log_var, "x0": x0, "eps": eps}


def prior_bpd(schedule: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) per example in bits/dim (Ho et al. Eq. 5).

    In float64: the KL is of the size of alpha-bar_T (~1e-5), which float32 cancellation would swamp.
    """
    abar = schedule.alphas_cumprod[-1].to(device=x0.device)
    mean = abar.sqrt() * x0.to(torch.float64)
    kl = normal_kl(mean, torch.log1p(-abar), torch.zeros((), dtype=torch.float64, device=x0.device),
                   torch.zeros((), dtype=torch.float64, device=x0.device))
    return (mean_flat(kl) / LN2).to(x0.dtype)


def vb_terms_bpd(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """The bound's term at each example's (0-based) t, in bits/dim: L_{t} = KL(q posterior || p) for
    t >= 1 and the decoder NLL L_0 = -log p(x0 | x_1) (Ho et al. Eq. 13) for t == 0.

    ``mean`` and ``log_variance`` are p(x_{t-1} | x_t)'s (``p_mean_variance``); x0 must lie on the
    256-level grid for the decoder term to be a likelihood.
    """
    true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_variance)) / LN2
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, log_variance)) / LN2
    return torch.where(t == 0, nll, kl)


def quantize(x: torch.Tensor, num_bins: int = 256) -> torch.Tensor:
    """Snap [-1, 1] data to the centres of ``num_bins`` levels, where the decoder's bins are."""
    return ((x.clamp(-1, 1) + 1) * (num_bins - 1) / 2).round() * 2 / (num_bins - 1) - 1
