"""What every sampler shares: the step it yields, the default grid, and the loop that runs the steps.

Each sampler is written once, as a generator ``X_steps(denoise, x_T, schedule, timesteps, *, generator,
**options)`` that makes one network call per grid point and yields a ``Step`` after it: the timestep,
the x_t the network saw, its prediction (eps, x0) and x after the step. The last ``Step``'s ``x_next``
is the sample. Consumers iterate (trajectory pictures, the web demo, a notebook) or call ``run`` for the
final images; the solver's memory lives in the generator's local variables, so nothing is shared
between calls or threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from ddpm.diffusion.schedule import Schedule
from ddpm.io import progress_bar
from ddpm.sampling.denoiser import Prediction
from ddpm.sampling.grids import timestep_grid


@dataclass(frozen=True)
class Step:
    """One network call of a sampler: call ``i`` at timestep ``t`` saw ``x_t`` and predicted ``pred``;
    ``x_next`` is x after the step (the sample, after the last call)."""

    i: int
    t: int
    x_t: torch.Tensor
    pred: Prediction
    x_next: torch.Tensor

    @property
    def x0(self) -> torch.Tensor:
        """The predicted clean image at this step."""
        return self.pred.x0


def grid_or_full(schedule: Schedule, timesteps: Sequence[int] | None) -> list[int]:
    """``timesteps`` as a list, or all T training steps from T-1 down to 0 when it is None."""
    return timestep_grid(schedule.num_timesteps) if timesteps is None else list(timesteps)


def run(steps: Callable[..., Iterator[Step]], denoise, x_T: torch.Tensor, schedule: Schedule,
        timesteps: Sequence[int] | None = None, *, callback: Callable | None = None, progress: bool = True,
        desc: str = "sampling", **options) -> torch.Tensor:
    """Run the sampler ``steps`` to the end and return the sample; ``callback(step)`` sees every ``Step``."""
    grid = grid_or_full(schedule, timesteps)
    x = x_T
    for step in progress_bar(steps(denoise, x_T, schedule, grid, **options), total=len(grid), desc=desc,
                     disable=not progress, leave=False):
        if callback is not None:
            callback(step)
        x = step.x_next
    return x
