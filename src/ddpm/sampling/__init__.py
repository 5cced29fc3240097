"""Samplers: stateless functions over a denoiser with one shared signature

    sample_X(denoise, x_T, schedule, timesteps=None, *, generator=None, callback=None, progress=True, **options)

``denoise(x_t, t) -> Prediction(eps, x0)``; ``timesteps`` is a descending grid of 0-based training
steps starting at T-1 (``ddpm.sampling.grids``). ``SAMPLERS`` maps CLI names to these functions.
"""

from ddpm.sampling.ancestral import sample_ancestral

SAMPLERS = {"ancestral": sample_ancestral}
