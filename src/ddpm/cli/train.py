"""``ddpm train``: Algorithm 1 on a data set, writing checkpoints, sample grids and a loss log."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.cli._common import add_device, positive_int

# flag -> (config section, field). A config file may set any of these too.
TRAIN_FLAGS = {
    "data": ("train", "data"), "data_dir": ("train", "data_dir"), "steps": ("train", "steps"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("train", "seed"),
    "device": ("train", "device"), "ema_decay": ("train", "ema_decay"),
    "sample_every": ("train", "sample_every"), "checkpoint_every": ("train", "checkpoint_every"),
    "log_every": ("train", "log_every"), "schedule": ("diffusion", "schedule"),
    "timesteps": ("diffusion", "timesteps"), "prediction": ("diffusion", "prediction"),
}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (Algorithm 1)", description=__doc__)
    p.add_argument("--data", help="data set name (default: digits)")
    p.add_argument("--data-dir", help="folder holding the data set's files")
    p.add_argument("--preset", help="model/training preset (default: chosen from the data set)")
    p.add_argument("--config", help="JSON or TOML file with [model], [diffusion], [train] sections")
    p.add_argument("--steps", type=positive_int("--steps"))
    p.add_argument("--batch-size", type=positive_int("--batch-size"))
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--schedule", choices=["linear", "cosine"])
    p.add_argument("--timesteps", type=positive_int("--timesteps"))
    p.add_argument("--prediction", choices=["eps", "x0", "v"])
    p.add_argument("--sample-every", type=int, help="steps between sample grids (0: only at the end)")
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"))
    p.add_argument("--log-every", type=positive_int("--log-every"))
    p.add_argument("--out", default="runs/digits", help="run folder (default: runs/digits)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_device(p)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """Preset, then config file, then flags; on --resume the run's own config, then flags."""
    from ddpm.config import RunConfig, read_config_file, update
    from ddpm.presets import make_config, preset_for_data
    from ddpm.training.checkpoint import CONFIG

    file_values = read_config_file(args.config) if args.config else {}
    if args.resume:
        path = Path(args.out) / CONFIG
        if not path.is_file():
            from ddpm.errors import UserError

            raise UserError(f"nothing to resume: no {CONFIG} in {args.out}")
        import json

        cfg = RunConfig.from_dict(json.loads(path.read_text()))
    else:
        data = args.data or file_values.get("train", {}).get("data") or "digits"
        preset = args.preset or file_values.get("preset") or preset_for_data(data)
        cfg = make_config(preset)
    sections = {k: dict(v) for k, v in file_values.items() if k in ("model", "diffusion", "train")}
    for flag, (section, name) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            sections.setdefault(section, {})[name] = value
    for section, values in sections.items():
        setattr(cfg, section, update(getattr(cfg, section), values, section))
    return cfg


def run(args: argparse.Namespace) -> int:
    from ddpm.training.loop import train

    cfg = resolve_config(args)
    out = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"run saved to {out}; sample with: ddpm sample --checkpoint {out}")
    return 0
