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

from ddpm.cli._common import add_config_flags, add_runtime_flags, config_values, device_of
from ddpm.config import update
from ddpm.data.datasets import load_dataset
from ddpm.errors import UserError
from ddpm.evaluation.classifier import ClassifierTrainConfig, train_classifier
from ddpm.models.classifier import ClassifierConfig, save_classifier, save_noisy_classifier
from ddpm.training.noisy_classifier import NoisyClassifierTrainConfig, train_noisy_classifier

# The flags only the noisy classifier takes (fields of NoisyClassifierTrainConfig); the others are the fields
# of ClassifierTrainConfig, which the noisy one shares, and the clean classifier's feature width.
NOISY_ONLY = ("schedule", "timesteps", "base_channels")
CLEAN_ONLY = ("feature_dim",)


EXAMPLES = (
    "ddpm train-classifier --data digits --out classifiers/digits\n"
    "ddpm train-classifier --noisy --data digits --out classifiers/noisy\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a classifier for classifier-feature metrics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="labelled data set name (default: digits)")
    p.add_argument("--data-dir", help="folder holding the data set's files")
    p.add_argument("--out", required=True, help="output folder")
    add_config_flags(p, ClassifierTrainConfig, skip=("model",), title="training (defaults: the clean classifier's)")
    add_config_flags(p, ClassifierConfig, only=CLEAN_ONLY)
    p.add_argument("--noisy", action="store_true",
                   help="train the noise-aware classifier p(y | x_t, t) for classifier guidance instead")
    add_config_flags(p, NoisyClassifierTrainConfig, only=NOISY_ONLY)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_runtime_flags(p, only=("device",))
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> ClassifierTrainConfig:
    cfg = ClassifierTrainConfig(device=str(device_of(args)))
    values = config_values(args, ClassifierTrainConfig)
    if args.feature_dim is not None:
        values["model"] = {**asdict(cfg.model), "feature_dim": args.feature_dim}
    return update(cfg, values, "classifier")


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
    cfg = update(NoisyClassifierTrainConfig(device=str(device_of(args))),
                 config_values(args, NoisyClassifierTrainConfig), "noisy classifier")
    data = load_dataset(args.data, args.data_dir)
    model, info = train_noisy_classifier(data, cfg, progress=not args.no_progress)
    out = save_noisy_classifier(model, args.out, {"schedule": cfg.schedule, "timesteps": cfg.timesteps}, info)
    by_quarter = ", ".join("-" if a is None else f"{a:.3f}" for a in info["held_out_accuracy_by_quarter"])
    print(f"held-out accuracy {info['held_out_accuracy']:.4f} on noisy {data.name} images at uniform t "
          f"({info['held_out_accuracy_t0']:.4f} at t = 0; by quarter of t: {by_quarter}); classifier saved to {out}")
    return 0
