"""Variance schedules and the float64 tables derived from them.

Timestep convention (the one place it is written down)
-------------------------------------------------------
Timesteps are **0-based indices** ``t in {0, ..., T-1}``. Index ``t`` is the paper's step ``t + 1``:
``betas[0]`` is Ho et al.'s beta_1 and ``betas[T-1]`` is beta_T. ``alphas_cumprod[t]`` is
alpha-bar_{t+1}, so ``q_sample(x0, t=0)`` adds one step of noise and ``t = T-1`` nearly pure noise.
``alphas_cumprod_prev[t]`` is alpha-bar of the step before (``1`` at ``t = 0``, i.e. alpha-bar_0 = 1).
Networks receive this same 0-based index. Every sampler's grid starts at ``T-1`` and ends at ``0``;
the step at ``t = 0`` returns the model's mean without noise (Algorithm 2's ``z = 0`` at ``t = 1``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from ddpm.errors import UserError

SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020) §4: betas rising linearly from 1e-4 to 0.02 (for T = 1000).

    For T other than 1000 the end points are rescaled by 1000 / T, as Improved DDPM does, so that the
    total amount of noise (and alpha-bar_T ~ 0) stays the same; for very small T (< 20) the betas are
    clipped at 0.999 as the cosine schedule's are.
    """
    scale = 1000.0 / num_timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_alphas_cumprod(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021) Eq. 17: alpha-bar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s) / (1 + s) * pi/2).

    ``t`` holds fractions t/T in [0, 1].
    """
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f / f0


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) §3.2: beta_t = 1 - alpha-bar_t / alpha-bar_{t-1}, clipped at 0.999."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = cosine_alphas_cumprod(steps, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def make_betas(name: str, num_timesteps: int) -> torch.Tensor:
    if num_timesteps < 1:
        raise UserError(f"timesteps must be positive, got {num_timesteps}")
    if name == "linear":
        return linear_betas(num_timesteps)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    raise UserError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class Schedule:
    """All per-timestep tables of a diffusion, in float64, with the papers' names.

    Built from betas alone (``Schedule.from_betas``), so a respaced or custom schedule gets the
    same tables. See the module docstring for the 0-based timestep convention.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "Schedule":
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise UserError("betas must be a 1-D sequence of values in (0, 1]")
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        # Ho et al. Eq. 7: beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t.
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta-tilde is 0 at the first step; its log is clipped to the next value (improved-diffusion).
        log_src = torch.cat([post_var[1:2], post_var[1:]]) if len(betas) > 1 else betas
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=abar.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - abar).sqrt(),
            sqrt_recip_alphas_cumprod=abar.rsqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / abar - 1.0).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=log_src.log(),
            # Ho et al. Eq. 7: mu-tilde_t = coef1 * x0 + coef2 * x_t.
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        )

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def to(self, device: torch.device | str) -> "Schedule":
        """The same tables (still float64) on ``device``, so lookups in a hot loop copy nothing."""
        return Schedule(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    @functools.cached_property
    def host(self) -> "HostTables":
        """The tables samplers read once per step, as Python floats: no device work, no host-device sync."""
        return HostTables(self.alphas_cumprod.tolist(), self.sqrt_alphas_cumprod.tolist(),
                          self.sqrt_one_minus_alphas_cumprod.tolist())

    def log_snr(self) -> torch.Tensor:
        """log(alpha-bar_t / (1 - alpha-bar_t)), the log signal-to-noise ratio."""
        return self.alphas_cumprod.log() - (1.0 - self.alphas_cumprod).log()


@dataclass(frozen=True)
class HostTables:
    """``Schedule.host``: alpha-bar_t, sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t) as lists of floats."""

    alphas_cumprod: list[float]
    sqrt_alphas_cumprod: list[float]
    sqrt_one_minus_alphas_cumprod: list[float]


def make_schedule(name: str = "linear", num_timesteps: int = 1000) -> Schedule:
    """A schedule by name (``"linear"`` or ``"cosine"``) and number of steps T."""
    return Schedule.from_betas(make_betas(name, num_timesteps))


def extract(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` as float32 on t's device, shaped (N, 1, ..., 1) to broadcast over an ndim-D batch."""
    out = table.to(device=t.device)[t].to(torch.float32)
    return out.reshape(out.shape + (1,) * (ndim - 1))
