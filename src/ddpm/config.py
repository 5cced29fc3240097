"""Typed configuration: the model, the diffusion, the training run and the runtime, saved as JSON in every
checkpoint.

A run is fully described by a ``RunConfig``; loading a checkpoint needs nothing else. The classes have
slots, so a misspelt or retired field (``cfg.train.precision``, now ``cfg.runtime.precision``) is an
AttributeError, not a value silently lost. Each field carries
its help text, and named options are ``Literal`` types, so the CLI derives its flags and choices from
these classes (``ddpm.cli._common.add_config_flags``) instead of restating them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ddpm.diffusion.likelihood import LEARNED_VARIANCES, VARIANCES
from ddpm.diffusion.losses import LOSSES
from ddpm.diffusion.parametrization import PREDICTIONS
from ddpm.diffusion.schedule import SCHEDULES
from ddpm.diffusion.timestep_sampler import TIMESTEP_SAMPLERS
from ddpm.errors import UserError
from ddpm.runtime import (
    ADAMW_IMPLS,
    COMPILE_MODES,
    CPU_ALLOCATORS,
    MEMORY_FORMATS,
    PRECISIONS,
)

# Named options are Literal types built from the registries of the code they name, so a new schedule,
# loss or precision appears in configs, their checks and every CLI flag at once (``ddpm.cli._common``).
ScheduleName = Literal[SCHEDULES]
PredictionName = Literal[PREDICTIONS]
VarianceName = Literal[VARIANCES]
LossName = Literal[tuple(LOSSES)]
TimestepSamplerName = Literal[TIMESTEP_SAMPLERS]
PrecisionName = Literal[PRECISIONS]
MemoryFormatName = Literal[MEMORY_FORMATS]
CompileModeName = Literal[COMPILE_MODES]
AdamWImplName = Literal[ADAMW_IMPLS]
CpuAllocatorName = Literal[CPU_ALLOCATORS]
LoggerName = Literal["none", "tensorboard", "wandb"]
# An option of the network itself (ddpm.models.layers reads the names from here).
DOWNSAMPLE_PADDINGS = ("symmetric", "bottom_right")
DownsamplePadding = Literal[DOWNSAMPLE_PADDINGS]
# Data sets whose images a mirror would turn into something else (a mirrored 2 is no digit).
UNFLIPPED_DATA = ("digits", "mnist", "fashion-mnist", "mnist-pairs")
# Bounds beyond which a value is a typo, not a wish: they would only end in an out-of-memory crash.
MAX_IMAGE_SIDE = 4096
MAX_TIMESTEPS = 100_000


def doc(default, help: str, **cli):
    """A dataclass field with its ``help``, the text of the CLI flag derived from it; ``cli`` holds further
    hints: the value's range, checked by ``build`` (``positive=True``: > 0; ``min``/``max``: inclusive
    bounds; ``below``: an exclusive upper bound; a float field is always finite; ``pattern``: a regular
    expression a string must match), ``flag="name"`` (another
    flag name), ``metavar``, ``none_means="..."`` (what a default of None means, for the help), ``empty_ok=True`` (a
    tuple the flag may set empty with ``none``), ``cli=False`` (no flag)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(slots=True)
