"""Typed configuration: the model, the diffusion and the training run, saved as JSON in every checkpoint.

A run is fully described by a ``RunConfig``; loading a checkpoint needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from ddpm.errors import UserError


@dataclass
class ModelConfig:
    """The U-Net noise predictor. It knows image shapes and channels, never the diffusion."""

    image_size: tuple[int, int] = (8, 8)
    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4,)
    num_heads: int = 4
    dropout: float = 0.1
    resblock_conditioning: str = "scale_shift"  # "scale_shift" (AdaGN) | "additive" (Ho et al.)
    norm_groups: int = 32
    num_classes: int | None = None  # class-conditional when set; index num_classes means "no label"


@dataclass
class DiffusionConfig:
    schedule: str = "linear"  # "linear" | "cosine"
    timesteps: int = 1000
    prediction: str = "eps"  # "eps" | "x0" | "v"
    # Reverse-process variance: fixed "beta" | "beta_tilde" (Ho et al.), or output by the network:
    # "learned" (a log-variance) | "learned_range" (Improved DDPM Eq. 15); see ``derive``.
    variance: str = "beta"
    loss: str = "simple"  # "simple" (Ho et al. Eq. 14) | "hybrid" (Improved DDPM Eq. 16) | "vlb"
    timestep_sampler: str = "uniform"  # "uniform" | "loss_aware" (Improved DDPM §3.3; "vlb" implies it)
    clip_x0: bool = True  # clip the predicted x0 to [-1, 1] when sampling images (off for latents)


@dataclass
class TrainConfig:
    data: str = "digits"
    data_dir: str | None = None
    skip_bad_images: bool = False  # leave unreadable images out (with a warning) instead of stopping
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_decay: str = "cosine"  # "constant" | "cosine" (to lr_min_ratio * lr at the last step)
    lr_min_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    num_sample_images: int = 64
    # Class-conditional models (model.num_classes set): the share of labels replaced by the "no label"
    # index each step, so one network also learns eps(x_t, none) for classifier-free guidance
    # (Ho & Salimans 2022, Algorithm 1: p_uncond = 0.1 or 0.2).
    p_uncond: float = 0.1
    # Speed options (``ddpm.performance``; "auto" picks per device what measured fastest there):
    precision: str = "auto"  # "auto" | "fp32" | "bf16" (autocast, fp32 master weights and loss)
    memory_format: str = "auto"  # "auto" | "contiguous" | "channels_last"
    compile: str = "auto"  # "auto" | "none" | "default" | "reduce-overhead" | "max-autotune" (torch.compile)
    adamw_impl: str = "auto"  # "auto" | "fused" | "foreach" | "for-loop"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "digits"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return _build(cls, d, "config")


LEARNED_VARIANCES = ("learned", "learned_range")
# The speed options' names (TrainConfig fields; chosen per device in ``ddpm.performance``).
PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
COMPILE_MODES = ("auto", "none", "default", "reduce-overhead", "max-autotune")
ADAMW_IMPLS = ("auto", "fused", "foreach", "for-loop")


def derive(cfg: RunConfig) -> RunConfig:
    """Set the fields that follow from others, in place; the one place they are derived.

    A learned variance doubles the network's output channels (mean prediction, then variance
    output), so the network itself never knows; the "vlb" loss samples t loss-aware (Improved DDPM
    §3.3: uniform t makes L_vlb too noisy to optimise).
    """
    learned = cfg.diffusion.variance in LEARNED_VARIANCES
    cfg.model.out_channels = cfg.model.in_channels * (2 if learned else 1)
    if cfg.diffusion.loss == "vlb":
        cfg.diffusion.timestep_sampler = "loss_aware"
    return cfg


def _build(cls, d: dict[str, Any], where: str):
    """Construct a (nested) dataclass from a dict, rejecting unknown keys with a clear message."""
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a table/object, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise UserError(f"unknown {where} key(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def update(obj, values: dict[str, Any], where: str):
    """A copy of dataclass ``obj`` with ``values`` replaced (same checks as ``from_dict``)."""
    merged = {**dataclasses.asdict(obj), **values}
    return _build(type(obj), merged, where)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file with sections [model], [diffusion], [train] (all optional)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        text = p.read_text()
        return tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot parse config file {p}: {e}") from None
