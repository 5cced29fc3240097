"""How training draws t: uniformly (Ho et al. Algorithm 1) or by loss-aware importance sampling
(Nichol & Dhariwal 2021, §3.3).

``sample(n, generator) -> (t, weights)`` with ``E[weights * L_t] = (1/T) sum_t L_t``, so a weighted
mean of per-example losses is unbiased for every sampler. The loss-aware sampler keeps its history on
the training device and updates it without a host-device sync; ``state_dict`` holds everything an
exact ``--resume`` needs.
"""

from __future__ import annotations

import torch

from ddpm.errors import UserError

TIMESTEP_SAMPLERS = ("uniform", "loss_aware")


class UniformSampler:
    """t ~ Uniform({0..T-1}) with unit weights: Ho et al. Algorithm 1."""

    def __init__(self, num_timesteps: int, device="cpu"):
        self.num_timesteps = num_timesteps
        self.device = torch.device(device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_timesteps, (n,), device=self.device, generator=generator)
        return t, torch.ones(n, device=self.device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class LossAwareSampler:
    """p_t proportional to sqrt(E[L_t^2]) over the last ``history`` values of each L_t (Improved DDPM §3.3).

    Uniform until every t has ``history`` values. A ``uniform_prob`` share of uniform probability is
    mixed in (as improved-diffusion does) so no p_t is 0 and no weight 1 / (T p_t) explodes.
    """

    def __init__(self, num_timesteps: int, device="cpu", *, history: int = 10, uniform_prob: float = 1e-3):
        self.num_timesteps = num_timesteps
        self.device = torch.device(device)
        self.history_len = history
        self.uniform_prob = uniform_prob
        # One spare column takes the writes that a later value of the same t in a batch overwrites,
        # so the scatter in ``update`` never writes one cell twice (and needs no boolean indexing).
        self._history = torch.zeros(num_timesteps, history + 1, device=self.device)
        self.seen = torch.zeros(num_timesteps, dtype=torch.long, device=self.device)

    @property
    def history(self) -> torch.Tensor:
        """(T, history) ring buffer of the latest losses per t (slot order is not time order)."""
        return self._history[:, : self.history_len]

    def probabilities(self) -> torch.Tensor:
        """(T,) sampling probabilities, on the device (no host sync)."""
        T = self.num_timesteps
        w = self.history.pow(2).mean(dim=1).sqrt()
        p = w / w.sum().clamp(min=torch.finfo(w.dtype).tiny)
        p = p * (1.0 - self.uniform_prob) + self.uniform_prob / T
        full = (self.seen >= self.history_len).all()
        return torch.where(full, p, torch.full_like(p, 1.0 / T))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.probabilities()
        # Inverse-CDF draw: unlike torch.multinomial it validates nothing on the host, so no sync.
        u = torch.rand(n, device=self.device, generator=generator, dtype=p.dtype)
        t = torch.searchsorted(p.cumsum(0), u, right=True).clamp(max=self.num_timesteps - 1)
        return t, 1.0 / (self.num_timesteps * p[t])

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each example's loss to its t's history, in batch order (later ones win)."""
        H, T = self.history_len, self.num_timesteps
        t = t.to(self.device)
        order = torch.argsort(t, stable=True)
        ts, ls = t[order], losses.detach().to(self._history.dtype)[order]
        counts = torch.zeros(T, dtype=torch.long, device=self.device).index_add_(0, ts, torch.ones_like(ts))
        starts = counts.cumsum(0) - counts
        rank = torch.arange(len(ts), device=self.device) - starts[ts]  # position within its t's group
        slot = (self.seen[ts] + rank) % H
        slot = torch.where(rank >= counts[ts] - H, slot, H)  # all but the group's last H go to the spare
        self._history.index_put_((ts, slot), ls)
        self.seen += counts

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"history": self.history.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:  # a checkpoint from before the sampler existed: start afresh
            return
        if tuple(state["history"].shape) != (self.num_timesteps, self.history_len):
            raise UserError(f"loss-aware sampler state of shape {tuple(state['history'].shape)} does not fit "
                            f"T={self.num_timesteps} with a history of {self.history_len}")
        self._history[:, : self.history_len] = state["history"].to(self.device)
        self.seen.copy_(state["seen"].to(self.device))


def make_timestep_sampler(name: str, num_timesteps: int, device="cpu"):
    if name == "uniform":
        return UniformSampler(num_timesteps, device)
    if name == "loss_aware":
        return LossAwareSampler(num_timesteps, device)
    raise UserError(f"unknown timestep sampler {name!r}; choose one of {', '.join(TIMESTEP_SAMPLERS)}")
