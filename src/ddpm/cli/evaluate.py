"""``ddpm evaluate``: FID, KID, precision/recall, Inception Score and classifier confidence of a model.

Samples come from a run (``--checkpoint``, drawn in seeded batches: sample i from seed S + i) or from
``--samples`` (a samples.npz of ``ddpm sample`` or a folder of images); they are compared with the run's
training data or ``--reference DATA``. Prints a table and writes a JSON report.

Features: ``inception`` (the standard FID network; comparable with papers) or ``classifier`` (a small
classifier of the reference data, trained and cached on first use unless ``--classifier PATH``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import time
from pathlib import Path

from ddpm.cli._common import add_config_flags, add_runtime_flags, config_values, positive_int, runtime_config
from ddpm.data.datasets import load_dataset
from ddpm.errors import UserError
from ddpm.evaluation.features import EXTRACTORS, extract, make_extractor
from ddpm.evaluation.reference import classifier_reference, reference_stats
from ddpm.evaluation.report import SAMPLE_METRICS, check_sample_count, compute_metrics, format_table, parse_metrics
from ddpm.evaluation.samples import generate_samples, load_samples
from ddpm.io import say, write_text_atomic
from ddpm.pipeline import SamplingOptions, load_run
from ddpm.training import distributed as dist

# Metrics that need the model itself rather than its samples: name -> "module:function". The function
# is called as fn(run, dataset, n, *, device, seed, progress) and returns a dict of floats for the report.
# A metric whose module is absent from this installation is refused with a clear message.
MODEL_METRICS = {"nll": "ddpm.evaluation.nll:evaluate_nll"}
DEFAULT_METRICS = "fid,kid,precision_recall,is,confidence"
DEFAULT_N = 1000


EXAMPLES = (
    "ddpm evaluate --checkpoint runs/digits\n"
    "ddpm evaluate --checkpoint runs/digits --sampler dpm++2m --steps 20 --metrics fid,kid\n"
    "ddpm evaluate --samples runs/digits/samples-seed0/samples.npz --reference digits\n"
)  # the end of --help


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="FID / KID / precision-recall / IS of a run or of samples",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run folder (or its ema.safetensors) to sample from")
    src.add_argument("--samples", help="samples.npz (uint8 (N, H, W[, C])) or a folder of images")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help="comma-separated: fid, kid, precision_recall, is, confidence; nll where installed "
                   f"(default: {DEFAULT_METRICS})")
    p.add_argument("--n", "--num-samples", type=positive_int("--n"),
                   help=f"number of samples (default: {DEFAULT_N} from a run, all of --samples)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED + i (default: 0)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=256)
    p.add_argument("--features", choices=EXTRACTORS,
                   help="feature extractor (default: inception for RGB images of 32 px and up, else classifier)")
    p.add_argument("--classifier", help="classifier folder from `ddpm train-classifier` (default: one trained "
                   "on the reference data, cached)")
    p.add_argument("--inception-weights", help="local FID Inception weights file (pt_inception-2015-12-05)")
    p.add_argument("--reference", help="reference data set, same names as --data (default: the run's data)")
    p.add_argument("--data-dir", help="folder holding the reference data set's files")
    p.add_argument("--out", help="JSON report path (default: RUN/eval/... or next to --samples)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_flags(p, SamplingOptions, title="sampler (with --checkpoint)")
    add_runtime_flags(p, of_run=True)
    p.set_defaults(func=run)


def _known_metrics() -> tuple[str, ...]:
    return (*SAMPLE_METRICS, *MODEL_METRICS)


def _model_metric(name: str):
    """The function behind a model metric such as ``nll``, or a UserError if it is not installed."""
    module_name, fn_name = MODEL_METRICS[name].split(":")
    if importlib.util.find_spec(module_name) is None:
        raise UserError(f"metric {name} is not available in this installation ({module_name} is missing)")
    return getattr(importlib.import_module(module_name), fn_name)


def default_out(args, features: str, n: int, sampling: SamplingOptions) -> Path:
    """--out, or a name that tells apart reports of different samplers, grids and sample counts."""
    if args.out:
        return Path(args.out)
    if args.checkpoint:
        folder = Path(args.checkpoint)
        folder = folder if folder.is_dir() else folder.parent
        steps = f"-{sampling.steps}steps-{sampling.default_grid}" if sampling.steps else ""
        return folder / "eval" / f"{features}-{sampling.sampler}{steps}-n{n}-seed{args.seed}.json"
    p = Path(args.samples)
    return (p if p.is_dir() else p.parent) / f"eval-{features}-n{n}.json"


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    names = parse_metrics(args.metrics, _known_metrics())
    sample_names = [m for m in names if m in SAMPLE_METRICS]
    model_fns = {m: _model_metric(m) for m in names if m in MODEL_METRICS}
    if model_fns and not args.checkpoint:
        raise UserError(f"{', '.join(model_fns)} needs the model: pass --checkpoint, not --samples")
    sampling = SamplingOptions(**config_values(args, SamplingOptions))
    if args.samples and sampling != SamplingOptions():
        raise UserError("the sampler flags apply to sampling from --checkpoint, not to --samples")
    env, device = dist.start(args.device or "auto")  # under torchrun the ranks share the sampling
    try:
        return _run(args, names, sample_names, model_fns, sampling, env, device, progress)
    finally:
        dist.teardown(env)


def _run(args, names, sample_names, model_fns, sampling: SamplingOptions, env: dist.DistEnv, device,
         progress: bool) -> int:
    run_ = load_run(args.checkpoint, device) if args.checkpoint else None
    data_name = args.reference or (run_.config.train.data if run_ else "digits")
    if not data_name:
        raise UserError(f"the run {args.checkpoint} names no training data (a converted checkpoint?); "
                        "pass --reference DATA")
    data_dir = args.data_dir or (run_.config.train.data_dir if run_ and not args.reference else None)
    reference = load_dataset(data_name, data_dir)
    n = args.n or (DEFAULT_N if run_ else None)
    if n is not None:
        check_sample_count(sample_names, n, len(reference))

    report: dict = {"metrics": {}, "reference": {"data": reference.name, "num_images": len(reference)},
                    "seconds": {}}
    if run_:
        report["source"] = {"checkpoint": str(args.checkpoint), "step": run_.step, "sampler": sampling.sampler,
                            "steps": args.steps or run_.config.diffusion.timesteps, "seed": args.seed,
                            "sampling": dataclasses.asdict(sampling),
                            "runtime": dataclasses.asdict(runtime_config(args, run_.config.runtime))}
    else:
        report["source"] = {"samples": str(args.samples)}
    features_name, n = (_score_samples(args, run_, reference, sampling, sample_names, n, report, device, progress)
                         if sample_names else ("model", n))
    report["n"] = n
    for name, fn in model_fns.items():
        t0 = time.perf_counter()
        # A model metric runs over data images, all of them unless --n is given (the sample default is not theirs).
        report["metrics"].update(fn(run_, reference, args.n, device=device, seed=args.seed, progress=progress))
        report["seconds"][name] = time.perf_counter() - t0

    if not env.is_main:
        return 0
    out = default_out(args, features_name, n, sampling)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    rows: dict = {k: v for k, v in report["metrics"].items() if not isinstance(v, (list, dict))}  # curves: JSON only
    if "held_out_accuracy" in report.get("features", {}):
        rows["classifier held-out accuracy"] = float(report["features"]["held_out_accuracy"])
    src = report["source"].get("checkpoint") or report["source"]["samples"]
    print(format_table(rows, f"{src}: {n} samples vs {reference.name} ({len(reference)} images), "
                             f"{features_name} features"))
    say(f"report written to {out}")
    return 0


def _score_samples(args, run_, reference, sampling: SamplingOptions, names: list[str], n: int | None, report: dict,
                   device, progress: bool) -> tuple[str, int]:
    """The sample metrics into ``report``: reference features, the samples (drawn from the run or read from
    --samples) and their features; returns (feature extractor's name, number of samples)."""
    features_name = args.features or ("inception" if reference.shape[0] == 3 and min(reference.shape[1:]) >= 32
                                      else "classifier")
    t0 = time.perf_counter()  # the extractor (a first-use classifier trains here) and the reference
    if features_name == "classifier" and not args.classifier:
        extractor, stats = classifier_reference(reference, device=device, batch_size=args.batch_size,
                                                progress=progress)
    else:
        extractor = make_extractor(features_name, classifier=args.classifier,
                                   inception_weights=args.inception_weights, device=device)
        stats = reference_stats(reference, extractor, device=device, batch_size=args.batch_size, progress=progress)
    report["seconds"]["reference_features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if run_:
        if run_.image_shape != reference.shape:
            raise UserError(f"the run makes {'x'.join(map(str, run_.image_shape))} images but {reference.name} holds "
                            f"{'x'.join(map(str, reference.shape))} images; pick a matching --reference")
        images = generate_samples(run_, n, seed=args.seed, batch_size=args.batch_size, progress=progress,
                                  sampling=sampling, runtime=runtime_config(args, run_.config.runtime))
        report["seconds"]["sampling"] = time.perf_counter() - t0
    else:
        images = load_samples(args.samples, n)
        n = len(images)
        check_sample_count(names, n, len(reference))
        if tuple(images.shape[1:]) != reference.shape:
            raise UserError(f"the samples are {'x'.join(map(str, images.shape[1:]))} images but {reference.name} "
                            f"holds {'x'.join(map(str, reference.shape))} images; pick a matching --reference")
    t0 = time.perf_counter()
    feats, logits = extract(extractor, images, batch_size=args.batch_size, device=device, progress=progress,
                            desc="sample features")
    report["seconds"]["sample_features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report["metrics"].update(compute_metrics(names, feats, logits, stats, num_classes=extractor.num_classes,
                                             seed=args.seed))
    report["seconds"]["metrics"] = time.perf_counter() - t0
    report["features"] = extractor.info
    return features_name, n
