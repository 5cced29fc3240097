"""``ddpm encode``: DDIM inversion of images to latents x_T, then reconstruction by DDIM (eta = 0).

The deterministic DDIM sampler (Song et al. 2021, §4.3 and §5.4) is an ODE solver, so running it
forwards maps an image to the noise that generates it. Writes DIR/encode.png (originals | latents |
reconstructions; latents shown as x_T / 3, clipped, so +-3 standard deviations span black to white),
DIR/latents.safetensors (``x_T`` and the ``x0`` it encodes, float32 (N, C, H, W)) and DIR/metrics.json
with the reconstruction MSE on the [-1, 1] scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm.cli._common import add_device, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help="DDIM-invert images to x_T and reconstruct them", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="run folder (or its ema.safetensors)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="data set to take the first N images from (e.g. digits)")
    src.add_argument("--image", help="one image file, resized to the model's size")
    p.add_argument("--data-dir", help="folder holding the data set's files")
    p.add_argument("--n", type=positive_int("--n"), default=16, help="images from --data (default: 16)")
    p.add_argument("--steps", type=positive_int("--steps"), default=100,
                   help="network calls each way (default: 100; the grid starts at T-1)")
    p.add_argument("--grid", choices=["even", "trailing", "quadratic", "logsnr"], default="even",
                   help="timestep spacing (default: even)")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clip the predicted x0 to [-1, 1] (default: the run's setting)")
    p.add_argument("--out", required=True, help="output folder")
    add_device(p)
    p.set_defaults(func=run)


def load_images(args: argparse.Namespace, cfg):
    """(N, C, H, W) float32 in [-1, 1] from --data or --image, checked against the model's shape."""
    import numpy as np

    from ddpm.data.datasets import load_dataset, to_unit_range
    from ddpm.errors import UserError

    c, (h, w) = cfg.model.in_channels, cfg.model.image_size
    if args.image is not None:
        from PIL import Image, UnidentifiedImageError

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
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from ddpm.api import load_run, make_denoiser
    from ddpm.sampling.ddim import ddim_invert, sample_ddim
    from ddpm.sampling.grids import timestep_grid
    from ddpm.training.checkpoint import write_text_atomic
    from ddpm.training.distributed import DistEnv, resolve_device
    from ddpm.viz.grid import auto_scale, make_grid, save_image, to_uint8

    device = resolve_device(args.device or "auto", DistEnv())
    run = load_run(args.checkpoint, device)
    x0 = load_images(args, run.config).to(device)
    grid = timestep_grid(run.schedule.num_timesteps, args.steps, args.grid, schedule=run.schedule)
    denoise = make_denoiser(run.model, run.config, run.schedule, clip_x0=args.clip_x0)
    x_T = ddim_invert(denoise, x0, run.schedule, grid)
    recon = sample_ddim(denoise, x_T, run.schedule, grid, eta=0.0)
    per_image = (recon - x0).pow(2).flatten(1).mean(1).cpu()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    panels = [make_grid(to_uint8(x)) for x in (x0, (x_T / 3).clamp(-1, 1), recon)]
    gap = np.full((panels[0].shape[0], 4, panels[0].shape[2]), 255, np.uint8)
    picture = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    scale = auto_scale(x0.shape[-2])
    save_image(picture.repeat(scale, axis=0).repeat(scale, axis=1), out / "encode.png")
    save_file({"x_T": x_T.float().cpu().contiguous(), "x0": x0.float().cpu().contiguous()},
              str(out / "latents.safetensors"))
    metrics = {"mse": per_image.mean().item(), "per_image_mse": per_image.tolist(), "steps": len(grid),
               "grid": args.grid, "timesteps": grid, "checkpoint": str(args.checkpoint)}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"reconstruction MSE {metrics['mse']:.5f} over {len(x0)} image(s) with {len(grid)} DDIM steps each way; "
          f"wrote {out}/encode.png, latents.safetensors, metrics.json")
    return 0
