"""``ddpm train-autoencoder``: the KL autoencoder that latent diffusion runs in (Rombach et al. 2022, LDM).

The encoder compresses each side of an image by f = 2^(L-1) (``--factor``, or the length of
``--channel-mult``) into ``--latent-channels`` channels; training minimises L1 + KL (and optionally LPIPS
and a PatchGAN's hinge loss), measures PSNR and SSIM on held-out images and ends by measuring the latent
scale. Image size and channels default to the data set's (digits 8x8 grey, MNIST 32x32 grey, CIFAR-10
32x32 RGB, mnist-pairs 32x64 grey, a folder 64x64 RGB), the factor to 2 for digits and 4 otherwise; ``--resume`` continues the
run in ``--out`` with its own settings.
Train a latent diffusion model on the result with ``ddpm train --autoencoder RUN``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ddpm.checkpoint import CONFIG
from ddpm.cli._common import add_config_flags, config_values
from ddpm.config import (
    AUTOENCODER_FACTORS,
    AutoencoderConfig,
    AutoencoderRunConfig,
    AutoencoderTrainConfig,
    RuntimeConfig,
    update,
)
from ddpm.errors import UserError
from ddpm.io import say
from ddpm.models.autoencoder import check_autoencoder_config
from ddpm.training.autoencoder import METRICS, train_autoencoder

EXAMPLES = (
    "ddpm train-autoencoder --data digits --out runs/ae-digits\n"
    "ddpm train-autoencoder --data mnist --factor 4 --latent-channels 4 --steps 3000 --out runs/ae-mnist\n"
    "ddpm train-autoencoder --out runs/ae-mnist --resume --steps 6000\n"
)  # the end of --help

# (image size, channels) of the named sets; other data: 64x64 RGB unless --image-size / --in-channels.
DATA_SHAPES = {"digits": ((8, 8), 1), "mnist": ((32, 32), 1), "fashion-mnist": ((32, 32), 1),
               "cifar10": ((32, 32), 3), "mnist-pairs": ((32, 64), 1)}
DEFAULT_FACTOR = {"digits": 2}  # 8x8 digits to 4x4 latents; everything else f = 4 (LDM's best trade-off)
# Narrower first levels where a CPU must train the run in minutes (each level costs about the same).
DEFAULT_BASE_CHANNELS = {"mnist": 16, "fashion-mnist": 16, "mnist-pairs": 16}
MULTS = (1, 2, 4, 4)  # LDM's channel multipliers (f = 8: 1,2,4,4); f = 2^(L-1) takes the first L


def add_parser(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the KL autoencoder of latent diffusion (LDM)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/autoencoder", help="run folder (default: runs/autoencoder)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--factor", type=int, choices=AUTOENCODER_FACTORS,
                   help="downsampling factor f per side: sets --channel-mult to the first log2(f)+1 of 1,2,4,4 "
                   "(default: 2 for digits, else 4)")
    add_config_flags(p, AutoencoderTrainConfig, title="training")
    add_config_flags(p, AutoencoderConfig, title="model (image size and channels default to the data set's)")
    add_config_flags(p, RuntimeConfig, only=["device"], title="runtime")
    p.set_defaults(func=run)


def _model_values(args: argparse.Namespace) -> dict:
    values = config_values(args, AutoencoderConfig)
    if args.factor is not None:
        levels = int(math.log2(args.factor)) + 1
        given = values.get("channel_mult")
        if given is not None and len(given) != levels:
            raise UserError(f"--factor {args.factor} needs {levels} levels but --channel-mult has {len(given)}")
        values.setdefault("channel_mult", MULTS[:levels])
    return values


def resolve_config(args: argparse.Namespace) -> AutoencoderRunConfig:
    """Defaults fitted to the data set, then the flags; on --resume the run's own config, then the flags."""
    if args.resume:
        path = Path(args.out) / CONFIG
        if not path.is_file():
            raise UserError(f"nothing to resume: no {CONFIG} in {args.out}")
        try:
            cfg = AutoencoderRunConfig.from_dict(json.loads(path.read_text()))
        except ValueError as e:
            raise UserError(f"cannot parse {path}: {e}") from None
    else:
        cfg = AutoencoderRunConfig()
        data = args.data or cfg.train.data
        cfg.model.image_size, cfg.model.in_channels = DATA_SHAPES.get(data, ((64, 64), 3))
        cfg.model.channel_mult = MULTS[:int(math.log2(DEFAULT_FACTOR.get(data, 4))) + 1]
        cfg.model.base_channels = DEFAULT_BASE_CHANNELS.get(data, cfg.model.base_channels)
    cfg.train = update(cfg.train, config_values(args, AutoencoderTrainConfig), "train")
    cfg.model = update(cfg.model, _model_values(args), "model")
    cfg.runtime = update(cfg.runtime, config_values(args, RuntimeConfig), "runtime")
    check_autoencoder_config(cfg.model)
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    out = train_autoencoder(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    m = cfg.model
    c, h, w = cfg.model.latent_channels, m.image_size[0] // m.factor, m.image_size[1] // m.factor
    say(f"autoencoder saved to {out} (f = {m.factor}, latents {c}x{h}x{w}); train latent diffusion with: "
        f"ddpm train --autoencoder {out}")
    metrics_path = Path(out) / METRICS
    if cfg.latent_scale is not None and metrics_path.is_file():  # None: interrupted before the end
        metrics = json.loads(metrics_path.read_text())
        print(f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} ({metrics['holdout_images']} "
              f"images); latent scale {metrics['latent_scale']:.4g}")
    return 0
