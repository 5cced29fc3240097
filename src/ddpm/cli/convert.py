"""``ddpm convert``: checkpoints in and out of diffusers' format.

``--from-diffusers DIR --out RUN`` turns a diffusers ``UNet2DModel`` + ``DDPMScheduler`` folder (Ho et
al.'s google/ddpm-cifar10-32, ddpm-celebahq-256, ddpm-church-256, ddpm-bedroom-256, ddpm-cat-256, their
-ema variants, or your own; either folder layout) into a run folder that every command takes:

    ddpm convert --from-diffusers ddpm-cifar10-32 --out runs/ho-cifar10
    ddpm sample --checkpoint runs/ho-cifar10 --n 16 --sampler ddim --steps 100

``--to-diffusers RUN --out DIR`` writes a run as a DDPMPipeline folder (unet/, scheduler/,
model_index.json) that diffusers' ``DDPMPipeline.from_pretrained(DIR)`` loads. Weights are read with
safetensors or ``torch.load(weights_only=True)``, never by unpickling code; a setting one side cannot
express is a one-line error naming it.
"""

from __future__ import annotations

import argparse

from ddpm.convert import export_diffusers, import_diffusers
from ddpm.io import say

EXAMPLES = (
    "ddpm convert --from-diffusers ddpm-cifar10-32 --out runs/ho-cifar10\n"
    "ddpm convert --to-diffusers runs/digits --out diffusers/digits\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert checkpoints from and to diffusers' format (Ho et al.'s models)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-diffusers", metavar="DIR", help="a diffusers UNet2DModel + DDPMScheduler folder")
    src.add_argument("--to-diffusers", metavar="RUN", help="a run folder (or its ema.safetensors)")
    p.add_argument("--out", required=True, help="the run folder (--from-diffusers) or diffusers folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.from_diffusers:
        out = import_diffusers(args.from_diffusers, args.out)
        say(f"wrote run {out}; sample with: ddpm sample --checkpoint {out}")
    else:
        out = export_diffusers(args.to_diffusers, args.out)
        say(f"wrote diffusers DDPMPipeline folder {out}")
    return 0
