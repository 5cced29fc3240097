"""``ddpm encode``: DDIM inversion of images to latents x_T, then reconstruction by DDIM (eta = 0).

The deterministic DDIM sampler (Song et al. 2021, §4.3 and §5.4) is an ODE solver, so running it
forwards maps an image to the noise that generates it. Writes DIR/encode.png (originals | latents |
reconstructions; latents shown as x_T / 3, clipped, so +-3 standard deviations span black to white),
DIR/latents.safetensors (``x_T`` and the ``x0`` it encodes, float32 (N, C, H, W)) and DIR/metrics.json
with the reconstruction MSE on the [-1, 1] scale. The network runs in float32 unless ``--precision``
says otherwise (the inversion and the reconstruction compound its rounding).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file

from ddpm.cli._common import add_config_flags, device_of, positive_int, runtime_config
from ddpm.config import RuntimeConfig
from ddpm.data.datasets import load_dataset, to_unit_range
from ddpm.errors import UserError
from ddpm.io import atomic_write, write_text_atomic
from ddpm.pipeline import SamplingOptions, load_run
from ddpm.sampling.ddim import ddim_invert, sample_ddim
from ddpm.sampling.grids import timestep_grid
from ddpm.viz.grid import auto_scale, make_grid, save_image, to_uint8

DEFAULT_STEPS, DEFAULT_GRID = 100, "even"
# Inversion runs the network in float32 unless asked otherwise: the round trip compounds its rounding.
EXACT = RuntimeConfig(precision="fp32", memory_format="contiguous", compile="none")


EXAMPLES = (
    "ddpm encode --checkpoint runs/digits --data digits --n 8 --out encode/\n"
    "ddpm encode --checkpoint runs/digits --image seven.png --steps 50 --out encode/\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help="DDIM-invert images to x_T and reconstruct them", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="run folder (or its ema.safetensors)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="data set to take the first N images from (e.g. digits)")
    src.add_argument("--image", help="one image file, resized to the model's size")
    p.add_argument("--data-dir", help="folder holding the data set's files")
    p.add_argument("--n", type=positive_int("--n"), default=16, help="images from --data (default: 16)")
    p.add_argument("--out", required=True, help="output folder")
    add_config_flags(p, SamplingOptions, only=("steps", "grid", "clip_x0"), title="DDIM (network calls each way)",
                     defaults={"steps": DEFAULT_STEPS, "grid": DEFAULT_GRID})
    add_config_flags(p, RuntimeConfig, defaults={"precision": EXACT.precision, "memory_format": EXACT.memory_format,
                                                  "compile": EXACT.compile}, title="runtime (how the network runs)")
    p.set_defaults(func=run)


def load_images(args: argparse.Namespace, cfg):
    """(N, C, H, W) float32 in [-1, 1] from --data or --image, checked against the model's shape."""
    c, (h, w) = cfg.model.in_channels, cfg.model.image_size
    if args.image is not None:
        try:
            img = Image.open(args.image)
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BICUBIC)
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read image {args.image}: {e}") from None
        return to_unit_range(np.array(img)[None])
    x = load_dataset(args.data, args.data_dir).images[: args.n]
    if tuple(x.shape[1:]) != (c, h, w):
        raise UserError(f"data set {args.data} has images of shape {'x'.join(map(str, x.shape[1:]))} "
                        f"but the model expects {c}x{h}x{w}")
    return x


def run(args: argparse.Namespace) -> int:
    run_ = load_run(args.checkpoint, device_of(args))
    x0 = load_images(args, run_.config).to(run_.device)
    grid_kind = args.grid or DEFAULT_GRID
    grid = timestep_grid(run_.schedule.num_timesteps, args.steps or DEFAULT_STEPS, grid_kind, schedule=run_.schedule)
    denoise = run_.denoiser(clip_x0=args.clip_x0, runtime=runtime_config(args, EXACT))
    x_T = ddim_invert(denoise, x0, run_.schedule, grid)
    recon = sample_ddim(denoise, x_T, run_.schedule, grid, eta=0.0)
    per_image = (recon - x0).pow(2).flatten(1).mean(1).cpu()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    panels = [make_grid(to_uint8(x)) for x in (x0, (x_T / 3).clamp(-1, 1), recon)]
    gap = np.full((panels[0].shape[0], 4, panels[0].shape[2]), 255, np.uint8)
    picture = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    scale = auto_scale(x0.shape[-2])
    save_image(picture.repeat(scale, axis=0).repeat(scale, axis=1), out / "encode.png")
    latents = {"x_T": x_T.float().cpu().contiguous(), "x0": x0.float().cpu().contiguous()}
    atomic_write(out / "latents.safetensors", lambda tmp: save_file(latents, tmp))
    metrics = {"mse": per_image.mean().item(), "per_image_mse": per_image.tolist(), "steps": len(grid),
               "grid": grid_kind, "timesteps": grid, "checkpoint": str(args.checkpoint)}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"reconstruction MSE {metrics['mse']:.5f} over {len(x0)} image(s) with {len(grid)} DDIM steps each way; "
          f"wrote {out}/encode.png, latents.safetensors, metrics.json")
    return 0
