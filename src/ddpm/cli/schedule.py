"""``ddpm schedule``: the variance schedules, linear (Ho et al. 2020) and cosine (Nichol & Dhariwal 2021).

Prints beta_t, alpha-bar_t, the signal scale sqrt(alpha-bar_t), the noise scale sqrt(1 - alpha-bar_t)
and log-SNR at a few steps; with --plot also draws them against t, the two schedules side by side.
The numbers come from ``ddpm.diffusion.schedule.make_schedule``, the code the model trains with.
"""

from __future__ import annotations

import argparse

from ddpm.cli._common import add_config_flags, picture_path
from ddpm.config import DiffusionConfig
from ddpm.errors import UserError
from ddpm.io import say
from ddpm.viz.plots import plot_schedules, schedule_table

EXAMPLES = (
    "ddpm schedule\n"
    "ddpm schedule --timesteps 4000 --plot --out schedule.png\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("schedule", help="print (and --plot) the linear and cosine variance schedules",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, DiffusionConfig, only=("timesteps",))
    p.add_argument("--plot", action="store_true", help="also draw the curves to --out")
    p.add_argument("--out", help="PNG file, or a folder (default: schedule.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out and not args.plot:
        raise UserError("--out needs --plot (without it the schedule is only printed)")
    T = args.timesteps or DiffusionConfig().timesteps
    print(schedule_table(T))
    if args.plot:
        out = plot_schedules(picture_path(args.out, "schedule.png"), T)
        say(f"wrote {out}")
    return 0
