"""A denoiser turns a network into what samplers need: eps and x0 at (x_t, t).

Samplers are functions over a denoiser, so they work for every parametrization (eps, x0, v) and every
wrapper (guidance, a peer's network) that keeps this signature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm.diffusion.likelihood import split_output
from ddpm.diffusion.parametrization import eps_from_x0, to_eps_x0
from ddpm.diffusion.schedule import Schedule


@dataclass
class Prediction:
    eps: torch.Tensor
    x0: torch.Tensor
    # The raw variance output of a learned-variance network (v of Improved DDPM Eq. 15, or a
    # log-variance); None for fixed variances. Samplers that ignore it (DDIM, ...) work unchanged.
    variance: torch.Tensor | None = None


class Denoiser:
    """``denoise(x_t, t) -> Prediction(eps, x0)`` for an int timestep ``t`` (0-based, the model's grid).

    ``clip_x0`` clips the predicted x0 to [-1, 1] (for images; leave off for latents) and makes eps
    consistent with the clipped x0.
    """

    def __init__(self, model, schedule: Schedule, prediction: str = "eps", *, clip_x0: bool = False, y=None,
                 variance: str = "beta"):
        self.model = model
        self.variance = variance  # a learned one splits the output: mean channels, then variance channels
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.y = y

    @staticmethod
    def timestep_batch(x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The (N,) long tensor of ``t`` the network takes."""
        return torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction:
        tt = self.timestep_batch(x_t, t)
        return self.convert(self.model(x_t, tt) if self.y is None else self.model(x_t, tt, self.y), x_t, t)

    def convert(self, out: torch.Tensor, x_t: torch.Tensor, t: int) -> Prediction:
        """The Prediction implied by a network output at (x_t, t): the one conversion every wrapper shares."""
        out, var_out = split_output(out.float(), self.variance)
        a, s = self.schedule.host.sqrt_alphas_cumprod[t], self.schedule.host.sqrt_one_minus_alphas_cumprod[t]
        eps, x0 = to_eps_x0(out, x_t, a, s, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x0, x_t, a, s)
        return Prediction(eps=eps, x0=x0, variance=var_out)
