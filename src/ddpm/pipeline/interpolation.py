"""Interpolation: between two seeds' noises (slerp), and between two images through x_t (Ho et al. §4.3).

Both end in ``Run.sample``, the one entry point that samples; ``**options`` are its options
(``sampling=SamplingOptions(...)``, ``guidance``, ``runtime``, ``progress``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ddpm.config import RunConfig
from ddpm.diffusion.process import q_sample
from ddpm.errors import UserError
from ddpm.pipeline.options import SamplingOptions
from ddpm.pipeline.run import Run
from ddpm.sampling.grids import timestep_grid
from ddpm.sampling.noise import randn, seed_generators


def slerp(a: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Spherical linear interpolation per sample (Shoemake 1985), as used for x_T in DDIM §5.3.

    slerp(a, b, l) = sin((1 - l) theta) / sin(theta) a + sin(l theta) / sin(theta) b, with theta the
    angle between a and b (over all but the first dimension). Gaussian noise of high dimension lies
    near a sphere, where a straight line would cut inside (a mix at l = 0.5 of two independent draws
    has only 1/sqrt(2) of their norm); slerp stays on it. Nearly parallel inputs fall back to lerp.
    """
    lam = torch.as_tensor(lam, dtype=a.dtype, device=a.device)
    af, bf = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(eps)
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).reshape(-1, *([1] * (a.ndim - 1)))
    sin = torch.sin(theta)
    small = sin.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(sin), sin)
    wa = torch.where(small, 1 - lam, torch.sin((1 - lam) * theta) / safe)
    wb = torch.where(small, lam, torch.sin(lam * theta) / safe)
    return wa * a + wb * b


def seed_noise(cfg: RunConfig, seed: int, device="cpu") -> torch.Tensor:
    """The x_T that ``ddpm sample`` draws for seed ``seed`` (its generator's first draw), shape (1, C, H, W)."""
    shape = (1, cfg.model.in_channels, *cfg.model.image_size)
    return randn(shape, seed_generators([seed]), device)


def interpolate_seeds(run: Run, seed_a: int, seed_b: int, lambdas: Sequence[float], **options) -> torch.Tensor:
    """Samples from slerp(x_T(seed_a), x_T(seed_b), lambda) for each lambda: (len(lambdas), C, H, W).

    With a deterministic sampler (``sampler="ddim"``, eta = 0; Song et al. 2021 §5.3) x_T alone
    decides each image, so lambda = 0 and 1 are seed_a's and seed_b's samples exactly. A stochastic
    sampler's own noise is seed_a's for every lambda (each generator first draws x_T, as in ``ddpm
    sample``): lambda = 0 is still seed_a's sample, but that shared path noise, not x_T, then decides
    most of every image in the row.
    """
    device = run.device
    x_a, x_b = seed_noise(run.config, seed_a, device), seed_noise(run.config, seed_b, device)
    lam = torch.tensor(list(lambdas), dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
    x_T = slerp(x_a.expand(len(lambdas), *x_a.shape[1:]), x_b.expand(len(lambdas), *x_b.shape[1:]), lam)
    gens = seed_generators([seed_a] * len(lambdas))
    randn(x_T.shape, gens, device)  # advance past x_T so the path noise continues as in ddpm sample
    return run.sample(len(lambdas), x_T=x_T, generator=gens, **options)


def grid_from(t: int, num_timesteps: int, steps: int | None = None, kind: str = "even", *,
              schedule=None) -> list[int]:
    """The sampling grid (``steps`` of kind ``kind`` over all of T) cut to start at step t: t, then the
    grid's steps below t."""
    return [t] + [s for s in timestep_grid(num_timesteps, steps, kind, schedule=schedule) if s < t]


def interpolate_images(run: Run, x_a: torch.Tensor, x_b: torch.Tensor, steps: Sequence[int],
                       lambdas: Sequence[float], *, seed: int = 0, progress: bool = False, **options) -> torch.Tensor:
    """Ho et al. (2020) §4.3, Fig. 8: interpolate two images in x_t, decode by the reverse process.

    For each step t: x_t = q_sample(x0, t, eps) and x'_t = q_sample(x0', t, eps) with the *same* eps,
    x-bar_t = (1 - lambda) x_t + lambda x'_t, then the reverse process from t to 0 (the grid of
    ``sampling_steps`` cut at t). The same noise makes x-bar_t exactly the q_sample of the mixed
    image, so the noise level stays right; the reverse process' noise is also shared by every lambda
    (Fig. 8 "fixed the noise for different values of lambda"). Small t reconstructs and blends pixels;
    large t forgets the sources and yields new, smoothly varying images. The grid below t is that of
    ``sampling`` over all of T (all T steps by default), cut at t.

    ``x_a`` and ``x_b`` are (1, C, H, W) or (C, H, W) in [-1, 1]. Returns (len(steps), len(lambdas), C, H, W).
    """
    device = run.device
    x_a, x_b = (x.reshape(1, *x.shape[-3:]).to(device) for x in (x_a, x_b))
    want = run.shape
    if tuple(x_a.shape[1:]) != want or tuple(x_b.shape[1:]) != want:
        raise UserError(f"images of shape {tuple(x_a.shape[1:])} do not fit the model's {want}")
    schedule = run.schedule
    T = schedule.num_timesteps
    sampling = options.get("sampling", SamplingOptions())
    eps = randn(x_a.shape, torch.Generator().manual_seed(seed), device)
    lam = torch.tensor(list(lambdas), dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
    rows = []
    for t in steps:
        tt = torch.full((1,), int(t), dtype=torch.long, device=device)
        xa_t, xb_t = q_sample(schedule, x_a, tt, eps), q_sample(schedule, x_b, tt, eps)
        mixed = (1 - lam) * xa_t + lam * xb_t
        gens = seed_generators([seed + 1] * len(lambdas))
        grid = grid_from(int(t), T, sampling.steps, sampling.default_grid, schedule=schedule)
        rows.append(run.sample(len(lambdas), x_T=mixed, timesteps=grid, generator=gens, progress=progress, **options))
    return torch.stack(rows)
