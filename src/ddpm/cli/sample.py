"""``ddpm sample``: draw images from a trained run by Algorithm 2, DDIM or DPM-Solver++(2M) (ODE or SDE).

``--sampler ddim|dpm++2m|dpm++2m-sde --steps K`` makes K network calls instead of T. The grid starts at
T-1 whatever K is; ``--grid`` spaces it evenly in t down to 0, by T/K down to T/K - 1 ("trailing", DDIM's
default), quadratically, or evenly in log-SNR.

Writes DIR/grid.png, one PNG per sample (DIR/sample_00000.png ...) and DIR/samples.npz holding one
uint8 array ``arr_0`` of shape (N, H, W, C). Sample i is drawn from seed S + i alone, so any image can
be drawn again by itself, whatever the batch size.

A class-conditional run (``ddpm train --conditional``) draws ``--class K`` or ``--classes all`` (``--n``
per class, default 8; grid.png has one row per class; labels.json lists each sample's class), with
classifier-free guidance of strength ``--guidance W`` (Ho & Salimans 2022). ``--classifier PATH
--classifier-scale S`` adds classifier guidance with a noisy classifier (``ddpm train-classifier
--noisy``; Dhariwal & Nichol 2021, Algorithm 1 for ancestral sampling, 2 for the others), which also
steers an unconditional run.

A text run (``ddpm train --text-encoder trained``, e.g. on ``--data mnist-pairs``) draws ``--prompt TEXT``
(``--n`` images) or the prompts of ``--prompts-file FILE`` (one a line; ``--n`` per prompt, default 8;
grid.png has one row per prompt), guided by ``--guidance W`` towards them; prompts.json lists each
sample's prompt. A latent run (``ddpm train --autoencoder AE``) samples latents and decodes them with the
autoencoder it keeps.

``--precision``, ``--memory-format`` and ``--compile`` (default: the run's runtime settings, "auto" = the
device's defaults: bf16 autocast where the hardware has it) set how the network runs (``ddpm.runtime``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ddpm.cli._common import (
    add_config_flags,
    add_runtime_flags,
    config_values,
    parse_ints,
    positive_int,
    runtime_config,
)
from ddpm.errors import UserError
from ddpm.io import progress_bar, save_npz_atomic, say, write_text_atomic
from ddpm.models.classifier import load_noisy_classifier
from ddpm.pipeline import GuidanceOptions, Run, SamplingOptions, load_run
from ddpm.sampling.guidance import check_labels
from ddpm.sampling.noise import seed_generators
from ddpm.training import distributed as dist
from ddpm.viz.figures import resolve_steps
from ddpm.viz.grid import save_grid, save_image, to_uint8
from ddpm.viz.process import TrajectoryRecorder, nearest_on_grid

EXAMPLES = (
    "ddpm sample --checkpoint runs/digits --n 64\n"
    "ddpm sample --checkpoint runs/digits --sampler dpm++2m --steps 20 --trajectory\n"
    "ddpm sample --checkpoint runs/cdigits --classes all --guidance 3\n"
    "ddpm sample --checkpoint runs/pairs --prompt 'a 3 to the left of a 7' --guidance 3 --sampler dpm++2m --steps 20\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a trained run (Algorithm 2)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder (or its ema.safetensors)")
    p.add_argument("--n", "--num-samples", type=positive_int("--n"),
                   help="number of samples (default: 64; with --classes, per class, default 8); under torchrun "
                   "spell it --num-samples, as torchrun takes --n for its own flags")
    p.add_argument("--class", dest="class_", type=int, metavar="K", help="draw class K (0-based)")
    p.add_argument("--classes", help="'all' (a grid with one row per class) or comma-separated classes")
    p.add_argument("--prompt", help="text run: the caption to draw")
    p.add_argument("--prompts-file", metavar="FILE", help="text run: one prompt a line; a grid row per prompt")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED + i (default: 0)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=256)
    p.add_argument("--trajectory", action="store_true",
                   help="also write trajectory.png (x_t and the predicted x0 at --trajectory-steps for the first "
                   "8 samples) and trajectory.gif (the whole reverse process)")
    p.add_argument("--trajectory-steps", help="0-based steps for trajectory.png (default: 999,750,500,250,100,0 "
                   "scaled to T; T means T-1); a step off the sampler's grid moves to the nearest one on it")
    p.add_argument("--out", help="output folder (default: RUN/samples-seedSEED)")
    add_config_flags(p, SamplingOptions, title="sampler")
    guidance = add_config_flags(p, GuidanceOptions, title="guidance", show_defaults=False)
    guidance.add_argument("--classifier",
                          help="noisy classifier for classifier guidance (ddpm train-classifier --noisy)")
    add_runtime_flags(p, of_run=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Under torchrun each rank draws its block of the seeds and rank 0 writes them all."""
    sampling = SamplingOptions(**config_values(args, SamplingOptions))
    env, device = dist.start(args.device or "auto")
    try:
        return _run(args, sampling, env, device)
    finally:
        dist.teardown(env)


