"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order multistep solver of
the probability-flow ODE in data-prediction form, stepping in log-SNR time; and its stochastic form
SDE-DPM-Solver++(2M) (same paper, §5 and App. B), which solves the reverse diffusion SDE instead.

With alpha_t = sqrt(alpha-bar_t), sigma_t = sqrt(1 - alpha-bar_t) and lambda_t = log(alpha_t / sigma_t),
one step from grid point t_{i-1} to t_i (h_i = lambda_{t_i} - lambda_{t_{i-1}} > 0) is

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i,

with D_i = x0_hat(t_{i-1}) for the first-order step (the first step, which has no history: DDIM) and
D_i = (1 + 1 / (2 r_i)) x0_hat(t_{i-1}) - 1 / (2 r_i) x0_hat(t_{i-2}), r_i = h_{i-1} / h_i, otherwise.

The end of the grid. Grids here end at t = 0 (sigma_0 = 0.01 for the linear schedule, not 0), and the
network call at t = 0 returns x0_hat: that is the first-order update above taken to sigma = 0
(lambda = +inf, exp(-h) = 0, alpha = 1), where no second-order term exists. So K grid points cost K
network calls: K - 1 solver steps from T-1 down to 0, then the final first-order step to the data.
"Lower order final" (``lower_order_final=True``, the default): the step that lands on t = 0 is
first-order too. The paper's released code and diffusers do this below 10 or 15 steps; here it is
always done, because that step is usually the longest in lambda by far (uniform-t grids on the linear
schedule: lambda goes 1.7 -> 4.6 in the last of 20 steps, r_i ~ 0.2), where extrapolating x0_hat
linearly overshoots x0_hat's saturation near the data; on the exact Gaussian problem of
tests/test_samplers.py and on trained models it was the more accurate choice in most settings
(benchmarks/README.md gives the comparison). One first-order step keeps the global order 2.

SDE-DPM-Solver++(2M) takes the same D_i and the exact solution of the linear part of the reverse SDE
in data-prediction form,

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) exp(-h_i) x_{t_{i-1}} + alpha_{t_i} (1 - exp(-2 h_i)) D_i
              + sigma_{t_i} sqrt(1 - exp(-2 h_i)) z,

so each step injects fresh noise, as ancestral sampling does, but with second-order accuracy in the
data prediction. Its first-order step is DDPM's posterior step between the two grid points (DDIM with
eta = 1). The noise corrects errors the ODE carries along, which on small pixel-space models can make it
the better of the two at 10-20 calls (benchmarks/fast_sampling.py measures both; benchmarks/README.md
has the figures).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch

from ddpm.diffusion.schedule import Schedule
from ddpm.sampling.noise import Generators, randn
from ddpm.sampling.steps import Step, run


@torch.inference_mode()
def dpmpp_2m_steps(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *, sde: bool = False,
                   lower_order_final: bool = True, generator: Generators = None) -> Iterator[Step]:
    """DPM-Solver++(2M) from x_T down the descending ``timesteps`` grid (Lu et al. 2022, Algorithm 2), one
    ``Step`` per network call; with ``sde=True`` SDE-DPM-Solver++(2M).

    The ODE solver is deterministic: ``generator`` is accepted for the shared signature and never drawn
    from. The SDE solver draws one ``randn`` of x's shape from it at every step but the last.
    """
    abar = schedule.host.alphas_cumprod
    alpha = [a**0.5 for a in abar]
    sigma = [(1.0 - a) ** 0.5 for a in abar]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    last = len(timesteps) - 1
    x = x_T
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        pred = denoise(x, t)
        if i == last:
            yield Step(i, t, x, pred, pred.x0)  # the first-order step to sigma = 0 (see the module docstring)
            return
        s = timesteps[i + 1]
        h = lam[s] - lam[t]
        first_order = x0_prev is None or (lower_order_final and i + 1 == last)
        if first_order:
            d = pred.x0
        else:
            r = h_prev / h
            d = (1.0 + 0.5 / r) * pred.x0 - (0.5 / r) * x0_prev
        if sde:
            x_next = ((sigma[s] / sigma[t]) * math.exp(-h)) * x - alpha[s] * math.expm1(-2.0 * h) * d
            x_next = x_next + sigma[s] * math.sqrt(-math.expm1(-2.0 * h)) * randn(x.shape, generator, x.device,
                                                                                   x.dtype)
        else:
            x_next = (sigma[s] / sigma[t]) * x - alpha[s] * math.expm1(-h) * d
        yield Step(i, t, x, pred, x_next)
        x, x0_prev, h_prev = x_next, pred.x0, h


def dpmpp_2m_sde_steps(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *,
                       lower_order_final: bool = True, generator: Generators = None) -> Iterator[Step]:
    """SDE-DPM-Solver++(2M): ``dpmpp_2m_steps`` with ``sde=True``."""
    return dpmpp_2m_steps(denoise, x_T, schedule, timesteps, sde=True, lower_order_final=lower_order_final,
                          generator=generator)


def sample_dpmpp_2m(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int] | None = None, *,
                    sde: bool = False, lower_order_final: bool = True, generator: Generators = None,
                    callback: Callable | None = None, progress: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) (``sde=True``: its SDE form) to the end; ``callback(step)`` sees the ``Step`` of each of
    the ``len(timesteps)`` network calls. See ``dpmpp_2m_steps``."""
    return run(dpmpp_2m_steps, denoise, x_T, schedule, timesteps, callback=callback, progress=progress,
               desc="dpm++2m-sde" if sde else "dpm++2m", sde=sde, lower_order_final=lower_order_final,
               generator=generator)


def sample_dpmpp_2m_sde(denoise, x_T: torch.Tensor, schedule: Schedule, timesteps: Sequence[int] | None = None, *,
                        lower_order_final: bool = True, generator: Generators = None,
                        callback: Callable | None = None, progress: bool = True) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) to the end: ``sample_dpmpp_2m`` with ``sde=True``."""
    return sample_dpmpp_2m(denoise, x_T, schedule, timesteps, sde=True, lower_order_final=lower_order_final,
                           generator=generator, callback=callback, progress=progress)
