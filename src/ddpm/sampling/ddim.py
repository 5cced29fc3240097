"""DDIM (Song, Meng & Ermon 2021): the non-Markovian reverse process, and its inversion x0 -> x_T.

One step from t to the next grid point t' < t is Eq. 12,

    x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps_hat + sigma z,

with sigma from eta by Eq. 16, sigma^2 = eta^2 (1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t').
``eta = 0`` is the deterministic sampler (an Euler step of the probability-flow ODE in the variables
x / sqrt(abar) and sqrt(1 / abar - 1), Song et al. §4.3); ``eta = 1`` on the full grid is Ho et al.'s
Algorithm 2 with sigma^2 = beta-tilde. The grid ends at t = 0 and the call there returns x0_hat
(alpha-bar of the end point is 1, so Eq. 12 reduces to x0_hat), as ancestral sampling does.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from ddpm.diffusion.schedule import Schedule
from ddpm.io import progress_bar
from ddpm.sampling.noise import Generators, randn
from ddpm.sampling.steps import Step, grid_or_full, run


def ddim_sigma(abar: float, abar_prev: float, eta: float) -> float:
    """Song et al. (2021) Eq. 16 times eta: eta * sqrt((1 - abar') / (1 - abar)) * sqrt(1 - abar / abar')."""
    return eta * ((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)) ** 0.5


@torch.inference_mode()
def ddim_steps(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *, eta: float = 0.0,
               generator: Generators = None) -> Iterator[Step]:
    """DDIM (Song et al. 2021, Eq. 12) from x_T down the descending ``timesteps`` grid, one ``Step`` per call.

    With ``eta > 0`` every step but the last draws one ``randn`` of x's shape from ``generator``, in the
    same order as ``ancestral_steps``, so DDIM(eta=1) on the full grid reproduces it draw for draw.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    abars = schedule.host.alphas_cumprod
    x = x_T
    for i, t in enumerate(timesteps):
        pred = denoise(x, t)
        if i + 1 == len(timesteps):
            yield Step(i, t, x, pred, pred.x0)  # alpha-bar of the end point is 1: Eq. 12 gives x0_hat
            return
        abar, abar_prev = abars[t], abars[timesteps[i + 1]]
        sigma = ddim_sigma(abar, abar_prev, eta)
        # max(0, .) only guards round-off: sigma^2 <= 1 - abar' for eta <= 1.
        dir_coef = max(0.0, 1.0 - abar_prev - sigma**2) ** 0.5
        x_next = abar_prev**0.5 * pred.x0 + dir_coef * pred.eps
        if sigma > 0:
            x_next = x_next + sigma * randn(x.shape, generator, x.device, x.dtype)
        yield Step(i, t, x, pred, x_next)
        x = x_next


def sample_ddim(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int] | None = None, *,
                eta: float = 0.0, generator: Generators = None, callback: Callable | None = None,
                progress: bool = True) -> torch.Tensor:
    """DDIM sampling to the end (all T steps when ``timesteps`` is None); ``callback(step)`` sees each
    network call's ``Step``. See ``ddim_steps``."""
    return run(ddim_steps, denoise, x_T, schedule, timesteps, callback=callback, progress=progress, desc="ddim",
               eta=eta, generator=generator)


@torch.inference_mode()
def ddim_invert(
    denoise,
    x0: torch.Tensor,
    schedule: Schedule,
    timesteps: list[int] | None = None,
    *,
    callback: Callable | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM inversion: run the deterministic (eta = 0) DDIM update forwards, x0 -> x_T.

    ``timesteps`` is the same descending grid ``sample_ddim`` takes (ending at 0, starting at T-1);
    it is walked upwards. Step i moves x from the grid point below t_i (clean data, alpha-bar = 1, for
    the first step) up to t_i by Eq. 12 with sigma = 0, using eps_hat = denoise(x, t_i): the current x at
    the *target* step, as in Mokady et al.'s null-text inversion. The exact inverse of a DDIM step would
    need eps at the unknown x_{t_i}; evaluating at t_i keeps one call per grid point and makes the
    round trip invert -> sample err only by how eps changes with x over a step, not with t.
    ``callback(step)`` sees each call as a ``Step`` (``x_t`` the x the network saw, ``x_next`` the x
    after the step, one grid point up).
    """
    ascending = grid_or_full(schedule, timesteps)[::-1]
    abars = schedule.host.alphas_cumprod
    x = x0
    abar_from = 1.0
    for i, t in enumerate(progress_bar(ascending, desc="ddim inversion", disable=not progress, leave=False)):
        pred = denoise(x, t)
        # eps_hat is consistent with the x0_hat at x's own noise level abar_from, not at t's.
        x0_hat = (x - (1.0 - abar_from) ** 0.5 * pred.eps) / abar_from**0.5
        abar_to = abars[t]
        x_next = abar_to**0.5 * x0_hat + (1.0 - abar_to) ** 0.5 * pred.eps
        if callback is not None:
            callback(Step(i, t, x, pred, x_next))
        x, abar_from = x_next, abar_to
    return x
