"""``ddpm prepare-data``: write a folder of images as uint8 WebDataset tar shards, for sets larger than memory.

Each image is fitted to --size (resized to cover, centre-cropped) and --channels once, and stored as a PNG;
a folder with one sub-folder per class keeps the labels. ``ddpm train --data SHARDS`` then streams the
shards through DataLoader workers, each rank and worker reading its own shards, with memory that does not
grow with the set. Needs the webdataset package (pip install 'ddpm[shards]').
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.cli._common import positive_int
from ddpm.data.folder import find_images, first_image_shape
from ddpm.data.shards import write_shards
from ddpm.errors import UserError
from ddpm.io import say

EXAMPLES = (
    "ddpm prepare-data ~/paintings --out shards/paintings --size 256\n"
    "ddpm train --data shards/paintings --preset ddpm-256 --out runs/paintings\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("prepare-data", help="write a folder of images as tar shards to stream from (large sets)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a folder of images (searched recursively; class = first sub-folder)")
    p.add_argument("--out", required=True, help="the new shard folder")
    p.add_argument("--size", type=positive_int("--size"), required=True, help="square size to fit images to")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 grey or 3 RGB (default: the first image's)")
    p.add_argument("--shard-size", type=positive_int("--shard-size"), default=1000,
                   help="images per shard (default: 1000); at least one shard per process and worker")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    channels = args.channels
    if channels is None:
        paths = find_images(args.source) if Path(args.source).is_dir() else []
        if not paths:
            raise UserError(f"no images in {args.source}")
        channels = first_image_shape(paths[0])[1]
    meta = write_shards(args.source, args.out, (args.size, args.size), channels, shard_size=args.shard_size,
                        progress=not args.no_progress)
    labels = f", {len(meta['classes'])} classes" if meta["classes"] else ""
    say(f"wrote {meta['count']} images ({args.size}x{args.size}x{channels}{labels}) in {len(meta['shards'])} "
          f"shard(s) to {args.out}; train with: ddpm train --data {args.out}")
    return 0
