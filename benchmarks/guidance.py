"""Issue 7's table: how strongly guidance makes a model draw the requested class, and what it costs in
sample quality (the fidelity/diversity trade-off of Ho & Salimans 2022, Fig. 1, and Dhariwal & Nichol
2021, Fig. 3), on the 8x8 digits or MNIST.

1. A class-conditional model (``ddpm train --conditional``, labels dropped with p_uncond = 0.1; or
   ``--checkpoint RUN``) and a noisy classifier p(y | x_t, t) (``ddpm train-classifier --noisy``; or
   ``--classifier PATH``) for its schedule.
2. For each setting, ``--n-per-class`` samples of every class from the same seeds (sample i of class k
   is seed SEED + k * n + i), with a fast sampler (DDIM, 50 steps by default):
   - classifier-free guidance w in ``--guidance`` (default 0, 1, 2, 4) on the conditional model;
   - classifier guidance at scales ``--classifier-scales`` (Algorithm 2 through the score for DDIM /
     DPM-Solver++, Algorithm 1 for ``--sampler ancestral``) on the unconditional model;
   - the unconditional model alone (its classifier-FID is the reference the issue asks to match).
   The unconditional model is ``--uncond-checkpoint RUN`` when given, else the conditional model's own
   "no label" entry (trained on the 10% of steps whose label was dropped).
3. An INDEPENDENT classifier (``ddpm.evaluation``'s small CNN trained on clean images, cached in
   $DDPM_CACHE; not the guidance one) scores each set: the share of samples it assigns to the requested
   class ("accuracy") and the Frechet distance of its features to all real images (classifier-FID).

Writes OUT/results.json, OUT/results.md (one table), OUT/tradeoff.png (accuracy against FID, one curve
per kind of guidance, the unconditional FID as a line) and OUT/<setting>.png (a grid, one row per class).
Issue 7's target: at least 97% of samples of the requested class at the best setting, with a
classifier-FID no worse than the unconditional model's.

Full runs, as measured for the README (2 CPU cores; digits, with the unconditional run of
``quality.py --n 3000``: 23 min in all; MNIST: 56 min, a test run beside it included):

    .venv/bin/python benchmarks/guidance.py --uncond-checkpoint bench_out/q3k/ours --n-per-class 300 \\
        --out bench_out/guidance_digits
    .venv/bin/python benchmarks/guidance.py --data mnist --data-dir ../shared/data/mnist --n-per-class 100 \\
        --classifier-scales 2,4,8 --classifier-epochs 15 --classifier-base-channels 16 --out bench_out/guidance_mnist

Tiny smoke run (seconds; keeps its evaluation classifier out of the real cache):

    DDPM_CACHE=/tmp/ddpm-cache .venv/bin/python benchmarks/guidance.py --train-steps 20 --timesteps 50 \\
        --classifier-epochs 1 --classifier-base-channels 8 --eval-classifier-epochs 1 --n-per-class 4 \\
        --steps 5 --out /tmp/guidance
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ddpm.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import provenance, provenance_lines  # noqa: E402  (CPU model and flags, the command)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits", help="digits | mnist (default: digits)")
    p.add_argument("--data-dir", help="folder of the data set's files (MNIST IDX files)")
    p.add_argument("--checkpoint", help="a conditional run to evaluate instead of training one")
    p.add_argument("--uncond-checkpoint", help="an unconditional run for the reference and classifier guidance "
                   "(default: the conditional model's 'no label' entry)")
    p.add_argument("--classifier", help="a noisy classifier (ddpm train-classifier --noisy) instead of training one")
    p.add_argument("--train-steps", type=int, help="training steps of the conditional model (default: the preset's)")
    p.add_argument("--timesteps", type=int, default=1000, help="T of a model trained here (default: 1000)")
    p.add_argument("--p-uncond", type=float, default=0.1, help="label dropout of a model trained here")
    p.add_argument("--classifier-epochs", type=int, default=40, help="noisy classifier epochs (default: 40)")
    p.add_argument("--classifier-base-channels", type=int, help="noisy classifier width (default: the preset's)")
    p.add_argument("--eval-classifier-epochs", type=int, help="independent classifier epochs (default: its own)")
    p.add_argument("--guidance", default="0,1,2,4", help="classifier-free guidance strengths w")
    p.add_argument("--classifier-scales", default="1,2,4,8", help="classifier guidance scales s")
    p.add_argument("--n-per-class", type=int, default=100, help="samples per class and setting (default: 100)")
    p.add_argument("--sampler", default="ddim", help="ddim | dpm++2m | ancestral (default: ddim)")
    p.add_argument("--steps", type=int, default=50, help="network calls per sample (default: 50)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/guidance")
    return p.parse_args(argv)


class NoLabel(nn.Module):
    """A conditional U-Net seen through its "no label" entry: an unconditional model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, t, y=None):
        return self.model(x, t)


