"""Supervised training of the classifiers (the clean-image classifier of the evaluation metrics and the
noisy one of classifier guidance): a held-out split and an epoch loop over ``optimizer_step``."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ddpm.errors import UserError
from ddpm.io import progress_bar
from ddpm.training.step import optimizer_step


def split_indices(n: int, held_out: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (train, held-out) split of range(n) drawn from ``generator``."""
    if not 0.0 < held_out < 1.0:
        raise UserError(f"held-out share must be in (0, 1), got {held_out}")
    perm = torch.randperm(n, generator=generator)
    k = max(1, int(round(n * held_out)))
    if k >= n:
        raise UserError(f"a data set of {n} images is too small to hold out {held_out:.0%} of it")
    return perm[k:], perm[:k]


def fit(model: nn.Module, batch_loss: Callable[[torch.Tensor], torch.Tensor], num_train: int, *, epochs: int,
        batch_size: int, lr: float, weight_decay: float, warmup: float, generator: torch.Generator,
        desc: str, progress: bool = True) -> None:
    """Train ``model`` for ``epochs`` passes over ``num_train`` examples in shuffled batches: AdamW with a
    one-cycle learning rate (``warmup`` = share of the steps rising to ``lr``). ``batch_loss(idx)``
    returns the mean loss of the examples at the CPU indices ``idx``; shuffling draws from ``generator``
    before each epoch, then ``batch_loss`` may draw from it too. The loss shown syncs once per epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(num_train / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=warmup)
    model.train()
    bar = progress_bar(range(epochs), desc=desc, unit="epoch", disable=not progress)
    for _ in bar:
        perm = torch.randperm(num_train, generator=generator)
        loss_sum = torch.zeros((), device=next(model.parameters()).device)
        for idx in perm.split(batch_size):
            loss = batch_loss(idx)
            optimizer_step(loss, model, opt)
            sched.step()
            loss_sum += loss.detach()
        bar.set_postfix(loss=f"{loss_sum.item() / steps_per_epoch:.4f}")
