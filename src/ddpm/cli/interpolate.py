"""``ddpm interpolate``: walk between two seeds or two images with a trained run.

--mode seeds (default): spherical interpolation (slerp) between the x_T of seeds S+2i and S+2i+1,
then sampling; one row per pair (--rows). The default sampler is deterministic DDIM (eta = 0, as in
Song et al. 2021 §5.3), where x_T alone decides the image, so lambda = 0 and 1 are exactly
``ddpm sample --sampler ddim --seed S+2i`` and ``S+2i+1``. (Under the ancestral sampler the path's own
noise, shared along the row, decides most of the image and the row hardly changes.)

--mode images: Ho et al. (2020) §4.3 and Fig. 8. Two real images (--data with --index A,B, or
--image-a/--image-b) are diffused to step t with the same noise, mixed linearly for each lambda and
denoised by the reverse process from t. One row per t in --t: small t blends the sources' pixels,
large t forgets them and makes new images that change smoothly with lambda. Steps are 0-based; T
itself means the last step.
"""

from __future__ import annotations

import argparse

import torch

from ddpm.cli._common import (
    add_config_flags,
    add_runtime_flags,
    config_values,
    device_of,
    parse_floats,
    parse_ints,
    picture_path,
    positive_int,
    runtime_config,
)
from ddpm.data.datasets import load_dataset, to_unit_range
from ddpm.data.folder import load_image
from ddpm.errors import UserError
from ddpm.io import say
from ddpm.pipeline import SamplingOptions, interpolate_images, interpolate_seeds, load_run
from ddpm.viz.figures import resolve_steps, save_labeled_grid

EXAMPLES = (
    "ddpm interpolate --checkpoint runs/digits --mode seeds\n"
    "ddpm interpolate --checkpoint runs/digits --mode images --t 0,250,500,750,999\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("interpolate", help="interpolate between two seeds (slerp) or two images (Ho et al. Fig. 8)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder (or its ema.safetensors)")
    p.add_argument("--mode", choices=["seeds", "images"], default="seeds", help="(default: seeds)")
    p.add_argument("--lambdas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                   help="comma-separated mixing weights in [0, 1] (default: 0 to 1 in steps of 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seeds: first seed; images: the diffusion noise (default: 0)")
    p.add_argument("--rows", type=positive_int("--rows"), default=4, help="seeds: pairs of seeds (default: 4)")
    p.add_argument("--t", help="images: comma-separated 0-based steps, one row each (default: 0,T/4,T/2,3T/4,T-1)")
    p.add_argument("--data", help="images: data set or folder to take the two images from")
    p.add_argument("--data-dir", help="images: folder with a named set's original files")
    p.add_argument("--index", help="images: the two images' indices in --data (default: two picked by --seed)")
    p.add_argument("--image-a", help="images: first image file (instead of --data)")
    p.add_argument("--image-b", help="images: second image file")
    p.add_argument("--out", help="PNG file, or a folder (default: RUN/interpolate-MODE.png)")
    add_config_flags(p, SamplingOptions, title="sampler (--steps counts over the whole of T)",
                     defaults={"sampler": "ddim for seeds, ancestral (Algorithm 2) for images"})
    add_runtime_flags(p, of_run=True)
    p.set_defaults(func=run)


def _two_images(args, cfg):
    """(1, C, H, W) x 2 in [-1, 1], fitted to the model, and their labels for the picture."""
    size, channels = tuple(cfg.model.image_size), cfg.model.in_channels
    if args.image_a or args.image_b:
        if not (args.image_a and args.image_b) or args.data:
            raise UserError("give both --image-a and --image-b (and no --data)")
        return [to_unit_range(load_image(p, size, channels)[None]) for p in (args.image_a, args.image_b)], ("A", "B")
    # By default the run's own training data.
    name, data_dir = (args.data, args.data_dir) if args.data else (cfg.train.data, args.data_dir or cfg.train.data_dir)
    if not name:
        raise UserError("the run names no training data (a converted checkpoint?); pass --data or --image-a/--image-b")
    data = load_dataset(name, data_dir, image_size=size, channels=channels, min_images=2)
    if args.index:
        idx = parse_ints(args.index, "--index")
        if len(idx) != 2 or not all(0 <= i < len(data) for i in idx):
            raise UserError(f"--index takes two indices in 0..{len(data) - 1}, got {args.index}")
    else:
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:2].tolist()
    return [data.images[i:i + 1] for i in idx], tuple(f"{n}: #{i}" for n, i in zip("AB", idx))


def run(args: argparse.Namespace) -> int:
    lambdas = parse_floats(args.lambdas, "--lambdas")
    if not all(0.0 <= v <= 1.0 for v in lambdas):
        raise UserError(f"--lambdas must lie in [0, 1], got {args.lambdas}")
    values = config_values(args, SamplingOptions)
    sampler = values.setdefault("sampler", "ddim" if args.mode == "seeds" else "ancestral")
    sampling = SamplingOptions(**values)
    run = load_run(args.checkpoint, device_of(args))
    cfg, T = run.config, run.schedule.num_timesteps
    options = dict(sampling=sampling, runtime=runtime_config(args, cfg.runtime), progress=True)  # a bar per row
    name = f"interpolate-{args.mode}.png"
    out = picture_path(args.out, name) if args.out else (run.path if run.path.is_dir() else run.path.parent) / name
    lam_labels = [f"{v:g}" for v in lambdas]
    if args.mode == "seeds":
        if args.t or args.data or args.image_a or args.index:
            raise UserError("--t, --data, --index and --image-a/b belong to --mode images")
        rows, labels = [], []
        for r in range(args.rows):
            a, b = args.seed + 2 * r, args.seed + 2 * r + 1
            rows.append(interpolate_seeds(run, a, b, lambdas, **options))
            labels.append(f"seeds {a}-{b}")
        save_labeled_grid(torch.stack(rows), out, col_labels=[f"λ={v}" for v in lam_labels], row_labels=labels,
                          title=f"slerp between the x_T of two seeds, then {sampler} sampling")
    else:
        (x_a, x_b), names = _two_images(args, cfg)
        default = [0, round(T / 4), round(T / 2), round(3 * T / 4), T - 1]
        steps = resolve_steps(parse_ints(args.t) if args.t else default, T)
        mixed = interpolate_images(run, x_a, x_b, steps, lambdas, seed=args.seed, **options)
        src_a, src_b = (x.to(mixed.device).expand(len(steps), -1, -1, -1) for x in (x_a, x_b))
        cells = torch.cat([src_a[:, None], mixed, src_b[:, None]], dim=1)
        save_labeled_grid(cells, out, col_labels=[names[0]] + [f"λ={v}" for v in lam_labels] + [names[1]],
                          row_labels=[f"t={t}" for t in steps],
                          title="diffuse both to t with one noise, mix, denoise from t (Ho et al. Fig. 8)")
    say(f"wrote {out}")
    return 0
