"""Do the speed options change what the model learns? (issue 8)

Trains the digits preset once per variant and seed, with everything equal but the speed options
(``--variants``: '+'-joined option values as in ``benchmarks/speed.py``, e.g. ``fp32``, ``bf16``,
``bf16+channels_last``), samples each run with its own options, and scores the samples by classifier-FID
(``ddpm.evaluation``: the Frechet distance between penultimate features of a small digit classifier for
the samples and for all 1,797 real digits), KID and the share of confidently classified samples, as
``benchmarks/quality.py`` does. Each run is also sampled in fp32 (``fp32 sampling`` columns), which
separates what bf16 does to training from what it does to sampling.

Read a difference against the seed-to-seed spread: run two or more ``--seeds`` per variant; an option
keeps quality when its FIDs lie within the spread of the fp32 runs' FIDs.

Writes OUT/results.json and OUT/results.md; runs are OUT/<variant>-seed<S>. The full check (2,500 steps
per run, 1,000 samples by the 1,000-step ancestral sampler; about an hour on a 2-core CPU):

    .venv/bin/python benchmarks/speed_quality.py --variants fp32,bf16 --seeds 0,1 --out bench_out/speed_quality

Tiny smoke run (seconds of training; keeps its classifier out of the real cache):

    DDPM_CACHE=/tmp/ddpm-cache .venv/bin/python benchmarks/speed_quality.py --steps 20 --n 32 \\
        --sampler ddim --sample-steps 5 --classifier-epochs 1 --out /tmp/speed_quality
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import parse_variant, with_variant  # noqa: E402  (benchmarks/ is not a package)

METRICS = ["fid", "kid", "confidence"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="fp32,bf16", help="comma-separated option sets (default: fp32,bf16)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (default: 0; use two or more)")
    p.add_argument("--steps", type=int, help="training steps (default: the digits preset's)")
    p.add_argument("--n", type=int, default=1000, help="samples per run (default: 1000)")
    p.add_argument("--sampler", default="ancestral")
    p.add_argument("--sample-steps", type=int, help="sampler steps (default: all T)")
    p.add_argument("--classifier-epochs", type=int, help="epochs of the feature classifier (default: its own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench_out/speed_quality")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from ddpm.data.datasets import load_digits
    from ddpm.evaluation.classifier import ClassifierTrainConfig
    from ddpm.evaluation.features import extract
    from ddpm.evaluation.reference import classifier_reference
    from ddpm.evaluation.report import compute_metrics
    from ddpm.evaluation.samples import generate_samples
    from ddpm.io import resolve_device
    from ddpm.pipeline import SamplingOptions, load_run
    from ddpm.presets import make_config
    from ddpm.runtime import resolve_precision
    from ddpm.training.loop import train

    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    clf_cfg = ClassifierTrainConfig(**({} if args.classifier_epochs is None else {"epochs": args.classifier_epochs}))
    extractor, ref = classifier_reference(data, cfg=clf_cfg, device=device, progress=False)
    clf_info = extractor.info

    def score(images: torch.Tensor) -> dict:
        feats, logits = extract(extractor, images, progress=False)
        return compute_metrics(METRICS, feats, logits, ref, num_classes=10)

    rows = []
    for variant in args.variants.split(","):
        options = parse_variant(variant)
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = with_variant(make_config("digits"), options, device)
            cfg.train.seed = seed
            cfg.train.sample_every = 0
            if args.steps:
                cfg.train.steps = args.steps
                cfg.train.warmup_steps = min(cfg.train.warmup_steps, args.steps // 2)
                cfg.train.checkpoint_every = args.steps
            run_dir = out / f"{variant}-seed{seed}"
            t0 = time.perf_counter()
            train(cfg, run_dir, data=data, progress=False, resume=(run_dir / "checkpoint.safetensors").exists())
            wall = time.perf_counter() - t0
            run = load_run(run_dir, device)
            sample = dict(sampling=SamplingOptions(args.sampler, steps=args.sample_steps), progress=False, seed=0,
                          batch_size=500)
            t0 = time.perf_counter()
            own = generate_samples(run, args.n, **sample)  # the run's own runtime options
            sample_s = time.perf_counter() - t0
            plain = (resolve_precision(options.get("precision", "auto"), device) == "fp32"
                     and options.get("memory_format") != "channels_last")  # own sampling is already fp32
            fp32 = own if plain else generate_samples(
                run, args.n, runtime=dataclasses.replace(run.config.runtime, precision="fp32"), **sample)
            log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
            row = {"variant": variant, "seed": seed, "options": options, "steps": run.step, "train_wall_s": wall,
                   "train_images_per_s": log[-1].get("images_per_s"), "final_loss": log[-1]["loss"],
                   "sample_wall_s": sample_s, **score(own),
                   **{f"fp32_sampling_{k}": v for k, v in score(fp32).items()},
                   "max_abs_diff_own_vs_fp32_sampling": float((own - fp32).abs().max())}
            rows.append(row)
            print(json.dumps(row), flush=True)

    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "n": args.n,
              "sampler": args.sampler, "sample_steps": args.sample_steps,
              "classifier_held_out_accuracy": clf_info.get("held_out_accuracy"), "rows": rows,
              "summary": summary(rows)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def summary(rows: list[dict]) -> dict:
    """Per variant: mean FID over seeds, and the spread (max - min) of FID over seeds."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        fids = [r["fid"] for r in rows if r["variant"] == variant]
        out[variant] = {"fid_mean": statistics.fmean(fids), "fid_spread": max(fids) - min(fids), "runs": len(fids)}
    return out


def to_markdown(r: dict) -> str:
    lines = [f"# Speed options and quality: digits, {r['n']} samples per run ({r['sampler']}, "
             f"{r['sample_steps'] or 'all'} steps), {r['device']}", "",
             "| variant | seed | steps | train img/s | final loss | FID | KID | % confident | FID, fp32 sampling "
             "| max pixel diff own vs fp32 sampling |", "|" + "---|" * 10]
    for x in r["rows"]:
        rate = x["train_images_per_s"]
        lines.append(f"| {x['variant']} | {x['seed']} | {x['steps']} | {rate if rate is None else round(rate)} "
                     f"| {x['final_loss']:.4f} | {x['fid']:.3f} | {x['kid_mean']:.4f} "
                     f"| {100 * x['confident_share']:.1f} "
                     f"| {x['fp32_sampling_fid']:.3f} | {x['max_abs_diff_own_vs_fp32_sampling']:.3f} |")
    lines += ["", "| variant | runs | mean FID | FID spread over seeds |", "|---|---|---|---|"]
    for k, v in r["summary"].items():
        lines.append(f"| {k} | {v['runs']} | {v['fid_mean']:.3f} | {v['fid_spread']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