class ModelConfig:
    """The U-Net noise predictor. It knows image shapes and channels, never the diffusion."""

    image_size: tuple[int, int] = doc((8, 8), "height, width", positive=True, max=MAX_IMAGE_SIDE)
    in_channels: int = doc(1, "image channels (1 grey, 3 RGB)", positive=True)
    out_channels: int = doc(1, "output channels (derived: twice in_channels for a learned variance)", cli=False)
    base_channels: int = doc(64, "channels of the first level", positive=True)
    channel_mult: tuple[int, ...] = doc((1, 2), "channel multiplier per level", positive=True)
    num_res_blocks: int = doc(2, "ResNet blocks per level", positive=True)
    attention_resolutions: tuple[int, ...] = doc((4,), "resolutions with self-attention (none: no attention)",
                                                 positive=True, empty_ok=True)
    num_heads: int = doc(4, "attention heads", positive=True)
    dropout: float = doc(0.1, "dropout in the ResNet blocks", min=0, below=1)
    resblock_conditioning: Literal["scale_shift", "additive"] = doc(
        "scale_shift", "time conditioning: scale_shift (AdaGN) or additive (Ho et al.)")
    norm_groups: int = doc(32, "GroupNorm groups", positive=True)
    downsample_padding: DownsamplePadding = doc(
        "symmetric", "stride-2 convolutions pad every side (symmetric) or bottom and right only (bottom_right: "
        "TensorFlow's SAME, as Ho et al.'s released checkpoints)")
    num_classes: int | None = doc(None, "class-conditional when set; index num_classes means 'no label'", cli=False,
                                  positive=True)
    # Text conditioning (Rombach et al. 2022, LDM): a text encoder inside the network turns token ids into a
    # context sequence that transformer blocks attend to (cross-attention), or, for the ablation, one pooled
    # vector added to the time embedding. The network still only maps (x_t, t, tokens) to an output.
    text_encoder: Literal["none", "trained", "clip", "t5"] = doc(
        "none", "text conditioning: none, a small transformer trained with the U-Net (trained), or a frozen CLIP or "
        "T5 encoder read from --text-encoder-path")
    text_encoder_path: str | None = doc(None, "folder of a frozen CLIP or T5 text encoder (transformers format)")
    text_injection: Literal["cross_attention", "pooled"] = doc(
        "cross_attention", "how the text reaches the U-Net: cross-attention in transformer blocks, or its mean "
        "token added to the time embedding (pooled: the ablation without cross-attention)")
    tokenizer: Literal["words", "bytes"] = doc("words", "words: a vocabulary built from the training captions "
                                                "(saved in the config); bytes: UTF-8 bytes, no vocabulary")
    vocabulary: tuple[str, ...] = doc((), "the words tokenizer's vocabulary (from the training captions)", cli=False)
    max_tokens: int = doc(24, "longest caption in tokens, start and end included", positive=True, max=1024)
    text_width: int = doc(128, "width of the trained text encoder", positive=True)
    text_layers: int = doc(2, "transformer layers of the trained text encoder", positive=True)
    transformer_resolutions: tuple[int, ...] = doc(
        (), "resolutions with a transformer block (self-attention, cross-attention to the text, GEGLU); empty: "
        "attention_resolutions, for a cross-attention text model", positive=True)
    transformer_depth: int = doc(1, "transformer layers in each transformer block", positive=True)


@dataclass(slots=True)
class DiffusionConfig:
    schedule: ScheduleName = doc("linear", "variance schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal)")
    timesteps: int = doc(1000, "T, the number of diffusion steps", positive=True, max=MAX_TIMESTEPS)
    prediction: PredictionName = doc("eps", "what the network predicts: eps, x0 or v")
    # Reverse-process variance: fixed "beta" | "beta_tilde" (Ho et al.), or output by the network:
    # "learned" (a log-variance) | "learned_range" (Improved DDPM Eq. 15); see ``derive``.
    variance: VarianceName = doc("beta", "reverse-process variance: fixed (Ho et al.) or output by the network "
                             "(Improved DDPM)")
    loss: LossName = doc("simple", "simple: L_simple | hybrid: L_simple + 0.001 L_vlb (needs a learned variance) | "
                     "vlb: L_vlb with loss-aware t")
    timestep_sampler: TimestepSamplerName = doc("uniform", "how t is drawn: uniform, or loss_aware (Improved DDPM "
                                            "§3.3; vlb implies it)")
    clip_x0: bool = doc(True, "clip the predicted x0 to [-1, 1] when sampling (off for latents)")


