"""One optimisation step, shared by the training loop, the benchmarks and the classifiers' training.

``optimizer_step``: loss -> backward -> clip -> optimizer -> EMA, for any model and loss.
``train_step``: Algorithm 1 of Ho et al. (2020) on one batch: draw t and eps (and drop labels for
classifier-free guidance), set the learning rate, take the objective's loss, then ``optimizer_step``.
Every draw comes from the state's generator, in a fixed order, so a resumed run replays it exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from ddpm.config import TrainConfig
from ddpm.errors import UserError
from ddpm.training.ema import ema_decay_at, ema_decay_of, update_ema
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


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int | torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """Ho & Salimans (2022) Algorithm 1: each label becomes the "no label" index with probability p_uncond.

    For a text model ``y`` holds (N, L) token ids and ``null_label`` the (L,) tokens of the empty caption:
    each caption becomes the empty one with probability p_uncond (LDM's caption dropout)."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape[:1], device=y.device, generator=generator) < p_uncond
    if isinstance(null_label, torch.Tensor):
        return torch.where(drop[:, None], null_label.to(y.device).expand_as(y), y)
    return torch.where(drop, torch.full_like(y, null_label), y)


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
                   ema: nn.Module | None = None, ema_decay: float = 0.0,
                   scaler: torch.amp.GradScaler | None = None, foreach: bool = True) -> bool:
    """Backpropagate ``loss``, clip the gradient norm to ``grad_clip`` (0: off), step, then update ``ema``;
    returns whether the step was taken (``apply_gradients``)."""
    optimizer.zero_grad(set_to_none=True)
    backward(loss, scaler)
    return apply_gradients(model, optimizer, torch.isfinite(loss.detach()), grad_clip=grad_clip, ema=ema,
                           ema_decay=ema_decay, scaler=scaler, foreach=foreach)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> None:
    """Add the gradients of ``loss`` (scaled by fp16's ``scaler``) to the parameters' ``.grad``."""
    (loss if scaler is None else scaler.scale(loss)).backward()


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' global L2 norm, without a sync (``torch.nn.utils.get_total_norm`` needs torch 2.6)."""
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def apply_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, loss_finite: torch.Tensor, *,
                    grad_clip: float = 0.0, ema: nn.Module | None = None, ema_decay: float = 0.0,
                    scaler: torch.amp.GradScaler | None = None, foreach: bool = True) -> bool:
    """Clip the accumulated gradients to norm ``grad_clip`` (0: off), step, then update ``ema``; returns
    whether the step was taken.

    A NaN or infinite loss (``loss_finite`` False) or gradient norm leaves the weights, the optimizer's
    moments and the EMA alone and returns False: one bad batch (an overflow, a corrupt image) must not
    poison the weights. Telling costs one device sync per step, which the CPU does not notice and a GPU
    pays at the end of the step, after the work was queued.

    With a ``scaler`` (fp16) the gradients are unscaled before the clip, and a step whose gradients
    overflowed leaves the weights alone (the scale then shrinks; the first few steps of a run do this
    while the scale falls from 2^16). Such a step is the scaler's to skip and still counts as taken: the
    learning-rate and EMA schedules move on and the EMA takes a step towards the unchanged weights. Only
    a non-finite loss is a skipped step there."""
    finite = loss_finite
    if scaler is not None:
        scaler.unscale_(optimizer)
    if scaler is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        # One foreach kernel for the norm and, when clipping, one for the scaling (``foreach``: the device has them).
        norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=foreach) if grad_clip > 0
                else _total_norm(grads))
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
    null_label: int | torch.Tensor | None = None  # a conditional model's "no label" index, or the empty caption
    step: int = 0
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaler (``ddpm.runtime.grad_scaler``)
    skipped: int = 0  # steps skipped for a non-finite loss or gradient, over the whole run
    skipped_in_row: int = 0  # of which the latest, in a row (0: the last step was taken)
    rank: int = 0  # this process's rank under torchrun: its draws differ from every other rank's
    no_sync: Callable[[], ContextManager] = contextlib.nullcontext  # DDP's: no all-reduce on accumulation rounds
    # Under torchrun, True on every rank only if it is on all (so all ranks skip the same steps).
    all_ranks: Callable[[torch.Tensor], torch.Tensor] = lambda flag: flag

    def __post_init__(self):
        # Whether the weights' device has foreach kernels for the gradient clip: decided once, not per step.
        self.foreach = next(self.model.parameters()).device.type in ("cpu", "cuda")


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """The seed of one stream of draws of one step of one rank: a hash of (run seed, step, rank, stream)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_step(state: TrainState) -> None:
    """Seed the state's generator (batch, t, noise, label dropout) and torch's global one (dropout) for the
    step about to run. Every draw of a step thus depends only on (seed, step, rank): a resumed run, on any
    number of ranks, replays each step exactly without saved generator states, and ranks never draw alike."""
    seed = state.config.seed
    state.generator.manual_seed(step_seed(seed, state.step, state.rank, 0))
    torch.manual_seed(step_seed(seed, state.step, state.rank, 1))


def micro_batches(n: int, size: int | None) -> list[slice]:
    """``n`` images in rounds of at most ``size`` (None: one round)."""
    size = size or n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def accumulate_gradients(state: TrainState, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                         weights: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Add the gradient of the batch's loss to ``.grad`` in rounds of ``micro_batch_size`` (each weighted by
    its share of the batch) and return the loss; under DDP only the last round all-reduces."""
    rounds = micro_batches(len(x0), state.config.micro_batch_size)
    loss = torch.zeros((), device=x0.device)
    for i, r in enumerate(rounds):
        with state.no_sync() if i < len(rounds) - 1 else contextlib.nullcontext():
            part = state.objective.loss(state.network, x0[r], t[r], noise[r], weights[r],
                                        y=None if y is None else y[r])
            if len(rounds) > 1:
                part = part * ((r.stop - r.start) / len(x0))
            backward(part, state.scaler)
        loss += part.detach()
    return loss


def train_step(state: TrainState, x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """One step of Algorithm 1 on the batch ``x0`` (labels ``y`` for a conditional model); returns the loss.

    t, the noise and the label dropout are drawn for the whole batch first; with ``micro_batch_size`` the
    batch then runs in rounds whose gradients add up (weighted by their share of the batch) before one
    optimizer step, so the step does not depend on the round size; under DDP only the last round
    all-reduces."""
    tc, gen = state.config, state.generator
    t, weights = state.objective.sample_timesteps(len(x0), gen)
    noise = torch.randn(x0.shape, device=x0.device, generator=gen)
    if y is not None:  # drawn from gen after t and noise, so --resume replays it exactly
        y = drop_labels(y, tc.p_uncond, state.null_label, gen)
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(state.step, tc)
    state.optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(state, x0, t, noise, weights, y)
    finite = state.all_ranks(torch.isfinite(loss))
    taken = apply_gradients(state.model, state.optimizer, finite, grad_clip=tc.grad_clip, ema=state.ema,
                            ema_decay=ema_decay_at(state.step, ema_decay_of(tc)), scaler=state.scaler,
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
    return loss
