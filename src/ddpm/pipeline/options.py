"""The option objects of a sampling call: what to sample with (``SamplingOptions``) and how to steer it
(``GuidanceOptions``). How the network runs is the run's ``RuntimeConfig`` (``ddpm.config``).

Frozen, typed and checked when built, so a mistake is one line naming the option at fault, before any
network call; their fields (types, ``Literal`` choices, help) are also the CLI's flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ddpm.config import doc
from ddpm.diffusion.likelihood import FIXED_VARIANCES
from ddpm.errors import UserError
from ddpm.sampling import SAMPLERS
from ddpm.sampling.grids import GRIDS

SamplerName = Literal[tuple(SAMPLERS)]
GridName = Literal[GRIDS]
FixedVariance = Literal[FIXED_VARIANCES]


@dataclass(frozen=True)
class SamplingOptions:
    """The sampler and its grid. None means: the sampler's default (grid) or the run's setting (variance,
    clip_x0); ``steps`` None means all T training steps."""

    sampler: SamplerName = doc("ancestral", "; ".join(f"{k}: {s.description}" for k, s in SAMPLERS.items()))
    steps: int | None = doc(None, "network calls per image; the grid starts at T-1 whatever it is", positive=True,
                            none_means="all T")
    grid: GridName | None = doc(None, "timestep spacing for --steps (trailing: T/K apart, from T-1 to T/K-1)",
                                none_means="the sampler's: trailing for ddim, even otherwise")
    eta: float | None = doc(None, "DDIM only: 0 deterministic, 1 = Algorithm 2 with beta-tilde", none_means=0)
    variance: FixedVariance | None = doc(None, "ancestral only: a fixed sigma_t^2 instead of the run's variance",
                                         none_means="the run's")
    clip_x0: bool | None = doc(None, "clip the predicted x0 to [-1, 1]", none_means="the run's setting")

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.grid is not None and self.grid not in GRIDS:
            raise UserError(f"unknown timestep grid {self.grid!r}; choose one of {', '.join(GRIDS)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be positive, got {self.steps}")
        for name in ("eta", "variance"):
            if getattr(self, name) is not None and name not in SAMPLERS[self.sampler].options:
                takes = [k for k, s in SAMPLERS.items() if name in s.options]
                raise UserError(f"{name} applies to sampler {' or '.join(takes)}, not {self.sampler}")
        if self.variance is not None and self.variance not in FIXED_VARIANCES:
            raise UserError(f"variance must be one of {', '.join(FIXED_VARIANCES)}, got {self.variance!r}")
        if self.eta is not None and not 0.0 <= self.eta <= 1.0:
            raise UserError(f"eta must be between 0 and 1, got {self.eta}")

    @property
    def default_grid(self) -> str:
        return self.grid or SAMPLERS[self.sampler].default_grid

    def sampler_kwargs(self, run_variance: str) -> dict[str, Any]:
        """The sampler-specific keyword options: the ancestral variance (default: the run's), DDIM's eta."""
        values = {"variance": self.variance or run_variance, "eta": self.eta}
        return {k: values[k] for k in SAMPLERS[self.sampler].options if values[k] is not None}


@dataclass(frozen=True)
class GuidanceOptions:
    """Classifier-free guidance of strength ``scale`` (w; None: off) of a class-conditional model, and
    classifier guidance of scale ``classifier_scale`` by a noisy ``classifier`` (``ddpm train-classifier
    --noisy``), which also steers an unconditional model (``ddpm.sampling.guidance``)."""

    scale: float | None = doc(None, "classifier-free guidance strength w: eps = (1 + w) eps(x, y) - w eps(x)",
                              flag="guidance", metavar="W", none_means="none")
    classifier: Any = doc(None, "a NoisyClassifier", cli=False)
    classifier_scale: float = doc(0.0, "classifier guidance scale s (given with --classifier)", metavar="S")

    def __post_init__(self):
        if self.scale is not None and self.scale < 0:
            raise UserError(f"guidance must be >= 0, got {self.scale}")
