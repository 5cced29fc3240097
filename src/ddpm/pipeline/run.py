"""``Run``: a model, its config and its schedule, and the one place a sampling call is put together.

    >>> run = load_run("runs/digits")
    >>> images = run.sample(16, generator=torch.Generator().manual_seed(0))      # (16, C, H, W) in [-1, 1]
    >>> for step in run.steps(4, sampling=SamplingOptions("ddim", steps=50)):    # t, x_t, x0 at every call
    ...     show(step.t, step.x0)

``Run.steps`` composes, once per call: the runtime options (the run's ``RuntimeConfig`` or the one
given) wrap the network (``ddpm.runtime``); a ``Denoiser`` turns its output into (eps, x0); guidance
wraps the denoiser; the registry entry of ``SamplingOptions.sampler`` walks the grid. ``Run.sample``
is the same iterator run to its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ddpm import runtime as rt
from ddpm.checkpoint import load_ema
from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, RuntimeConfig, update
from ddpm.diffusion.schedule import Schedule, make_schedule
from ddpm.errors import UserError
from ddpm.io import progress_bar, resolve_device, same_device
from ddpm.models.unet import UNet
from ddpm.pipeline.latent import (
    AUTOENCODER_DIR,
    decode_latents,
    image_shape,
    is_text,
    run_autoencoder,
    text_condition,
)
from ddpm.pipeline.options import GuidanceOptions, SamplingOptions
from ddpm.sampling import SAMPLERS, Step
from ddpm.sampling.denoiser import Denoiser
from ddpm.sampling.grids import timestep_grid
from ddpm.sampling.guidance import as_labels, check_labels, guide
from ddpm.sampling.noise import Generators, randn


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    return make_schedule(cfg.schedule, cfg.timesteps)


def build_model(cfg: ModelConfig) -> UNet:
    return UNet(cfg)


@dataclass
class Run:
    """A trained run: its config, its EMA model (the sampling model) and its schedule.

    ``Run.of(model, cfg)`` wraps a model that is not saved yet (the training loop's previews do).
    """

    config: RunConfig
    model: nn.Module
    schedule: Schedule
    step: int = 0
    path: Path | None = None
    # A latent run's autoencoder (``ddpm.models.autoencoder.FirstStage``): samplers draw latents, and
    # ``sample`` returns them decoded.
    first_stage: Any = None

    @classmethod
    def of(cls, model: nn.Module, cfg: RunConfig, first_stage=None) -> "Run":
        return cls(cfg, model, build_schedule(cfg.diffusion), first_stage=first_stage)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) of what the samplers draw: an image, or a latent run's latent."""
        return (self.config.model.in_channels, *self.config.model.image_size)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image ``sample`` returns (decoded, for a latent run)."""
        if self.first_stage is None:
            return self.shape
        return image_shape(self.first_stage)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from what the samplers drew: a latent run's latents decoded, else ``x`` itself."""
        return x if self.first_stage is None else decode_latents(self.first_stage, x)

    def runtime(self, runtime: RuntimeConfig | dict | None = None) -> RuntimeConfig:
        """The runtime options of a sampling call: ``runtime`` as given, or the run's own section with the
        fields of a dict (``{"precision": "fp32"}``) replaced. Sampling runs where the model is
        (``load_run(path, device)`` puts it there), so the run's saved device is not binding."""
        if isinstance(runtime, RuntimeConfig):
            return runtime
        return update(self.config.runtime, {"device": "auto", **(runtime or {})}, "runtime")

    def network(self, runtime: RuntimeConfig | dict | None = None) -> rt.ModelRunner:
        """The model as ``runtime`` (see ``Run.runtime``) runs it (a compiled model is cached, so later batches
        reuse it); a runtime asking for another device than the model's is a mistake, not a silent move."""
        r = self.runtime(runtime)
        if r.device != "auto" and not same_device(resolve_device(r.device), self.device):
            raise UserError(f"the model is on {self.device}, the runtime asks for {r.device}; load the run there "
                            f"(load_run(path, {r.device!r}) or --device {r.device})")
        rt.configure_cpu_allocator(r.cpu_allocator, self.device)
        return rt.runner(self.model, rt.resolve(self.device, precision=r.precision, memory_format=r.memory_format,
                                                compile=r.compile, sampling=True))

    def denoiser(self, *, clip_x0: bool | None = None, y: torch.Tensor | None = None,
                 runtime: RuntimeConfig | dict | None = None) -> Denoiser:
        """The unguided denoiser of this run (``clip_x0`` None: the run's setting)."""
        d = self.config.diffusion
        return Denoiser(self.network(runtime), self.schedule, d.prediction, clip_x0=d.clip_x0 if clip_x0 is None
                        else clip_x0, y=y if self.conditional else None, variance=d.variance)

    @property
    def conditional(self) -> bool:
        """Whether the network takes a condition: class labels or text."""
        return bool(self.config.model.num_classes) or is_text(self.config.model)

    def grid(self, sampling: SamplingOptions = SamplingOptions()) -> list[int]:
        """The descending timesteps ``sampling`` walks: its steps, spaced by its grid, from T-1."""
        return timestep_grid(self.schedule.num_timesteps, sampling.steps, sampling.default_grid, schedule=self.schedule)

    def steps(self, n: int, *, generator: Generators = None, sampling: SamplingOptions = SamplingOptions(),
              guidance: GuidanceOptions = GuidanceOptions(), runtime: RuntimeConfig | dict | None = None, y=None,
              x_T: torch.Tensor | None = None, timesteps: Sequence[int] | None = None) -> "Steps":
        """Sample ``n`` images step by step: one ``Step`` (t, x_t, predicted x0, x after the step) per network
        call; the last step's ``x_next`` is the sample, (n, C, H, W) in [-1, 1]. Mistakes in the options are
        reported here, before any network call.

        ``y`` (an int or (n,) labels) picks the classes of a conditional model or of classifier guidance;
        for a text model it is a prompt, n prompts, or (n, L) token ids.
        ``x_T`` (default: noise from ``generator``, one generator per image for per-seed images) and
        ``timesteps`` (default: the grid of ``sampling``) let a caller start elsewhere: from a mix of
        noises, or from a diffused image with the grid cut to start at its t (Ho et al. §4.3).
        """
        cfg, device = self.config, self.device
        classifier = guidance.classifier
        if is_text(cfg.model):
            y = text_condition(cfg.model, y, n, device)
            if guidance.scale is not None and y is None:
                raise UserError("classifier-free guidance needs a prompt to guide towards (--prompt)")
        else:
            y = as_labels(y, n, device)
            check_labels(cfg.model.num_classes, y, guidance=guidance.scale,
                         classifier_classes=None if classifier is None else classifier.config.num_classes)
        timesteps = self.grid(sampling) if timesteps is None else list(timesteps)
        kwargs = sampling.sampler_kwargs(cfg.diffusion.variance)
        denoise = guide(self.denoiser(clip_x0=sampling.clip_x0, y=y, runtime=runtime), y=y, guidance=guidance.scale,
                        classifier=None if classifier is None else classifier.to(device),
                        classifier_scale=guidance.classifier_scale, sampler=sampling.sampler, timesteps=timesteps,
                        variance=kwargs.get("variance", cfg.diffusion.variance))
        x_T = randn((n, *self.shape), generator, device) if x_T is None else x_T.to(device)
        steps = SAMPLERS[sampling.sampler].steps(denoise, x_T, self.schedule, timesteps, generator=generator, **kwargs)
        return Steps(self._in_eval_mode(steps), len(timesteps), sampling.sampler)

    def _in_eval_mode(self, steps: Iterator[Step]) -> Iterator[Step]:
        """``steps`` with the model in eval mode (dropout off) while they run, its own mode restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield from steps
        finally:
            self.model.train(was_training)

    def sample(self, n: int, *, generator: Generators = None, progress: bool = True,
               callback: Callable[[Step], object] | None = None, **options) -> torch.Tensor:
        """``n`` samples (n, C, H, W) in [-1, 1]: ``steps(n, **options)`` run to the end behind a progress bar,
        decoded for a latent run; ``callback(step)`` sees every ``Step`` (latents, for a latent run)."""
        steps = self.steps(n, generator=generator, **options)
        x = None
        try:
            for step in progress_bar(steps, desc=steps.desc, disable=not progress, leave=False):
                if callback is not None:
                    callback(step)
                x = step.x_next
        finally:
            steps.close()  # the model's own mode back, also when a callback raises
        return self.decode(x)


class Steps:
    """The steps of one sampling call: an iterator of ``Step`` whose ``len`` is the number of network calls."""

    def __init__(self, steps: Iterator[Step], total: int, desc: str):
        self._steps, self.total, self.desc = steps, total, desc

    def __iter__(self) -> Iterator[Step]:
        return self

    def __next__(self) -> Step:
        return next(self._steps)

    def __len__(self) -> int:
        return self.total

    def close(self) -> None:
        """Stop early: the model gets its own mode back."""
        self._steps.close()


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load the EMA model of a run folder (or its ema.safetensors); the config comes from the file."""
    cfg, state, step = load_ema(path)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"weights in {path} do not match their config: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    first_stage = None
    if cfg.train.autoencoder or (folder / AUTOENCODER_DIR).is_dir():
        first_stage = run_autoencoder(folder, device)
    return Run(cfg, model, build_schedule(cfg.diffusion), step, Path(path), first_stage)
