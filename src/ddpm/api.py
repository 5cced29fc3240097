"""The Python API: build a model and schedule from a config, load a run, sample from it.

    >>> from ddpm import make_schedule, load_run
    >>> schedule = make_schedule("linear", 1000)
    >>> run = load_run("runs/digits")
    >>> images = run.sample(16, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm import performance as perf
from ddpm.config import DiffusionConfig, ModelConfig, RunConfig
from ddpm.diffusion.schedule import Schedule, make_schedule
from ddpm.errors import UserError
from ddpm.models.unet import UNet
from ddpm.sampling.denoiser import Denoiser
from ddpm.sampling.grids import timestep_grid
from ddpm.sampling.noise import Generators, randn


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    return make_schedule(cfg.schedule, cfg.timesteps)


def build_model(cfg: ModelConfig) -> UNet:
    return UNet(cfg)


def make_denoiser(model, cfg: RunConfig, schedule: Schedule | None = None, *, clip_x0: bool | None = None, y=None):
    schedule = schedule or build_schedule(cfg.diffusion)
    clip = cfg.diffusion.clip_x0 if clip_x0 is None else clip_x0
    return Denoiser(model, schedule, cfg.diffusion.prediction, clip_x0=clip, y=y, variance=cfg.diffusion.variance)


def sample_images(model, cfg: RunConfig, n: int, *, generator: Generators = None, device=None,
                  sampler: str = "ancestral", steps: int | None = None, variance: str | None = None,
                  grid: str | None = None, progress: bool = True, y=None, x_T: torch.Tensor | None = None,
                  timesteps: list[int] | None = None, guidance: float | None = None, classifier=None,
                  classifier_scale: float = 0.0, precision: str | None = None, memory_format: str | None = None,
                  compile: str | None = None, **options) -> torch.Tensor:
    """n samples from ``model`` as (n, C, H, W) in [-1, 1].

    ``y`` (an int or (n,) labels) picks the classes of a conditional model; ``guidance`` is the strength w
    of classifier-free guidance and ``classifier`` (a ``NoisyClassifier``) with ``classifier_scale`` adds
    classifier guidance (``ddpm.sampling.guidance``; an unconditional model can be steered this way).

    ``x_T`` (default: noise from ``generator``) and ``timesteps`` (default: the grid above) let a
    caller start elsewhere: from a mix of noises, or from a diffused image at step t with the grid
    cut to start at t (Ho et al. §4.3 interpolation).

    ``sampler`` names one of ``ddpm.sampling.SAMPLERS`` (default: Algorithm 2); ``steps`` picks a
    sub-grid of the T training steps (all of them by default), spaced by ``grid`` (``"even"``,
    ``"trailing"``, ``"quadratic"`` or ``"logsnr"``; default: ``ddpm.sampling.DEFAULT_GRIDS[sampler]``).

    ``precision``, ``memory_format`` and ``compile`` are the speed options of ``ddpm.performance``
    (default: the run's ``cfg.train`` settings, whose "auto" is the device's default; bf16 runs only the
    network under autocast, the sampler's arithmetic stays float32). channels_last converts ``model``'s
    weights in place; a compiled model is cached, so calls for further batches reuse it.
    """
    from ddpm.sampling import DEFAULT_GRIDS, SAMPLERS
    from ddpm.sampling.guidance import as_labels, check_labels, guide

    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    device = device or next(model.parameters()).device
    precision = perf.resolve_precision(precision or cfg.train.precision, device)
    memory_format = perf.resolve_memory_format(memory_format or cfg.train.memory_format, device)
    compile = perf.resolve_compile(compile or cfg.train.compile, device, sampling=True)
    y = as_labels(y, n, device)
    check_labels(cfg.model.num_classes, y, guidance=guidance,
                 classifier_classes=None if classifier is None else classifier.config.num_classes)
    schedule = build_schedule(cfg.diffusion)
    if sampler == "ancestral":
        options["variance"] = variance or cfg.diffusion.variance
    was_training = model.training
    model.eval()
    shape = (n, cfg.model.in_channels, *cfg.model.image_size)
    x_T = randn(shape, generator, device) if x_T is None else x_T.to(device)
    if timesteps is None:
        timesteps = timestep_grid(schedule.num_timesteps, steps, grid or DEFAULT_GRIDS.get(sampler, "even"),
                                  schedule=schedule)
    net = perf.Network(perf.to_memory_format(model, memory_format), precision=precision,
                       memory_format=memory_format, compile=compile)
    denoise = make_denoiser(net, cfg, schedule, y=y if cfg.model.num_classes else None)
    denoise = guide(denoise, y=y, guidance=guidance, classifier=None if classifier is None else classifier.to(device),
                    classifier_scale=classifier_scale, sampler=sampler, timesteps=timesteps,
                    variance=options.get("variance", cfg.diffusion.variance))
    x = SAMPLERS[sampler](denoise, x_T, schedule, timesteps, generator=generator, progress=progress, **options)
    model.train(was_training)
    return x


@dataclass
class Run:
    """A trained run: its config, its EMA model (the sampling model) and its schedule."""

    config: RunConfig
    model: UNet
    schedule: Schedule
    step: int
    path: Path

    def sample(self, n: int, *, generator: Generators = None, **kwargs) -> torch.Tensor:
        return sample_images(self.model, self.config, n, generator=generator, **kwargs)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load the EMA model of a run folder (or its ema.safetensors); the config comes from the file."""
    from ddpm.training.checkpoint import load_ema

    cfg, state, step = load_ema(path)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"weights in {path} do not match their config: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return Run(cfg, model, build_schedule(cfg.diffusion), step, Path(path))
