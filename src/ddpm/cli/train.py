"""``ddpm train``: Algorithm 1 on a data set, writing checkpoints, sample grids and a loss log."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.cli._common import add_device, add_speed_flags, positive_int
from ddpm.config import ADAMW_IMPLS

# flag -> (config section, field). A config file may set any of these too.
TRAIN_FLAGS = {
    "data": ("train", "data"), "data_dir": ("train", "data_dir"),
    "skip_bad_images": ("train", "skip_bad_images"), "steps": ("train", "steps"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("train", "seed"),
    "device": ("train", "device"), "ema_decay": ("train", "ema_decay"),
    "sample_every": ("train", "sample_every"), "checkpoint_every": ("train", "checkpoint_every"),
    "log_every": ("train", "log_every"), "schedule": ("diffusion", "schedule"),
    "timesteps": ("diffusion", "timesteps"), "prediction": ("diffusion", "prediction"),
    "variance": ("diffusion", "variance"), "loss": ("diffusion", "loss"), "p_uncond": ("train", "p_uncond"),
    "precision": ("train", "precision"), "memory_format": ("train", "memory_format"),
    "compile": ("train", "compile"), "adamw_impl": ("train", "adamw_impl"),
}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (Algorithm 1)", description=__doc__)
    p.add_argument("--data", help="digits | mnist | fashion-mnist | cifar10 | a folder of images | "
                   "hf:NAME[:SPLIT] (default: digits)")
    p.add_argument("--data-dir", help="folder holding a named set's original files (MNIST IDX files, "
                   "CIFAR-10 batches); without it they are downloaded")
    p.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="leave unreadable images out with a warning instead of stopping")
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
    p.add_argument("--variance", choices=["beta", "beta_tilde", "learned", "learned_range"],
                   help="reverse-process variance: fixed (Ho et al.) or output by the network (Improved DDPM)")
    p.add_argument("--loss", choices=["simple", "hybrid", "vlb"],
                   help="L_simple | L_simple + 0.001 L_vlb (needs a learned variance) | L_vlb with loss-aware t")
    p.add_argument("--sample-every", type=int, help="steps between sample grids (0: only at the end)")
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"))
    p.add_argument("--log-every", type=positive_int("--log-every"))
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional model: num_classes from the (labelled) data set, labels dropped with "
                   "probability --p-uncond for classifier-free guidance")
    p.add_argument("--p-uncond", type=float, help="share of labels replaced by 'no label' (default: 0.1)")
    add_speed_flags(p)
    p.add_argument("--adamw-impl", choices=ADAMW_IMPLS, help="AdamW implementation (default: auto, fused where "
                   "PyTorch has the kernel)")
    p.add_argument("--out", default="runs/digits", help="run folder (default: runs/digits)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_device(p)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """Preset, then config file, then flags; on --resume the run's own config, then flags."""
    from ddpm.config import RunConfig, derive, read_config_file, update
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
    return derive(cfg)  # out_channels etc. follow from the final settings


def run(args: argparse.Namespace) -> int:
    from ddpm.training.loop import train

    cfg = resolve_config(args)
    data = _make_conditional(cfg) if args.conditional else None
    if args.p_uncond is not None and not cfg.model.num_classes:
        from ddpm.errors import UserError

        raise UserError("--p-uncond applies to a class-conditional model; add --conditional")
    out = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, data=data)
    print(f"run saved to {out}; sample with: ddpm sample --checkpoint {out}")
    return 0


def _make_conditional(cfg):
    """Set ``num_classes`` from the data set (loaded once here and handed to the loop); an unlabelled set
    is a one-line error."""
    from ddpm.data.datasets import load_dataset
    from ddpm.errors import UserError

    tc = cfg.train
    data = load_dataset(tc.data, tc.data_dir, image_size=cfg.model.image_size, channels=cfg.model.in_channels,
                        skip_bad_images=tc.skip_bad_images)
    if data.labels is None or not data.num_classes:
        raise UserError(f"--conditional needs a labelled data set (a folder with one sub-folder per class); "
                        f"{data.name} has no labels")
    if cfg.model.num_classes not in (None, data.num_classes):
        raise UserError(f"the run has {cfg.model.num_classes} classes, data set {data.name} has {data.num_classes}")
    cfg.model.num_classes = data.num_classes
    return data
