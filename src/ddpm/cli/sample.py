"""``ddpm sample``: draw images from a trained run by Algorithm 2.

Writes DIR/grid.png, one PNG per sample (DIR/sample_00000.png ...) and DIR/samples.npz holding one
uint8 array ``arr_0`` of shape (N, H, W, C). Sample i is drawn from seed S + i alone, so any image can
be drawn again by itself, whatever the batch size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.cli._common import add_device, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a trained run (Algorithm 2)", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="run folder (or its ema.safetensors)")
    p.add_argument("--n", type=positive_int("--n"), default=64, help="number of samples (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED + i (default: 0)")
    p.add_argument("--variance", choices=["beta", "beta_tilde"], help="sigma_t^2 (default: the run's)")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clip the predicted x0 to [-1, 1] (default: the run's setting)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=256)
    p.add_argument("--out", help="output folder (default: RUN/samples-seedSEED)")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ddpm.api import load_run, sample_images
    from ddpm.sampling.noise import seed_generators
    from ddpm.training.distributed import DistEnv, resolve_device
    from ddpm.viz.grid import save_grid, save_image, to_uint8

    device = resolve_device(args.device or "auto", DistEnv())
    run = load_run(args.checkpoint, device)
    if args.clip_x0 is not None:
        run.config.diffusion.clip_x0 = args.clip_x0
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"samples-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)

    batches = []
    for start in tqdm(range(0, args.n, args.batch_size), desc="batches", unit="batch"):
        count = min(args.batch_size, args.n - start)
        gens = seed_generators(range(args.seed + start, args.seed + start + count))
        x = sample_images(run.model, run.config, count, generator=gens, device=device, variance=args.variance)
        batches.append(to_uint8(x))
    images = np.concatenate(batches)
    for i, img in enumerate(images):
        save_image(img, out / f"sample_{i:05d}.png")
    save_grid(images[:256], out / "grid.png")
    np.savez(out / "samples.npz", images)
    print(f"wrote {len(images)} samples to {out} (grid.png, sample_*.png, samples.npz)")
    return 0
