"""One optimisation step, shared by the training loop, the benchmarks and the classifiers' training.

``optimizer_step``: loss -> backward -> clip -> optimizer -> EMA, for any model and loss.
``train_step``: Algorithm 1 of Ho et al. (2020) on one batch: draw t and eps (and drop labels for
classifier-free guidance), set the learning rate, take the objective's loss, then ``optimizer_step``.
Every draw comes from the state's generator, in a fixed order, so a resumed run replays it exactly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ddpm.config import TrainConfig
from ddpm.errors import UserError
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
                   scaler: torch.amp.GradScaler | None = None, foreach: bool = True) -> bool:
    """Backpropagate ``loss``, clip the gradient norm to ``grad_clip`` (0: off), step, then update ``ema``.

    Returns whether the step was taken. A NaN or infinite loss or gradient norm leaves the weights, the
    optimizer's moments and the EMA alone and returns False: one bad batch (an overflow, a corrupt
    image) must not poison the weights. Telling costs one device sync per step, which the CPU does not
    notice and a GPU pays at the end of the step, after the work was queued.

    With a ``scaler`` (fp16) the loss is scaled before backward and the gradients unscaled before the
    clip, and a step whose gradients overflowed leaves the weights alone (the scale then shrinks; the
    first few steps of a run do this while the scale falls from 2^16). Such a step is the scaler's to
    skip and still counts as taken: the learning-rate and EMA schedules move on and the EMA takes a step
    towards the unchanged weights. Only a non-finite loss is a skipped step there."""
    optimizer.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    finite = torch.isfinite(loss.detach())
    if scaler is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        # One foreach kernel for the norm and, when clipping, one for the scaling (``foreach``: the device has them).
        norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=foreach) if grad_clip > 0
                else torch.nn.utils.get_total_norm(grads, foreach=foreach))
        finite = finite & torch.isfinite(norm)
    elif grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=foreach)
    if not finite.item():
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # shrinks the scale (the unscale found the gradients non-finite)
        return False
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    if ema is not None:
        update_ema(ema, model, ema_decay)
    return True


class NonFiniteError(UserError):
    """Too many steps in a row with a non-finite loss or gradient (``TrainConfig.max_nonfinite_steps``)."""


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
    skipped: int = 0  # steps skipped for a non-finite loss or gradient, over the whole run
    skipped_in_row: int = 0  # of which the latest, in a row (0: the last step was taken)

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
    taken = optimizer_step(loss, state.model, state.optimizer, grad_clip=tc.grad_clip, ema=state.ema,
                           ema_decay=ema_decay_at(state.step, tc.ema_decay), scaler=state.scaler,
                           foreach=state.foreach)
    state.step += 1  # a skipped step still counts: its draws were made, so a resume replays the same run
    state.skipped_in_row = 0 if taken else state.skipped_in_row + 1
    state.skipped += not taken
    if state.skipped_in_row == 1:
        warnings.warn(f"step {state.step}: the loss or gradient is not finite; the step is skipped "
                      f"({state.skipped} so far)", stacklevel=2)
    if state.skipped_in_row >= tc.max_nonfinite_steps:
        raise NonFiniteError(f"the loss or gradient was not finite for {state.skipped_in_row} steps in a row "
                             f"(up to step {state.step}); training stopped without saving them. Lower --lr, "
                             "check the data, or train in --precision fp32")
    return loss.detach()
