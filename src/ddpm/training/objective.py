"""What one training step optimises: the loss named in the config, how t is drawn, and the loss per
quartile of t that Improved DDPM's logs show (Nichol & Dhariwal 2021, §3.3 and Fig. 2).

The loop calls ``sample_timesteps`` and ``loss`` each step, ``log_values`` once per log interval (its
one host sync), and keeps ``state_dict`` in the checkpoint so a resumed run draws the same t.
"""

from __future__ import annotations

import torch

from ddpm.config import LEARNED_VARIANCES, DiffusionConfig
from ddpm.diffusion.likelihood import VARIANCES
from ddpm.diffusion.losses import LOSSES
from ddpm.diffusion.schedule import Schedule
from ddpm.diffusion.timestep_sampler import make_timestep_sampler
from ddpm.errors import UserError


def check_objective(cfg: DiffusionConfig) -> None:
    """One-line errors for variance / loss / sampler combinations that cannot train."""
    if cfg.variance not in VARIANCES:
        raise UserError(f"unknown variance {cfg.variance!r}; choose one of {', '.join(VARIANCES)}")
    if cfg.loss not in LOSSES:
        raise UserError(f"unknown loss {cfg.loss!r}; choose one of {', '.join(LOSSES)}")
    learned = cfg.variance in LEARNED_VARIANCES
    if learned and cfg.loss == "simple":
        raise UserError(f"L_simple does not train a variance; with --variance {cfg.variance} use --loss hybrid or vlb")
    if not learned and cfg.loss == "hybrid":
        raise UserError(f"the hybrid loss adds a VLB term that only trains a learned variance; with --variance "
                        f"{cfg.variance} use --loss simple or vlb, or --variance learned_range")


class QuartileMeter:
    """Per-quartile-of-t means of per-example loss terms, accumulated on the device without syncs."""

    def __init__(self, num_timesteps: int, device):
        self.num_timesteps = num_timesteps
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = torch.zeros(4, device=device)

    @torch.no_grad()
    def add(self, t: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        q = (t * 4) // self.num_timesteps
        # An example whose terms are not finite (a step about to be skipped) is left out, without a sync.
        ok = torch.stack([torch.isfinite(v.detach()) for v in terms.values()]).all(0)
        for k, v in terms.items():
            self.sums.setdefault(k, torch.zeros(4, device=self.device)).index_add_(
                0, q, torch.where(ok, v.detach().float(), 0.0))
        self.count.index_add_(0, q, ok.float())

    def pop(self) -> dict[str, float]:
        """``{"loss_q0": ..., "mse_q3": ...}`` for quartiles that saw an example; then reset."""
        keys = list(self.sums)
        if not keys:
            return {}
        table = torch.stack([self.count, *(self.sums[k] for k in keys)]).tolist()  # CPU-GPU sync point
        count, rows = table[0], table[1:]
        out = {f"{k}_q{q}": row[q] / count[q] for k, row in zip(keys, rows) for q in range(4) if count[q] > 0}
        self.count.zero_()
        for v in self.sums.values():
            v.zero_()
        return out


class Objective:
    def __init__(self, cfg: DiffusionConfig, schedule: Schedule, device):
        check_objective(cfg)
        self.cfg = cfg
        self.schedule = schedule
        self.loss_fn = LOSSES[cfg.loss]
        self.gather = lambda x: x  # concatenates over ranks under torchrun (``ddpm.training.distributed``)
        self.sampler = make_timestep_sampler(cfg.timestep_sampler, schedule.num_timesteps, device)
        self.meter = QuartileMeter(schedule.num_timesteps, device)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, importance weights); uniform t draws exactly what Algorithm 1's ``randint`` draws."""
        return self.sampler.sample(n, generator)

    def loss(self, model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor,
             y: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar to minimise: the importance-weighted mean of the per-example losses."""
        terms = self.loss_fn(model, self.schedule, x0, t, noise, prediction=self.cfg.prediction,
                             variance=self.cfg.variance, y=y)
        if self.cfg.timestep_sampler == "loss_aware":  # under torchrun, from every rank's losses
            t_all, loss_all = self.gather(t), self.gather(terms["loss"].detach())
            ok = torch.isfinite(loss_all)  # a NaN in the history would make every later weight NaN
            self.sampler.update(t_all[ok], loss_all[ok])
        else:
            self.sampler.update(t, terms["loss"])
        shown = {k: v for k, v in terms.items() if not (k == "mse" and self.cfg.loss == "simple")}
        self.meter.add(t, shown)
        return (terms["loss"] * weights).mean()

    def log_values(self) -> dict[str, float]:
        return self.meter.pop()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"timestep_sampler.{k}": v for k, v in self.sampler.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "timestep_sampler."
        self.sampler.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
