"""Exponential moving average of the weights; the EMA model is the one that samples."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


def ema_decay_of(cfg) -> float:
    """The per-step decay: ``ema_decay``, or the one whose half-life is ``ema_half_life_images`` images of
    ``batch_size`` (the global batch) each, so the average spans the same images on any number of GPUs."""
    if cfg.ema_half_life_images is None:
        return cfg.ema_decay
    return 0.5 ** (cfg.batch_size / cfg.ema_half_life_images)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up so early averages are not dominated by the random initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, with one foreach kernel over all tensors."""
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