def conditional_run(args, data, out: Path, device):
    from ddpm.pipeline import load_run
    from ddpm.presets import make_config, preset_for_data
    from ddpm.training.loop import train

    if args.checkpoint:
        return load_run(args.checkpoint, device), {"source": args.checkpoint}
    cfg = make_config(preset_for_data(data.name))
    cfg.model.num_classes = data.num_classes
    cfg.diffusion.timesteps = args.timesteps
    cfg.train.data, cfg.train.data_dir, cfg.runtime.device = data.name, args.data_dir, str(device)
    cfg.train.p_uncond = args.p_uncond
    cfg.train.sample_every = 0
    if args.train_steps:
        cfg.train.steps = args.train_steps
        cfg.train.warmup_steps = min(cfg.train.warmup_steps, args.train_steps // 4)
    run_dir = out / "conditional"
    if (run_dir / "checkpoint.safetensors").exists():
        raise SystemExit(f"{run_dir} already holds a run: pass --checkpoint {run_dir} to reuse it, or remove it")
    t0 = time.perf_counter()
    train(cfg, run_dir, data=data)
    return load_run(run_dir, device), {"source": "trained", "train_seconds": time.perf_counter() - t0,
                                       "steps": cfg.train.steps, "p_uncond": cfg.train.p_uncond}


def noisy_classifier(args, data, run, out: Path, device):
    from ddpm.models.classifier import load_noisy_classifier, save_noisy_classifier
    from ddpm.training.noisy_classifier import (
        NoisyClassifierTrainConfig,
        train_noisy_classifier,
    )

    path = args.classifier
    if not path:
        d = run.config.diffusion
        cfg = NoisyClassifierTrainConfig(epochs=args.classifier_epochs, seed=args.seed, device=str(device),
                                         schedule=d.schedule, timesteps=d.timesteps,
                                         base_channels=args.classifier_base_channels)
        t0 = time.perf_counter()
        model, info = train_noisy_classifier(data, cfg)
        info["train_seconds"] = time.perf_counter() - t0
        path = save_noisy_classifier(model, out / "noisy_classifier", {"schedule": d.schedule,
                                                                       "timesteps": d.timesteps}, info)
    return load_noisy_classifier(path, device, diffusion=run.config.diffusion)


def unconditional_run(args, run, device):
    """(the unconditional run, its name in the table): --uncond-checkpoint, or the conditional model's "no
    label" entry."""
    from ddpm.pipeline import Run, load_run

    if args.uncond_checkpoint:
        return load_run(args.uncond_checkpoint, device), f"run {args.uncond_checkpoint}"
    uncond_cfg = copy.deepcopy(run.config)
    uncond_cfg.model.num_classes = None
    return Run.of(NoLabel(run.model).eval(), uncond_cfg), "the conditional model's 'no label' entry"


def evaluate_setting(name: str, run, args, sampling, guidance, extractor, ref, K: int, labels, out: Path,
                     device) -> dict:
    """The row of ``name``: ``run`` sampled with ``guidance`` (its strength or scale shown in the row), n
    samples for each of the ``K`` classes from seeds SEED + k n, ...; ``labels`` (None: unconditional) are
    the classes asked for, which the accuracy compares with the evaluation classifier's."""
    from ddpm.evaluation.features import extract
    from ddpm.evaluation.report import compute_metrics
    from ddpm.evaluation.samples import generate_samples
    from ddpm.viz.grid import save_grid

    n = args.n_per_class
    t0 = time.perf_counter()
    xs = [generate_samples(run, n, seed=args.seed + k * n, batch_size=args.batch_size, progress=False,
                           y=None if labels is None else k, sampling=sampling, guidance=guidance) for k in range(K)]
    x = torch.cat(xs)
    seconds = time.perf_counter() - t0
    save_grid(x.view(K, n, *x.shape[1:])[:, :10].reshape(-1, *x.shape[1:]), out / f"{name}.png", nrow=min(n, 10))
    feats, logits = extract(extractor, x, device=device, progress=False)
    row = {"setting": name, **compute_metrics(["fid"], feats, logits, ref, seed=args.seed),  # fid, fid_se
           "sample_seconds": seconds}
    if guidance.scale is not None:
        row["guidance"] = guidance.scale
    if guidance.classifier is not None:
        row["classifier_scale"] = guidance.classifier_scale
    if labels is not None:
        row["accuracy"] = (logits.argmax(1) == labels).float().mean().item()
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> dict:
    from ddpm.cli._common import parse_floats
    from ddpm.data.datasets import load_dataset
    from ddpm.evaluation.classifier import ClassifierTrainConfig
    from ddpm.evaluation.features import extract
    from ddpm.evaluation.metrics import frechet_distance
    from ddpm.evaluation.reference import classifier_reference, real_floor_images
    from ddpm.io import resolve_device
    from ddpm.pipeline import GuidanceOptions, Run, SamplingOptions

    args = parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, args.data_dir)
    if not data.num_classes:
        raise SystemExit(f"{args.data} has no labels")
    K, n = data.num_classes, args.n_per_class

    run, run_info = conditional_run(args, data, out, device)
    if run.config.model.num_classes != K:
        raise SystemExit(f"{args.checkpoint} is not a conditional model of the {K} classes of {data.name}")
    uncond, uncond_name = unconditional_run(args, run, device)
    guide_clf, guide_info = noisy_classifier(args, data, run, out, device)

    eval_cfg = ClassifierTrainConfig(**({"epochs": args.eval_classifier_epochs} if args.eval_classifier_epochs else {}))
    extractor, ref = classifier_reference(data, cfg=eval_cfg, device=device)
    labels = torch.arange(K).repeat_interleave(n)

    sampling = SamplingOptions(args.sampler, steps=args.steps)

    def evaluate(name: str, run: Run, *, conditional: bool, guidance: GuidanceOptions = GuidanceOptions()) -> dict:
        return evaluate_setting(name, run, args, sampling, guidance, extractor, ref, K,
                                labels if conditional else None, out, device)

    rows = [evaluate("unconditional", uncond, conditional=False)]
    for w in parse_floats(args.guidance, "--guidance"):
        rows.append(evaluate(f"cfg_w{w:g}", run, conditional=True, guidance=GuidanceOptions(scale=w)))
    for s in parse_floats(args.classifier_scales, "--classifier-scales"):
        rows.append(evaluate(f"classifier_s{s:g}", uncond, conditional=True,
                             guidance=GuidanceOptions(classifier=guide_clf, classifier_scale=s)))

    real, real_label = real_floor_images(data, K * n, args.seed)
    results = {
        "data": data.name, "n_per_class": n, "sampler": args.sampler, "steps": args.steps,
        "conditional": run_info | {"timesteps": run.config.diffusion.timesteps},
        "unconditional": uncond_name,
        "guidance_classifier": {k: guide_info.get(k) for k in ("held_out_accuracy", "held_out_accuracy_by_quarter",
                                                               "held_out_accuracy_t0", "train_seconds")},
        "eval_classifier_held_out_accuracy": extractor.info.get("held_out_accuracy"),
        "fid_real_floor": frechet_distance(ref.fid, extract(extractor, real, device=device, progress=False)[0]),
        "fid_real_floor_images": real_label,
        "rows": rows,
        **provenance("guidance.py", argv, device),
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", to_markdown(results))
    plot(results, out / "tradeoff.png")
    print(to_markdown(results))
    return results


def to_markdown(r: dict) -> str:
    lines = [f"{r['data']}: {r['n_per_class']} samples per class and setting, {r['sampler']} with {r['steps']} "
             f"steps. Accuracy: share of samples an independent classifier (held-out accuracy "
             f"{r['eval_classifier_held_out_accuracy']:.3f}) assigns to the requested class; classifier-FID to "
             f"all real images (real-data floor at this sample size {r['fid_real_floor']:.3f}, from "
             f"{r['fid_real_floor_images']} real images). Unconditional model: {r['unconditional']}. "
             f"Noisy guidance classifier held-out accuracy at uniform t: "
             f"{r['guidance_classifier']['held_out_accuracy']:.3f}.", "",
             "| setting | guidance w | classifier scale s | accuracy | classifier-FID ± SE | sample s |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        acc = f"{row['accuracy']:.3f}" if "accuracy" in row else "-"
        w = f"{row['guidance']:g}" if "guidance" in row else "-"
        s = f"{row['classifier_scale']:g}" if "classifier_scale" in row else "-"
        lines.append(f"| {row['setting']} | {w} | {s} | {acc} | {row['fid']:.3f} ± {row['fid_se']:.3f} | "
                     f"{row['sample_seconds']:.0f} |")
    lines += ["", *provenance_lines(r)]
    return "\n".join(lines).rstrip() + "\n"


def plot(r: dict, path: Path) -> None:
    """Accuracy against classifier-FID (± its bootstrap standard error), one curve per kind of guidance; the
    unconditional FID as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for key, label, marker in (("guidance", "classifier-free (w)", "o"), ("classifier_scale", "classifier (s)", "s")):
        rows = [row for row in r["rows"] if key in row]
        if not rows:
            continue
        fids, accs = [row["fid"] for row in rows], [row["accuracy"] for row in rows]
        ax.errorbar(fids, accs, xerr=[row["fid_se"] for row in rows], marker=marker, capsize=3, label=label)
        for row, f, a in zip(rows, fids, accs):
            ax.annotate(f"{row[key]:g}", (f, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    uncond = next(row for row in r["rows"] if row["setting"] == "unconditional")
    ax.axvline(uncond["fid"], color="grey", linestyle="--", label="unconditional FID")
    ax.axhline(0.97, color="grey", linestyle=":", label="97% target")
    ax.set_xlabel("classifier-FID (lower is better)")
    ax.set_ylabel("share of samples of the requested class")
    ax.set_title(f"Guidance on {r['data']}: fidelity vs diversity")
    ax.legend(fontsize=8)
    fig.savefig(path)


if __name__ == "__main__":
    main()
