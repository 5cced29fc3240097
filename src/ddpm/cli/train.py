"""``ddpm train``: Algorithm 1 on a data set, writing checkpoints, sample grids and a loss log.

Settings come from a preset (chosen from the data set unless ``--preset``), then ``--config``, then
the flags; ``--resume`` starts from the run's own saved config instead of a preset. Every field of the
model, diffusion, train and runtime sections has a flag (``ddpm train --help``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm.checkpoint import CONFIG
from ddpm.cli._common import add_config_flags, add_runtime_flags, config_values
from ddpm.config import (
    DiffusionConfig,
    ModelConfig,
    RunConfig,
    RuntimeConfig,
    TrainConfig,
    derive,
    read_config_file,
    update,
)
from ddpm.data.datasets import load_dataset
from ddpm.data.shards import is_shard_folder, read_meta
from ddpm.errors import UserError
from ddpm.io import say
from ddpm.models.autoencoder_io import load_autoencoder
from ddpm.pipeline.latent import image_shape, latent_shape
from ddpm.presets import make_config, preset_for_data
from ddpm.training.distributed import DistEnv
from ddpm.training.loop import train

# The config sections a flag may set, in the order the help lists them.
SECTIONS = {"train": TrainConfig, "diffusion": DiffusionConfig, "model": ModelConfig, "runtime": RuntimeConfig}


EXAMPLES = (
    "ddpm train\n"
    "ddpm train --data ~/photos --preset 64 --steps 50000 --out runs/photos\n"
    "ddpm train --out runs/photos --resume\n"
    "ddpm train --data mnist-pairs --data-dir ../shared/data/mnist --autoencoder runs/ae-pairs --out runs/pairs\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (Algorithm 1)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="model/training preset (default: chosen from the data set)")
    p.add_argument("--config", help="JSON or TOML file with [model], [diffusion], [train], [runtime] sections")
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional model: num_classes from the (labelled) data set, labels dropped with "
                   "probability --p-uncond for classifier-free guidance")
    p.add_argument("--out", default="runs/digits", help="run folder (default: runs/digits)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    for title, cls in (("training", TrainConfig), ("diffusion", DiffusionConfig), ("model", ModelConfig)):
        add_config_flags(p, cls, title=f"{title} (default: the preset's, saved in RUN/config.json)",
                         show_defaults=False)
    add_runtime_flags(p)
    p.set_defaults(func=run)


# Shards hold images of one size: the preset whose network suits it (cifar10's for 32 px, else 64's, which
# takes any size a power of two times 8), with the size and channels of the shards.
_SHARD_PRESETS = {8: "digits", 28: "mnist", 32: "cifar10"}


def _base_config(data: str, preset: str | None) -> RunConfig:
    if not is_shard_folder(data):
        return make_config(preset or preset_for_data(data))
    meta = read_meta(data)
    cfg = make_config(preset or _SHARD_PRESETS.get(meta["image_size"][0], "64"))
    cfg.model.image_size, cfg.model.in_channels = tuple(meta["image_size"]), meta["channels"]
    return cfg


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Preset, then config file, then flags; on --resume the run's own config, then flags."""
    file_values = read_config_file(args.config) if args.config else {}
    if args.resume:
        path = Path(args.out) / CONFIG
        if not path.is_file():
            raise UserError(f"nothing to resume: no {CONFIG} in {args.out}")
        cfg = RunConfig.from_dict(json.loads(path.read_text()))
    else:
        data = args.data or file_values.get("train", {}).get("data") or "digits"
        cfg = _base_config(data, args.preset or file_values.get("preset"))
    sections = {k: dict(v) for k, v in file_values.items() if k in SECTIONS}
    for name, cls in SECTIONS.items():
        sections.setdefault(name, {}).update(config_values(args, cls))
    for section, values in sections.items():
        setattr(cfg, section, update(getattr(cfg, section), values, section))
    if cfg.train.autoencoder and not args.resume:
        _to_latents(cfg, args)
    return derive(cfg)  # out_channels etc. follow from the final settings


def _to_latents(cfg: RunConfig, args: argparse.Namespace) -> None:
    """A latent run's network takes the autoencoder's latents: their channels and size, its resolutions (from
    the preset, unless given as flags) divided by the downsampling factor, and no x0 clipping (latents are
    not bounded to [-1, 1]; LDM does not clip them)."""
    first_stage, _ = load_autoencoder(cfg.train.autoencoder)
    c, h, w = latent_shape(first_stage)
    f = first_stage.config.factor
    m = cfg.model
    if args.image_size is not None and tuple(args.image_size) != (h, w):
        raise UserError(f"--image-size {'x'.join(map(str, args.image_size))} is not the autoencoder's latent size "
                        f"{h}x{w}; a latent run takes its size from --autoencoder")
    m.image_size, m.in_channels = (h, w), c
    for name in ("attention_resolutions", "transformer_resolutions"):
        if getattr(args, name, None) is None:
            setattr(m, name, tuple(max(1, r // f) for r in getattr(m, name)))
    if getattr(args, "clip_x0", None) is None:
        cfg.diffusion.clip_x0 = False


def data_shape(cfg: RunConfig) -> tuple[int, int, int]:
    """(C, H, W) of the training images: the model's, or a latent run's autoencoder's."""
    if cfg.train.autoencoder:
        return image_shape(load_autoencoder(cfg.train.autoencoder)[0])
    return (cfg.model.in_channels, *cfg.model.image_size)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    data = _make_conditional(cfg) if args.conditional else None
    if args.p_uncond is not None and not cfg.model.num_classes and cfg.model.text_encoder == "none":
        raise UserError("--p-uncond applies to a class-conditional model; add --conditional")
    out = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, data=data)
    if DistEnv.from_environ().is_main:  # under torchrun, once
        say(f"run saved to {out}; sample with: ddpm sample --checkpoint {out}")
    return 0


def _make_conditional(cfg: RunConfig):
    """Set ``num_classes`` from the data set (loaded once here and handed to the loop); an unlabelled set
    is a one-line error."""
    tc = cfg.train
    if is_shard_folder(tc.data):  # streamed: the classes come from the shards' metadata
        classes = read_meta(tc.data).get("classes")
        if not classes:
            raise UserError(f"--conditional needs labelled shards; {tc.data} has no classes")
        if cfg.model.num_classes not in (None, len(classes)):
            raise UserError(f"the run has {cfg.model.num_classes} classes, the shards in {tc.data} {len(classes)}")
        cfg.model.num_classes = len(classes)
        return None
    c, h, w = data_shape(cfg)
    data = load_dataset(tc.data, tc.data_dir, image_size=(h, w), channels=c, skip_bad_images=tc.skip_bad_images,
                        caption_column=tc.caption_column)
    if data.labels is None or not data.num_classes:
        raise UserError(f"--conditional needs a labelled data set (a folder with one sub-folder per class); "
                        f"{data.name} has no labels")
    if cfg.model.num_classes not in (None, data.num_classes):
        raise UserError(f"the run has {cfg.model.num_classes} classes, data set {data.name} has {data.num_classes}")
    cfg.model.num_classes = data.num_classes
    return data