@dataclass(slots=True)
class TrainConfig:
    data: str = doc("digits", "digits | mnist | fashion-mnist | cifar10 | a folder of images | hf:NAME[:SPLIT] | "
                    "a folder of shards (ddpm prepare-data), streamed")
    data_dir: str | None = doc(None, "folder holding a named set's original files (MNIST IDX files, CIFAR-10 "
                               "batches); without it they are downloaded")
    skip_bad_images: bool = doc(False, "leave unreadable images out with a warning instead of stopping")
    caption_column: str = doc("text", "the caption field of metadata.jsonl or of an hf: data set (text models)")
    autoencoder: str | None = doc(None, "train in the latent space of this autoencoder: a run of ddpm "
                                  "train-autoencoder or a diffusers AutoencoderKL folder (kept with the run)")
    data_workers: int = doc(2, "worker processes reading --data shards (ddpm prepare-data)", min=0)
    flip: bool | None = doc(None, "mirror each training image left-right with probability 1/2 (Ho et al.)",
                            none_means="on, except for digits, mnist and fashion-mnist")
    steps: int = doc(6000, "optimisation steps", positive=True)
    batch_size: int = doc(128, "images per step, over all processes (split evenly over torchrun's ranks)",
                          positive=True)
    micro_batch_size: int | None = doc(None, "most images one device computes at once; a larger share of the "
                                       "batch is accumulated over rounds (same step, less memory)", positive=True,
                                       none_means="all")
    lr: float = doc(1e-3, "peak learning rate (AdamW)", positive=True)
    warmup_steps: int = doc(200, "steps of linear learning-rate warm-up", min=0)
    lr_decay: Literal["constant", "cosine"] = doc("cosine", "after warm-up: constant, or cosine down to "
                                                  "lr_min_ratio * lr at the last step")
    lr_min_ratio: float = doc(0.05, "the cosine decay's floor, as a share of lr", min=0, max=1)
    weight_decay: float = doc(0.0, "AdamW weight decay", min=0)
    grad_clip: float = doc(1.0, "clip the gradient norm to this (0: off)", min=0)
    max_nonfinite_steps: int = doc(20, "stop when this many steps in a row have a NaN or infinite loss or "
                                   "gradient (each such step is skipped and counted)", positive=True)
    ema_decay: float = doc(0.999, "decay of the weights' exponential moving average (the sampling model)",
                           min=0, below=1)
    ema_half_life_images: float | None = doc(None, "set the EMA by its half-life in training images instead of "
                                             "--ema-decay (the same average at any batch size or GPU count)",
                                             positive=True)
    seed: int = doc(0, "seed of every random draw of the run")
    log_every: int = doc(50, "steps between log lines", positive=True)
    logger: LoggerName = doc("none", "also log to TensorBoard (RUN/tb) or Weights & Biases; log.jsonl and loss.png "
                             "are always written")
    sample_every: int = doc(1000, "steps between sample grids (0: only at the end)", min=0)
    checkpoint_every: int = doc(1000, "steps between checkpoints", positive=True)
    num_sample_images: int = doc(64, "images in each sample grid", positive=True)
    # Class-conditional models (model.num_classes set): the share of labels replaced by the "no label"
    # index each step, so one network also learns eps(x_t, none) for classifier-free guidance
    # (Ho & Salimans 2022, Algorithm 1: p_uncond = 0.1 or 0.2).
    p_uncond: float = doc(0.1, "share of labels or captions replaced by 'no label' or the empty caption "
                          "(conditional models)", min=0, below=1)
    adamw_impl: AdamWImplName = doc("auto", "AdamW implementation (auto: fused where PyTorch has the kernel)")
    activation_checkpointing: bool = doc(False, "recompute each block's activations in the backward pass: less "
                                         "memory (256 px on one GPU), about a third more compute")


@dataclass(slots=True)
class RuntimeConfig:
    """How the network runs (``ddpm.runtime``): saved with the run, overridable when sampling."""

    device: str = doc("auto", "auto | cpu | cuda | cuda:N", pattern=r"auto|cpu|mps|cuda(:\d+)?")
    precision: PrecisionName = doc("auto", "network arithmetic: bf16 autocast with fp32 weights, fp16 autocast with "
                               "a loss scaler (GPUs without bf16), or fp32 (auto: bf16 where the device has "
                               "native bf16, else fp32)")
    memory_format: MemoryFormatName = doc("auto", "tensor layout (auto: contiguous)")
    compile: CompileModeName = doc("auto", "torch.compile mode (auto: none on CPU; on CUDA default for training, "
                               "reduce-overhead (CUDA graphs) for sampling)")
    cpu_allocator: CpuAllocatorName = doc("auto", "on a CPU, keep freed memory in the process for reuse (keep: no "
                                          "page faults on large activations each step) or leave malloc as it is "
                                          "(system); auto: keep where the C library is glibc")


