"""``ddpm train-classifier``: a small image classifier whose features give a domain FID (``ddpm evaluate
--features classifier --classifier PATH``). Reports its accuracy on a held-out share of the data.

Writes PATH/classifier.safetensors (weights, config in its metadata) and PATH/classifier.json.

With ``--noisy`` it trains instead the noise-aware classifier p(y | x_t, t) of classifier guidance
(Dhariwal & Nichol 2021): the U-Net's downsampling half conditioned on t, trained on x_t at uniform t of
the diffusion given by ``--schedule``/``--timesteps`` (those of the model it will guide); use it with
``ddpm sample --class K --classifier PATH --classifier-scale S``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ddpm.cli._common import add_config_flags, add_runtime_flags, device_of, positive_int
from ddpm.config import update
from ddpm.data.datasets import load_dataset
from ddpm.errors import UserError
from ddpm.evaluation.classifier import ClassifierTrainConfig, save_classifier, train_classifier
from ddpm.training.noisy_classifier import NoisyClassifierTrainConfig, save_noisy_classifier, train_noisy_classifier

# flag -> field of ClassifierTrainConfig (or of its .model when prefixed "model."). New options (e.g. a
# time-conditioned classifier on noisy inputs) add a flag in add_parser and a line here.
CLASSIFIER_FLAGS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "held_out": "held_out", "seed": "seed",
    "feature_dim": "model.feature_dim",
}
# flag -> field of NoisyClassifierTrainConfig (ddpm.training.noisy_classifier), for --noisy.
NOISY_FLAGS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "held_out": "held_out", "seed": "seed",
    "schedule": "schedule", "timesteps": "timesteps", "base_channels": "base_channels",
}
NOISY_ONLY = ("schedule", "timesteps", "base_channels")


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a classifier for classifier-feature metrics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="labelled data set name (default: digits)")
    p.add_argument("--data-dir", help="folder holding the data set's files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=positive_int("--epochs"))
    p.add_argument("--batch-size", type=positive_int("--batch-size"))
    p.add_argument("--lr", type=float)
    p.add_argument("--held-out", type=float, help="share of the data held out for the accuracy (default: 0.2)")
    p.add_argument("--feature-dim", type=positive_int("--feature-dim"), help="width of the feature layer")
    p.add_argument("--seed", type=int)
    p.add_argument("--noisy", action="store_true",
                   help="train the noise-aware classifier p(y | x_t, t) for classifier guidance instead")
    add_config_flags(p, NoisyClassifierTrainConfig, only=NOISY_ONLY)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_runtime_flags(p, only=("device",))
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    cfg = ClassifierTrainConfig(device=str(device_of(args)))
    top, model = {}, {}
    for flag, name in CLASSIFIER_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            if name.startswith("model."):
                model[name.removeprefix("model.")] = value
            else:
                top[name] = value
    if model:
        top["model"] = {**asdict(cfg.model), **model}
    return update(cfg, top, "classifier")


def run(args: argparse.Namespace) -> int:
    if args.noisy:
        return _run_noisy(args)
    for flag in NOISY_ONLY:
        if getattr(args, flag, None) is not None:
            raise UserError(f"--{flag.replace('_', '-')} applies to --noisy classifiers")
    cfg = resolve_config(args)
    data = load_dataset(args.data, args.data_dir)
    model, info = train_classifier(data, cfg, progress=not args.no_progress)
    out = save_classifier(model, args.out, info)
    print(f"held-out accuracy {info['held_out_accuracy']:.4f} on {info['num_held_out']} {data.name} images; "
          f"classifier saved to {out}")
    return 0


def _run_noisy(args: argparse.Namespace) -> int:
    if args.feature_dim is not None:
        raise UserError("--feature-dim applies to the clean-image classifier, not --noisy")
    values = {name: getattr(args, flag) for flag, name in NOISY_FLAGS.items() if getattr(args, flag, None) is not None}
    cfg = update(NoisyClassifierTrainConfig(device=str(device_of(args))), values,
                 "noisy classifier")
    data = load_dataset(args.data, args.data_dir)
    model, info = train_noisy_classifier(data, cfg, progress=not args.no_progress)
    out = save_noisy_classifier(model, args.out, {"schedule": cfg.schedule, "timesteps": cfg.timesteps}, info)
    by_quarter = ", ".join("-" if a is None else f"{a:.3f}" for a in info["held_out_accuracy_by_quarter"])
    print(f"held-out accuracy {info['held_out_accuracy']:.4f} on noisy {data.name} images at uniform t "
          f"({info['held_out_accuracy_t0']:.4f} at t = 0; by quarter of t: {by_quarter}); classifier saved to {out}")
    return 0
