"""Algorithm 2 of Ho et al. (2020): ancestral sampling of the reverse process.

On any descending grid of timesteps (all T, or a respaced subset as in Improved DDPM §4), each step
draws x_{prev} ~ N(mu-tilde(x_t, x0_hat), sigma^2 I), with the betas of the grid recomputed from
alpha-bar: beta'_t = 1 - alpha-bar_t / alpha-bar_prev. On the full grid these are the schedule's betas.
A learned variance (Improved DDPM Eq. 15) interpolates between that grid's beta'_t and beta-tilde'_t.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch

from ddpm.diffusion.likelihood import VARIANCES, model_log_variance
from ddpm.diffusion.schedule import Schedule
from ddpm.sampling.noise import Generators, randn
from ddpm.sampling.steps import Step, run


def grid_step_coefficients(schedule: Schedule, t: int, t_prev: int | None) -> dict[str, float]:
    """Posterior coefficients of one step t -> t_prev (None: the end, alpha-bar_prev = 1).

    Ho et al. Eq. 7 with the grid's own beta' = 1 - alpha-bar_t / alpha-bar_prev, in Python floats; on
    the full grid these are the schedule's ``posterior_mean_coef1/2`` and ``posterior_variance`` tables
    (which training and the likelihood look up per example), to float64 round-off.
    """
    abar = schedule.host.alphas_cumprod[t]
    abar_prev = 1.0 if t_prev is None else schedule.host.alphas_cumprod[t_prev]
    beta = 1.0 - abar / abar_prev
    return {
        "coef_x0": beta * abar_prev**0.5 / (1.0 - abar),
        "coef_xt": (1.0 - abar_prev) * (1.0 - beta) ** 0.5 / (1.0 - abar),
        "beta": beta,
        "beta_tilde": beta * (1.0 - abar_prev) / (1.0 - abar),
    }


@torch.inference_mode()
def ancestral_steps(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *,
                    variance: str = "beta", generator: Generators = None) -> Iterator[Step]:
    """The reverse process from x_T down ``timesteps``, one ``Step`` per network call.

    ``variance`` picks sigma_t^2 = beta_t (``"beta"``) or beta-tilde_t (``"beta_tilde"``), Ho et al.'s
    choices, or the network's own (``"learned"``, ``"learned_range"``: the denoiser's
    ``Prediction.variance``, with beta and beta-tilde of this grid's step). The last step adds no
    noise (z = 0).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}")
    x = x_T
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        c = grid_step_coefficients(schedule, t, t_prev)
        pred = denoise(x, t)
        mean = c["coef_x0"] * pred.x0 + c["coef_xt"] * x
        if t_prev is None:
            x_next = mean
        elif variance in ("beta", "beta_tilde"):
            x_next = mean + c[variance] ** 0.5 * randn(x.shape, generator, x.device, x.dtype)
        else:
            log_var = model_log_variance(pred.variance, variance, math.log(c["beta"]), math.log(c["beta_tilde"]))
            x_next = mean + torch.exp(0.5 * log_var) * randn(x.shape, generator, x.device, x.dtype)
        yield Step(i, t, x, pred, x_next)
        x = x_next


def sample_ancestral(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int] | None = None, *,
                     variance: str = "beta", generator: Generators = None, callback: Callable | None = None,
                     progress: bool = True) -> torch.Tensor:
    """Algorithm 2 from x_T (all T steps when ``timesteps`` is None); ``callback(step)`` sees every ``Step``.
    See ``ancestral_steps``."""
    return run(ancestral_steps, denoise, x_T, schedule, timesteps, callback=callback, progress=progress,
               desc="sampling", variance=variance, generator=generator)
