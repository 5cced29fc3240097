"""``ddpm demo``: a local web page for a run (the optional ``[demo]`` extra: ``pip install -e ".[demo]"``).

Sample with any sampler and watch x_t and the predicted x0 change at every step, then download the grid
and the trajectory as a GIF; noise your own image by the forward process with a slider over t; walk
between two seeds or two images. Listens on 127.0.0.1 (``--host 0.0.0.0`` to share it on a network), one
job at a time, within the caps below; works with no network.
"""

from __future__ import annotations

import argparse

from ddpm.cli._common import add_runtime_flags, device_of, positive_int
from ddpm.demo.app import build, launch
from ddpm.demo.handlers import Limits
from ddpm.pipeline import load_run

EXAMPLES = (
    "ddpm demo --checkpoint runs/digits\n"
    "ddpm demo --checkpoint runs/cdigits --host 0.0.0.0 --max-images 16\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a local web page to sample, watch the reverse process and interpolate",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder (or its ema.safetensors)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    p.add_argument("--port", type=positive_int("--port"), help="port (default: a free one from 7860)")
    p.add_argument("--max-images", type=positive_int("--max-images"), default=Limits.max_images,
                   help=f"images per request at most (default: {Limits.max_images})")
    p.add_argument("--max-steps", type=positive_int("--max-steps"), default=Limits.max_steps,
                   help=f"network calls per request at most (default: {Limits.max_steps})")
    p.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_mb,
                   help=f"upload size at most (default: {Limits.max_upload_mb:g} MB)")
    add_runtime_flags(p, only=("device",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    limits = Limits(max_images=args.max_images, max_steps=args.max_steps, max_upload_mb=args.max_upload_mb)
    page = build(load_run(args.checkpoint, device_of(args)), limits)
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port or 'a free port'}; Ctrl-C stops")
    launch(page, host=args.host, port=args.port, limits=limits)
    return 0