def _run(args: argparse.Namespace, sampling: SamplingOptions, env: dist.DistEnv, device) -> int:
    run_ = load_run(args.checkpoint, device)
    runtime = runtime_config(args, run_.config.runtime)
    guidance = GuidanceOptions(args.scale, _classifier(args, run_), args.classifier_scale or 0.0)
    labels, per_class = _prompts(args, run_) if run_.config.model.text_encoder != "none" else _labels(args, run_,
                                                                                                     guidance)
    run_.grid(sampling)  # a bad --steps is reported now, not after the first batch's progress bar
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"samples-seed{args.seed}"

    wants_trajectory = args.trajectory or args.trajectory_steps is not None
    if wants_trajectory and run_.first_stage is not None:
        raise UserError("--trajectory draws images along the way; a latent run's steps are latents (not yet shown)")
    recorder, grid = _trajectory_recorder(args, run_, sampling) if wants_trajectory else (None, None)
    shape = run_.image_shape
    batches = [np.zeros((0, *shape[1:], shape[0]), np.uint8)]
    mine = dist.shard(args.n, env)
    for start in progress_bar(range(mine.start, mine.stop, args.batch_size), desc="batches", unit="batch",
                      disable=not env.is_main):
        count = min(args.batch_size, mine.stop - start)
        gens = seed_generators(range(args.seed + start, args.seed + start + count))
        x = run_.sample(count, generator=gens, sampling=sampling, guidance=guidance, runtime=runtime,
                        y=None if labels is None else labels[start:start + count], timesteps=grid,
                        callback=recorder if start == 0 else None)
        if recorder is not None and start == 0:
            for path in recorder.save(x, out / "trajectory.png", out / "trajectory.gif"):
                say(f"wrote {path}")
        batches.append(to_uint8(x))
    images = dist.gather_shards(torch.from_numpy(np.concatenate(batches)), args.n, env).numpy()
    if not env.is_main:
        return 0
    for i, img in enumerate(images):
        save_image(img, out / f"sample_{i:05d}.png")
    save_grid(images if per_class else images[:256], out / "grid.png", nrow=per_class)
    if isinstance(labels, list):  # prompts
        write_text_atomic(out / "prompts.json", json.dumps(labels, indent=0) + "\n")
    elif labels is not None:
        write_text_atomic(out / "labels.json", json.dumps(labels.tolist()) + "\n")
    save_npz_atomic(out / "samples.npz", images)
    say(f"wrote {len(images)} samples to {out} (grid.png, sample_*.png, samples.npz)")
    return 0


def _trajectory_recorder(args: argparse.Namespace, run_: Run, sampling: SamplingOptions):
    """The callback recording --trajectory for the first 8 samples, and the grid it records on."""
    T, grid = run_.schedule.num_timesteps, run_.grid(sampling)
    if args.trajectory_steps:
        wanted = parse_ints(args.trajectory_steps, "--trajectory-steps")
    else:
        wanted = [T - 1, round(0.75 * T), round(0.5 * T), round(0.25 * T), round(0.1 * T), 0]
    steps = nearest_on_grid(resolve_steps(wanted, T), grid)
    return TrajectoryRecorder(steps, grid, k=min(8, args.n)), grid


def _classifier(args: argparse.Namespace, run_: Run):
    """The noisy classifier of --classifier (checked against the run's diffusion), or None."""
    if (args.classifier is None) != (args.classifier_scale is None):
        raise UserError("--classifier PATH and --classifier-scale S go together")
    if args.classifier is None:
        return None
    classifier, _ = load_noisy_classifier(args.classifier, run_.device, diffusion=run_.config.diffusion)
    have = (classifier.config.in_channels, *classifier.config.image_size)
    if run_.shape != have:
        want = run_.shape
        raise UserError(f"the classifier takes {have[0]}x{have[1]}x{have[2]} images, the model draws "
                        f"{want[0]}x{want[1]}x{want[2]}")
    return classifier


def _prompts(args: argparse.Namespace, run_: Run) -> tuple[list[str] | None, int | None]:
    """(the prompt of each sample, samples per prompt for a --prompts-file grid); sets args.n to the total.
    Without a prompt a text run draws from the empty caption (unconditional)."""
    if args.class_ is not None or args.classes is not None:
        raise UserError("this run is conditioned on text: give --prompt or --prompts-file, not classes")
    if args.prompt is not None and args.prompts_file is not None:
        raise UserError("give --prompt or --prompts-file, not both")
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        try:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read prompts file {path}: {e}") from None
        if not prompts:
            raise UserError(f"prompts file {path} holds no prompt")
        per_prompt = args.n or 8
        args.n = per_prompt * len(prompts)
        return [p for p in prompts for _ in range(per_prompt)], per_prompt
    args.n = args.n or 64
    if args.prompt is None:
        if args.scale is not None:
            raise UserError("classifier-free guidance needs a prompt to guide towards (--prompt)")
        return None, None
    return [args.prompt] * args.n, None


def _labels(args: argparse.Namespace, run_: Run, guidance: GuidanceOptions):
    """(labels (n,) or None, samples per class for a --classes grid or None); sets args.n to the total.

    The one-line errors: a class the model (or classifier) does not know, classes or guidance asked of
    an unconditional model."""
    if args.class_ is not None and args.classes is not None:
        raise UserError("give --class K or --classes, not both")
    classifier = guidance.classifier
    num_classes = run_.config.model.num_classes
    known = num_classes or (classifier.config.num_classes if classifier is not None else None)
    labels, per_class = None, None
    if args.class_ is not None:
        args.n = args.n or 64
        labels = torch.full((args.n,), args.class_, dtype=torch.long)
    elif args.classes is not None:
        if args.classes.strip() == "all":
            if not known:
                raise UserError("--classes all needs a class-conditional model or a --classifier; "
                                "this model is unconditional")
            classes = list(range(known))
        else:
            classes = parse_ints(args.classes, "--classes")
        per_class = args.n or 8
        labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)
        args.n = len(labels)
    else:
        args.n = args.n or 64
    if classifier is not None and labels is None:
        raise UserError("classifier guidance needs the classes to draw (--class K or --classes all)")
    check_labels(num_classes, labels, guidance=guidance.scale,
                 classifier_classes=None if classifier is None else classifier.config.num_classes)
    return labels, per_class
