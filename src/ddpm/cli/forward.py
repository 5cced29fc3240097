"""``ddpm forward``: the forward process as a picture, images noised by q(x_t | x0) (Ho et al. Eq. 4).

One row per image: the data, then x_t at each step of --t. One noise draw per image serves every
column, so a row is one path of growing noise. Steps are 0-based (step 999 is the paper's t = 1000);
T itself is accepted as the last step, so the paper's list 0,5,10,50,100,1000 works as written.
Needs no model: the schedule comes from ``ddpm.diffusion.schedule.make_schedule``, as in training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpm.cli._common import add_config_flags, parse_ints, picture_path, positive_int
from ddpm.config import DiffusionConfig
from ddpm.data.datasets import DATASETS, load_dataset, to_unit_range
from ddpm.data.folder import find_images, first_image_shape, load_image
from ddpm.diffusion.schedule import make_schedule
from ddpm.io import say
from ddpm.viz.figures import resolve_steps
from ddpm.viz.process import default_forward_steps, save_forward_strip

EXAMPLES = (
    "ddpm forward --data digits --out forward.png\n"
    "ddpm forward --image photo.jpg --t 0,5,10,50,100,1000 --schedule cosine\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("forward", help="picture of images noised by the forward process q(x_t | x0)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="digits | mnist | fashion-mnist | cifar10 | a folder of images | hf:NAME[:SPLIT]")
    src.add_argument("--image", help="one image file")
    p.add_argument("--data-dir", help="folder with a named set's original files (see ddpm train --help)")
    p.add_argument("--t", help="comma-separated 0-based steps (default: 0,5,10,50,100,999 scaled to T)")
    add_config_flags(p, DiffusionConfig, only=("schedule", "timesteps"))
    p.add_argument("--n", type=positive_int("--n"), default=8, help="images from --data (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the noise (default: 0)")
    p.add_argument("--image-size", type=positive_int("--image-size"),
                   help="square size to fit images to (default: the set's own; files and folders: up to 128)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 grey or 3 RGB (default: the data's)")
    p.add_argument("--skip-bad-images", action="store_true", help="leave unreadable images out with a warning")
    p.add_argument("--out", help="PNG file, or a folder (default: forward.png)")
    p.set_defaults(func=run)


def load_images(args, count: int):
    """``count`` images (N, C, H, W) in [-1, 1] from --image or --data, chosen by --seed."""
    size = None if args.image_size is None else (args.image_size, args.image_size)
    if args.image:
        return to_unit_range(load_image(args.image, size, args.channels, max_side=128)[None])
    channels = args.channels
    if size is None and args.data not in DATASETS and not args.data.startswith("hf:"):
        # A folder of large photos would otherwise make a picture as large as they are.
        paths = find_images(args.data) if Path(args.data).is_dir() else []
        if paths:
            (h, w), ch0 = first_image_shape(paths[0])
            side = min(h, w, 128)
            size, channels = (side, side), channels or ch0
    data = load_dataset(args.data, args.data_dir, image_size=size, channels=channels,
                        skip_bad_images=args.skip_bad_images)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data), generator=g)[:count]
    return data.images[idx]


def run(args: argparse.Namespace) -> int:
    T, schedule_name = args.timesteps or DiffusionConfig().timesteps, args.schedule or DiffusionConfig().schedule
    steps = resolve_steps(parse_ints(args.t) if args.t else default_forward_steps(T), T)
    x0 = load_images(args, args.n)
    schedule = make_schedule(schedule_name, T)
    out = picture_path(args.out, "forward.png")
    g = torch.Generator().manual_seed(args.seed)
    title = f"q(x_t | x_0), {schedule_name} schedule, T = {T}"
    save_forward_strip(x0, schedule, steps, out, generator=g, title=title)
    say(f"wrote {out} ({len(x0)} image(s) x steps {', '.join(map(str, steps))})")
    return 0
