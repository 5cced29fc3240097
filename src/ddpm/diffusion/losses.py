"""Training losses as small callables returning per-example terms.

Algorithm 1 of Ho et al. (2020): x0 ~ data, t ~ Uniform({0..T-1}) (0-based), eps ~ N(0, I), and a
gradient step on || target - model(x_t, t) ||^2 (L_simple, Eq. 14), where the target is eps, x0 or v
according to the parametrization.

Improved DDPM (Nichol & Dhariwal 2021) adds ``hybrid_loss`` (Eq. 16) and ``vlb_loss`` for networks
that also output their variance. Every loss has the same signature and returns per-example terms
``{"mse", "loss"}`` (plus ``"vb"`` in bits/dim); ``LOSSES`` maps config names to them.
"""

from __future__ import annotations

import torch

from ddpm.diffusion.likelihood import mean_flat, p_mean_variance, split_output, vb_terms_bpd
from ddpm.diffusion.parametrization import training_target
from ddpm.diffusion.process import q_sample
from ddpm.diffusion.schedule import Schedule, extract

VLB_WEIGHT = 0.001  # lambda of Improved DDPM Eq. 16


def simple_loss(
    model,
    schedule: Schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    prediction: str = "eps",
    variance: str = "beta",
    y: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L_simple per example: {"mse": (N,), "loss": (N,)} (on the mean channels of a learned-variance model)."""
    x_t = q_sample(schedule, x0, t, noise)
    out = model(x_t, t) if y is None else model(x_t, t, y)
    mse = _mse(split_output(out.float(), variance)[0], schedule, x0, t, noise, prediction)
    return {"mse": mse, "loss": mse}


def hybrid_loss(model, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
                prediction: str = "eps", variance: str = "learned_range", y: torch.Tensor | None = None,
                vlb_weight: float = VLB_WEIGHT) -> dict[str, torch.Tensor]:
    """L_hybrid = L_simple + lambda L_vlb per example (Improved DDPM Eq. 16): {"mse", "vb", "loss"}.

    The VLB term sees the mean prediction with its gradient stopped, so it trains only the variance
    and the mean is learned by L_simple alone (§3.1). One uniformly drawn t estimates
    L_vlb = sum_t L_t as T * L_t, hence ``loss = mse + lambda * T * vb`` (``vb`` in bits/dim).
    """
    x_t = q_sample(schedule, x0, t, noise)
    out = (model(x_t, t) if y is None else model(x_t, t, y)).float()
    mean_out, var_out = split_output(out, variance)
    mse = _mse(mean_out, schedule, x0, t, noise, prediction)
    frozen = torch.cat([mean_out.detach(), var_out], dim=1) if var_out is not None else mean_out.detach()
    vb = _vb(frozen, schedule, x0, x_t, t, prediction, variance)
    return {"mse": mse, "vb": vb, "loss": mse + vlb_weight * schedule.num_timesteps * vb}


def vlb_loss(model, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
             prediction: str = "eps", variance: str = "learned_range",
             y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L_vlb alone per example (Ho et al. Eq. 5; Improved DDPM §3.3): {"mse", "vb", "loss"}.

    ``loss = vb``, the term L_t at the drawn t in bits/dim, trains mean and variance together; averaged
    under importance weights 1 / (T p_t) it estimates L_vlb / T, a scale like L_simple's. ``mse`` is
    only logged.
    """
    x_t = q_sample(schedule, x0, t, noise)
    out = (model(x_t, t) if y is None else model(x_t, t, y)).float()
    vb = _vb(out, schedule, x0, x_t, t, prediction, variance)
    with torch.no_grad():
        mse = _mse(split_output(out, variance)[0], schedule, x0, t, noise, prediction)
    return {"mse": mse, "vb": vb, "loss": vb}


LOSSES = {"simple": simple_loss, "hybrid": hybrid_loss, "vlb": vlb_loss}


def _mse(mean_out: torch.Tensor, schedule: Schedule, x0, t, noise, prediction: str) -> torch.Tensor:
    a = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim)
    s = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
    return mean_flat((mean_out - training_target(x0, noise, a, s, prediction)) ** 2)


def _vb(out: torch.Tensor, schedule: Schedule, x0, x_t, t, prediction: str, variance: str) -> torch.Tensor:
    # No x0 clipping while training (as improved-diffusion): the bound is of the network's own prediction.
    p = p_mean_variance(out, x_t, t, schedule, prediction=prediction, variance=variance)
    return vb_terms_bpd(schedule, x0, x_t, t, p["mean"], p["log_variance"])