@dataclass(slots=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    preset: str = "digits"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """A saved run's config. One saved before ``flip`` existed never flipped: it must not start on resume."""
        d = _upgrade(d)
        if isinstance(d, dict) and isinstance(d.get("train"), dict) and "flip" not in d["train"]:
            d = {**d, "train": {**d["train"], "flip": False}}
        return build(cls, d, "config")


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A config saved before the runtime section existed: its device and speed options were train fields."""
    if not isinstance(d, dict) or not isinstance(d.get("train"), dict) or "runtime" in d:
        return d
    names = [f.name for f in dataclasses.fields(RuntimeConfig)]
    moved = {k: d["train"][k] for k in names if k in d["train"]}
    train = {k: v for k, v in d["train"].items() if k not in moved}
    return {**d, "train": train, "runtime": moved}


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


def flips(cfg: TrainConfig) -> bool:
    """Whether training mirrors images: ``flip``, or by default (None) as Ho et al., for photographs
    (CIFAR-10, CelebA-HQ, LSUN, image folders) and not for digits."""
    return cfg.flip if cfg.flip is not None else cfg.data not in UNFLIPPED_DATA


def build(cls, d: dict[str, Any], where: str):
    """Construct a (nested) dataclass ``cls`` from a dict, rejecting unknown keys and names with a one-line
    error that says ``where`` they are."""
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a table/object, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise UserError(f"unknown {where} key(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, f"{where}.{name}")
        elif get_origin(hint) is Literal and value not in get_args(hint):
            raise UserError(f"unknown {where}.{name} {value!r}; choose one of {', '.join(map(str, get_args(hint)))}")
        else:
            kwargs[name] = checked_value(f"{where}.{name}", hint, value, fields[name].metadata)
    return cls(**kwargs)


def checked_value(where: str, hint, value, meta) -> Any:
    """``value`` as type ``hint`` (a list becomes a tuple, an int a float), within the field's range
    (``doc``); anything else is a UserError naming ``where``."""
    flag = f" (--{meta.get('flag', where.rpartition('.')[2]).replace('_', '-')})" if meta.get("cli", True) else ""
    args = get_args(hint)
    if get_origin(hint) in (Union, UnionType) and type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if get_origin(hint) is tuple:
        n = "some" if Ellipsis in get_args(hint) else len(get_args(hint))
        if not isinstance(value, (list, tuple)) or (n != "some" and len(value) != n):
            raise UserError(f"{where}{flag} must be a list of {n} numbers, got {value!r}")
        return tuple(checked_value(where, get_args(hint)[0], v, meta) for v in value)
    ok = {bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}.get(hint)
    if ok is not None and not ok(value):
        raise UserError(f"{where}{flag} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise UserError(f"{where}{flag} {value!r} is not one of: {meta['help'].split(' (')[0]}")
    if hint is float:
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"{where}{flag} must be a finite number, got {value}")
    if hint in (int, float):
        lo, hi, below = meta.get("min"), meta.get("max"), meta.get("below")
        for fails, text in ((meta.get("positive") and value <= 0, "> 0"), (lo is not None and value < lo, f">= {lo}"),
                            (hi is not None and value > hi, f"<= {hi}"),
                            (below is not None and value >= below, f"< {below}")):
            if fails:
                raise UserError(f"{where}{flag} must be {text}, got {value}")
    return value


def update(obj, values: dict[str, Any], where: str):
    """A copy of dataclass ``obj`` with ``values`` replaced (same checks as ``from_dict``)."""
    merged = {**dataclasses.asdict(obj), **values}
    return build(type(obj), merged, where)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file with sections [model], [diffusion], [train], [runtime] (all optional);
    a file written before [runtime] existed (device and speed options in [train]) reads as if it had it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    if p.suffix not in (".json", ".toml"):
        raise UserError(f"config file {p} must be .json or .toml")
    try:
        text = p.read_text()
        values = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot parse config file {p}: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {p} must hold a table/object of sections, not a {type(values).__name__}")
    values = _upgrade(values)
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    for key, value in values.items():
        if key not in sections:
            raise UserError(f"unknown section {key!r} in config file {p}; use {', '.join(sections)}")
        if key != "preset" and not isinstance(value, dict):
            raise UserError(f"section {key!r} of config file {p} must be a table/object")
    return values


# --- the autoencoder (first stage of latent diffusion) ------------------------------------------------
# Rombach et al. (2022), LDM §3 and App. G: a KL-regularised autoencoder compresses an H x W image by a factor
# f = 2^(L - 1) (L levels) into an (H/f) x (W/f) latent with a few channels; diffusion then runs on latents.
AUTOENCODER_FACTORS = (1, 2, 4, 8)


@dataclass(slots=True)
class AutoencoderConfig:
    """The KL autoencoder's network (LDM's ``AutoencoderKL``; diffusers' ``AutoencoderKL`` fits it exactly)."""

    image_size: tuple[int, int] = doc((8, 8), "height, width", positive=True, max=MAX_IMAGE_SIDE)
    in_channels: int = doc(1, "image channels (1 grey, 3 RGB)", positive=True)
    base_channels: int = doc(32, "channels of the first level", positive=True)
    channel_mult: tuple[int, ...] = doc((1, 2), "channel multiplier per level; L levels downsample by "
                                        "f = 2^(L-1) (f in 1, 2, 4, 8)", positive=True)
    num_res_blocks: int = doc(1, "ResNet blocks per level (the decoder has one more)", positive=True)
    latent_channels: int = doc(4, "channels of the latent", positive=True)
    mid_attention: bool = doc(True, "self-attention in the middle blocks of encoder and decoder")
    norm_groups: int = doc(32, "GroupNorm groups (fewer on narrower layers)", positive=True)
    # LDM's DiagonalGaussianDistribution clamps the log-variance to [-30, 20] so exp() stays finite.
    logvar_min: float = doc(-30.0, "lowest posterior log-variance (LDM: -30)")
    logvar_max: float = doc(20.0, "highest posterior log-variance (LDM: 20)")
    quant_conv: bool = doc(True, "1x1 convolutions after the encoder and before the decoder (diffusers' "
                           "use_quant_conv)", cli=False)

    @property
    def factor(self) -> int:
        """f: how much smaller the latent is than the image, per side."""
        return 2 ** (len(self.channel_mult) - 1)


@dataclass(slots=True)
class AutoencoderTrainConfig:
    data: str = doc("digits", "digits | mnist | fashion-mnist | cifar10 | a folder of images | hf:NAME[:SPLIT]")
    data_dir: str | None = doc(None, "folder holding a named set's original files; without it they are downloaded")
    skip_bad_images: bool = doc(False, "leave unreadable images out with a warning instead of stopping")
    steps: int = doc(2000, "optimisation steps", positive=True)
    batch_size: int = doc(32, "images per step", positive=True)
    lr: float = doc(5e-4, "learning rate (Adam, betas 0.5, 0.9 as LDM)", positive=True)
    kl_weight: float = doc(1e-6, "weight of KL(q(z|x) || N(0, I)) against the summed reconstruction loss (LDM: "
                           "1e-6)", min=0)
    perceptual_weight: float = doc(0.0, "weight of the LPIPS perceptual loss (LDM: 1; 0: off)", min=0)
    perceptual_weights: str | None = doc(None, "LPIPS weights: a .safetensors or .pth file with the VGG16 "
                                         "features and the linear heads, or the heads alone (vgg.pth)",
                                         none_means="the torch hub cache")
    disc_start: int | None = doc(None, "step at which the PatchGAN discriminator switches on",
                                 none_means="no discriminator", min=0)
    disc_weight: float = doc(0.5, "weight of the adversarial loss, times the adaptive weight (LDM: 0.5)", min=0)
    disc_layers: int = doc(3, "stride-2 layers of the PatchGAN discriminator (fewer for small images)",
                           positive=True, max=8)
    disc_channels: int = doc(64, "channels of the discriminator's first layer", positive=True)
    seed: int = doc(0, "seed of every random draw of the run")
    log_every: int = doc(50, "steps between log lines", positive=True)
    checkpoint_every: int = doc(500, "steps between checkpoints", positive=True)
    sample_every: int = doc(500, "steps between reconstruction grids and held-out PSNR/SSIM (0: only at the end)",
                            min=0)
    num_sample_images: int = doc(16, "images in each reconstruction grid", positive=True, max=256)
    holdout: int = doc(256, "images kept out of training to measure PSNR and SSIM on (at most a tenth "
                       "of the set)", positive=True)
    scale_images: int = doc(2048, "training images whose latents set latent_scale = 1 / std (LDM's "
                            "scale_by_std)", positive=True)


@dataclass(slots=True)
class AutoencoderRunConfig:
    """An autoencoder run: its network, training and runtime settings, and the latent normalisation
    z = (sample - latent_shift) * latent_scale that latent diffusion sees (``latent_scale`` None: not yet
    measured, i.e. before training ends)."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    latent_scale: float | None = doc(None, "1 / std of the training latents", cli=False, positive=True)
    latent_shift: float = doc(0.0, "subtracted from the latents before scaling", cli=False)
    kind: str = "autoencoder"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AutoencoderRunConfig":
        if isinstance(d, dict) and d.get("kind", "autoencoder") != "autoencoder":
            raise UserError(f"config of kind {d.get('kind')!r} is not an autoencoder's")
        return build(cls, d, "config")
