"""One optimisation step, shared by the training loop, the benchmarks and the classifiers' training.

``optimizer_step``: loss -> backward -> clip -> optimizer -> EMA, for any model and loss.
``train_step``: Algorithm 1 of Ho et al. (2020) on one batch: draw t and eps (and drop labels for
classifier-free guidance), set the learning rate, take the objective's loss, then ``optimizer_step``.
Every draw comes from the state's generator, in a fixed order, so a resumed run replays it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ddpm.config import TrainConfig
from ddpm.training.ema import ema_decay_at, update_ema
from ddpm.training.objective import Objective


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay to lr_min_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.lr_min_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Ho & Salimans (2022) Algorithm 1: each label becomes the "no label" index with probability p_uncond."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
                   ema: nn.Module | None = None, ema_decay: float = 0.0,
                   scaler: torch.amp.GradScaler | None = None, foreach: bool = True) -> None:
    """Backpropagate ``loss``, clip the gradient norm to ``grad_clip`` (0: off), step, then update ``ema``.

    With a ``scaler`` (fp16) the loss is scaled before backward and the gradients unscaled before the
    clip, and a step whose gradients overflowed leaves the weights alone (the scale then shrinks; the
    first few steps of a run do this while the scale falls from 2^16). Such a step still counts: the
    learning-rate and EMA schedules move on and the EMA takes a step towards the unchanged weights."""
    optimizer.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        # One foreach kernel for the norm and one for the scaling (``foreach``: the device has them); no sync.
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=foreach)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    if ema is not None:
        update_ema(ema, model, ema_decay)


@dataclass
class TrainState:
    """What ``train_step`` reads and advances: the weights, their EMA, the optimizer, the objective (loss
    and t sampler), the generator every draw comes from, and the step count."""

    network: Callable  # computes the loss: ``model`` as the runtime options (and DDP) run it
    model: nn.Module  # the weights the optimizer updates
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    objective: Objective
    generator: torch.Generator
    config: TrainConfig
    null_label: int | None = None  # a conditional model's "no label" index
    step: int = 0
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaler (``ddpm.runtime.grad_scaler``)

    def __post_init__(self):
        # Whether the weights' device has foreach kernels for the gradient clip: decided once, not per step.
        self.foreach = next(self.model.parameters()).device.type in ("cpu", "cuda")


def train_step(state: TrainState, x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """One step of Algorithm 1 on the batch ``x0`` (labels ``y`` for a conditional model); returns the loss."""
    tc, gen = state.config, state.generator
    t, weights = state.objective.sample_timesteps(len(x0), gen)
    noise = torch.randn(x0.shape, device=x0.device, generator=gen)
    if y is not None:  # drawn from gen after t and noise, so --resume replays it exactly
        y = drop_labels(y, tc.p_uncond, state.null_label, gen)
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(state.step, tc)
    loss = state.objective.loss(state.network, x0, t, noise, weights, y=y)
    optimizer_step(loss, state.model, state.optimizer, grad_clip=tc.grad_clip, ema=state.ema,
                   ema_decay=ema_decay_at(state.step, tc.ema_decay), scaler=state.scaler, foreach=state.foreach)
    state.step += 1
    return loss.detach()
