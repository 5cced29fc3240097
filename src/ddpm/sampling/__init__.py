"""Samplers: stateless functions over a denoiser with one shared signature.

Each sampler is a generator of steps (``ddpm.sampling.steps``),

    X_steps(denoise, x_T, schedule, timesteps, *, generator=None, **options) -> Iterator[Step]

and a function that runs it to the end (``ddpm.sampling.steps.run``; ``callback(step)`` sees each ``Step``),

    sample_X(denoise, x_T, schedule, timesteps=None, *, generator=None, callback=None, progress=True, **options)

``denoise(x_t, t) -> Prediction(eps, x0)``; ``timesteps`` is a descending grid of 0-based training
steps starting at T-1 (``ddpm.sampling.grids``). ``SAMPLERS`` is the registry every caller reads (the
pipeline, each CLI sub-command's ``--sampler``): a new entry appears everywhere at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from ddpm.sampling.ancestral import ancestral_steps, sample_ancestral
from ddpm.sampling.ddim import ddim_invert, ddim_steps, sample_ddim
from ddpm.sampling.dpm_solver import dpmpp_2m_sde_steps, dpmpp_2m_steps, sample_dpmpp_2m, sample_dpmpp_2m_sde
from ddpm.sampling.steps import Step, run


@dataclass(frozen=True)
class Sampler:
    """A registry entry: the step generator, the grid it gets when none is named, and the options it
    takes beyond the shared signature (``SamplingOptions`` refuses the others)."""

    steps: Callable[..., Iterator[Step]]
    default_grid: str
    options: tuple[str, ...]
    description: str


# Default grids. DDIM takes the trailing grid: its last call returns x0_hat, which on a grid ending at
# t = 0 is a call spent where x is already clean. DPM-Solver++ takes uniform t although Lu et al. (2022)
# suggest uniform log-SNR for small pixel-space models: real data decide their modes at mid noise, where
# log-SNR spacing puts few steps. benchmarks/fast_sampling.py compares the grids (benchmarks/README.md).
SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(ancestral_steps, "even", ("variance",), "Algorithm 2 of Ho et al. (2020)"),
    "ddim": Sampler(ddim_steps, "trailing", ("eta",), "DDIM (Song et al. 2021); eta 0 is deterministic"),
    "dpm++2m": Sampler(dpmpp_2m_steps, "even", (), "DPM-Solver++(2M) (Lu et al. 2022), an ODE solver"),
    "dpm++2m-sde": Sampler(dpmpp_2m_sde_steps, "even", (), "SDE-DPM-Solver++(2M), its stochastic form"),
}
__all__ = ["SAMPLERS", "Sampler", "Step", "run", "ancestral_steps", "ddim_invert", "ddim_steps",
           "dpmpp_2m_sde_steps", "dpmpp_2m_steps", "sample_ancestral", "sample_ddim", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde"]
