"""Text-to-image on mnist-pairs: does a model that reads the caption draw the two digits it names, each on
its side, also for pairs it never saw?

Trains, on the 2-core CPU, within the step counts given (each model in chunks, evaluated after each):

- the autoencoder (``ddpm train-autoencoder``, f = 4, 4 latent channels) on the mnist-pairs canvases;
- ``latent``: the text model in the autoencoder's latent space (cross-attention to a jointly trained
  text encoder; ``ddpm train --autoencoder``);
- ``pooled``: the same latent model with the text pooled into the time embedding, no cross-attention;
- ``pixel``: the text model of the same width on the 32x64 canvases themselves.

It scores the samples with a digit classifier of its own, trained on 32x32 halves built from the digits the
diffusion models train on and tested on halves built from the held-out evaluation digits
(``ddpm.data.pairs.EVAL_DIGITS``). For every ordered pair and every caption template it draws
``--per-prompt`` samples (DPM-Solver++(2M), ``--steps`` network calls, classifier-free guidance
``--guidance``), and reports the pair accuracy (both digits right, each on its side) on the 90 seen and the
10 held-out pairs, the swapped-order rate (the two digits drawn on the wrong sides), the accuracy per
template, and the classifier-FID of the seen-pair canvases (features: the digit classifier's features of
the two halves, concatenated) against canvases of the evaluation digits. Writes OUT/text_to_image.json,
OUT/text_to_image.md and one picture per model (OUT/prompts_MODEL.png, one row per prompt); the trained runs
go to ``--runs`` (default bench_out/text_to_image_runs), away from the result files.

    .venv/bin/python benchmarks/text_to_image.py --out benchmarks/results/text_to_image   # the issue's budget
    .venv/bin/python benchmarks/text_to_image.py --ae-steps 100 --train-steps latent=40,pooled=40,pixel=4 \\
        --chunks 1 --per-prompt 1 --out /tmp/t2i                                             # a smoke run
    .venv/bin/python benchmarks/text_to_image.py --models none --out benchmarks/results/text_to_image_autoencoder
                                                          # the autoencoder alone, timed (no classifier, no rows)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpm.cli import main as ddpm
from ddpm.data.datasets import ImageDataset, to_unit_range
from ddpm.data.pairs import HELD_OUT_PAIRS, PAIR_TEMPLATES, caption, eval_pool, load_pool, make_canvases
from ddpm.evaluation.classifier import ClassifierTrainConfig, train_classifier
from ddpm.evaluation.metrics import frechet_distance
from ddpm.io import write_text_atomic
from ddpm.pipeline import GuidanceOptions, SamplingOptions, load_run
from ddpm.sampling.noise import seed_generators
from ddpm.viz.grid import save_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import provenance, provenance_lines  # noqa: E402  (CPU model and flags, the command)

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
ALL_PAIRS = [(a, b) for a in range(10) for b in range(10)]
# The flags that make each row's model, given the autoencoder's run folder.
MODELS = {"latent": lambda ae: ["--autoencoder", str(ae)],
          "pooled": lambda ae: ["--autoencoder", str(ae), "--text-injection", "pooled"],
          "pixel": lambda ae: []}
SHOWN = ["a 3 to the left of a 7", "a 7 to the right of a 3", "3 then 7", "a 1 to the left of a 4",
         "four and seven", "a 0 on the right and a 7 on the left", "8 then 1", "a 9 to the left of a 2"]


def halves(canvases: np.ndarray) -> np.ndarray:
    """(N, 32, 64) canvases -> (2N, 32, 32): left halves, then right halves."""
    return np.concatenate([canvases[:, :, :32], canvases[:, :, 32:]])


def digit_classifier(data_dir: str, seed: int = 0):
    """A digit classifier of 32x32 halves: trained on halves of canvases built from the training digits, its
    held-out accuracy measured on halves built from the evaluation digits, which no model trained on."""
    digits, labels, _ = load_pool(data_dir)
    train_digits, train_labels = digits[:-len(eval_pool(data_dir)[0])], labels[:-len(eval_pool(data_dir)[0])]
    rng = np.random.default_rng(seed)
    pairs = [ALL_PAIRS[i] for i in rng.integers(0, 100, 8000)]
    canv = make_canvases(train_digits, train_labels, pairs, seed)
    y = torch.tensor([a for a, _ in pairs] + [b for _, b in pairs])
    data = ImageDataset(to_unit_range(halves(canv)), y, 10, "mnist-pairs halves")
    cfg = ClassifierTrainConfig(epochs=5, held_out=0.1)
    cfg.model.widths = (16, 32, 64)  # enough for MNIST digits, and a quarter of the default's cost
    model, info = train_classifier(data, cfg, progress=False)
    ev_digits, ev_labels = eval_pool(data_dir)
    ev_pairs = [ALL_PAIRS[i] for i in rng.integers(0, 100, 2000)]
    ev = to_unit_range(halves(make_canvases(ev_digits, ev_labels, ev_pairs, seed + 1)))
    ev_y = torch.tensor([a for a, _ in ev_pairs] + [b for _, b in ev_pairs])
    with torch.no_grad():
        acc = (model(ev).argmax(1) == ev_y).float().mean().item()
    info["eval_digits_accuracy"] = acc
    return model, info


@torch.no_grad()
def read_pairs(classifier, canvases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left digits, right digits) the classifier reads on (N, 1, 32, 64) canvases in [-1, 1]."""
    return classifier(canvases[..., :32]).argmax(1), classifier(canvases[..., 32:]).argmax(1)


@torch.no_grad()
def canvas_features(classifier, canvases: torch.Tensor) -> torch.Tensor:
    return torch.cat([classifier.features(canvases[..., :32]), classifier.features(canvases[..., 32:])], 1)


def draw(run_dir: Path, prompts: list[str], args, seed: int = 0) -> torch.Tensor:
    """One sample per prompt (sample i from seed + i), in batches."""
    run = load_run(run_dir)
    sampling = SamplingOptions("dpm++2m", steps=args.steps)
    out = []
    for start in range(0, len(prompts), 200):
        part = prompts[start:start + 200]
        gens = seed_generators(range(seed + start, seed + start + len(part)))
        out.append(run.sample(len(part), generator=gens, progress=False, y=part, sampling=sampling,
                              guidance=GuidanceOptions(args.guidance)).float().cpu())
    return torch.cat(out)


def score(run_dir: Path, classifier, args, *, per_prompt: int, pairs=ALL_PAIRS, real_features=None) -> dict:
    """Pair accuracy on seen and held-out pairs, swapped-order rate, per-template accuracy, classifier-FID."""
    held = set(HELD_OUT_PAIRS)
    items = [(a, b, t) for a, b in pairs for t in range(len(PAIR_TEMPLATES)) for _ in range(per_prompt)]
    x = draw(run_dir, [caption(a, b, t) for a, b, t in items], args)
    left, right = read_pairs(classifier, x)
    a = torch.tensor([i[0] for i in items])
    b = torch.tensor([i[1] for i in items])
    t = torch.tensor([i[2] for i in items])
    is_held = torch.tensor([(i[0], i[1]) in held for i in items])
    right_pair = (left == a) & (right == b)
    swapped = (left == b) & (right == a) & (a != b)
    res = {"samples": len(items),
           "seen_pair_accuracy": right_pair[~is_held].float().mean().item(),
           "held_out_pair_accuracy": right_pair[is_held].float().mean().item() if is_held.any() else None,
           "swapped_rate": swapped[a != b].float().mean().item(),
           "per_template": {PAIR_TEMPLATES[k]: right_pair[t == k].float().mean().item()
                            for k in range(len(PAIR_TEMPLATES))}}
    if real_features is not None:
        res["classifier_fid_seen"] = frechet_distance(real_features, canvas_features(classifier, x[~is_held]))
    return res


def train_chunks(name: str, flags: list[str], runs: Path, classifier, args) -> dict:
    """Train ``name`` for its ``--train-steps`` in ``--chunks`` chunks (each a --resume of the last, at a
    constant learning rate: bit for bit the uninterrupted run), scoring 20 seen pairs quickly after each;
    returns the curve and the times."""
    run_dir = runs / name
    curve, train_s = [], 0.0
    total = args.train_steps[name]
    for k in range(1, args.chunks + 1):
        steps = round(k * total / args.chunks)
        t0 = time.perf_counter()
        rc = ddpm(["train", "--data", "mnist-pairs", "--data-dir", args.data_dir, "--out", str(run_dir), "--steps",
                   str(steps), "--sample-every", "0", "--checkpoint-every", str(total),
                   *(["--resume"] if k > 1 else flags)])
        if rc:
            raise SystemExit(f"training {name} failed")
        train_s += time.perf_counter() - t0
        quick = score(run_dir, classifier, args, per_prompt=1, pairs=args.quick_pairs)
        curve.append({"steps": steps, "train_seconds": round(train_s, 1),
                      "seen_pair_accuracy": quick["seen_pair_accuracy"]})
        print(f"{name}: {steps} steps, {train_s / 60:.1f} min, seen-pair accuracy {quick['seen_pair_accuracy']:.3f}",
              flush=True)
    logs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in logs if "images_per_s" in r]
    return {"curve": curve, "train_seconds": round(train_s, 1), "images_per_s": float(np.median(rates))}


def picture(run_dir: Path, path: Path, args) -> None:
    prompts = [p for p in SHOWN for _ in range(8)]
    save_grid(draw(run_dir, prompts, args, seed=1000), path, nrow=8)


def markdown(result: dict) -> str:
    ae = result["autoencoder"]
    ae_time = "reused from an earlier run" if ae["train_seconds"] is None else f"{ae['train_seconds'] / 60:.1f} min"
    head = (f"Autoencoder (f = 4, 4 latent channels): held-out PSNR {ae['psnr']:.2f} dB, SSIM {ae['ssim']:.3f}, "
            f"{ae_time}.")
    preamble = provenance_lines(result, "text_to_image.json")  # the CPU and the command
    if not result["models"]:
        return "\n".join([*preamble, head]) + "\n"
    lines = [*preamble, f"{head} Digit classifier: "
             f"{result['classifier']['eval_digits_accuracy']:.4f} on halves of the evaluation digits.", "",
             "| model | train min | images/s | min to 90% seen (quick) | seen pairs | held-out pairs | swapped | "
             "classifier-FID |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["models"].items():
        s = r["final"]
        hit = next((c["train_seconds"] / 60 for c in r["curve"] if c["seen_pair_accuracy"] >= 0.9), None)
        held = "-" if s["held_out_pair_accuracy"] is None else f"{s['held_out_pair_accuracy']:.3f}"
        lines.append(f"| {name} | {r['train_seconds'] / 60:.1f} | {r['images_per_s']:.0f} | "
                     f"{'not reached' if hit is None else f'{hit:.1f}'} | {s['seen_pair_accuracy']:.3f} | {held} | "
                     f"{s['swapped_rate']:.3f} | {s['classifier_fid_seen']:.2f} |")
    names = list(result["models"])
    lines += ["", "| template | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for template in PAIR_TEMPLATES:
        lines.append(f"| {template} | " + " | ".join(f"{result['models'][n]['final']['per_template'][template]:.3f}"
                                                     for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(MNIST), help="MNIST IDX files (default: ../shared/data/mnist)")
    ap.add_argument("--out", default="bench_out/text_to_image", help="folder of the result files and pictures")
    ap.add_argument("--runs", default="bench_out/text_to_image_runs",
                    help="folder of the trained runs (kept apart from the results: about 700 MB)")
    ap.add_argument("--models", default="latent,pooled,pixel",
                    help="which rows to train (of latent, pooled, pixel); none: the autoencoder alone, timed")
    ap.add_argument("--ae-steps", type=int, default=2000)
    ap.add_argument("--autoencoder", help="reuse this trained autoencoder run instead of training one")
    ap.add_argument("--train-steps", default="latent=5600,pooled=3000,pixel=160",
                    help="training steps per model (batch 64); the defaults take about 40, 15 and 15 minutes")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--per-prompt", type=int, default=2, help="samples per (pair, template) in the final score")
    ap.add_argument("--steps", type=int, default=20, help="network calls per sample")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--width", type=int, default=64, help="base channels of every diffusion model")
    ap.add_argument("--final-pairs", default="latent=all,pooled=all,pixel=quick",
                    help="pairs of the final score: all 100, or quick (20 seen + the 10 held-out)")
    args = ap.parse_args()
    args.train_steps = {k: int(v) for k, v in (kv.split("=") for kv in args.train_steps.split(","))}
    args.final_pairs = dict(kv.split("=") for kv in args.final_pairs.split(","))
    args.models = [] if args.models == "none" else args.models.split(",")
    if unknown := [m for m in args.models if m not in MODELS]:
        ap.error(f"--models {','.join(unknown)}: not a model here; choose from {', '.join(MODELS)} (or none)")
    if args.autoencoder and not (Path(args.autoencoder) / "metrics.json").is_file():
        ap.error(f"--autoencoder {args.autoencoder}: no metrics.json there; pass a ddpm train-autoencoder run folder")
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    args.quick_pairs = [ALL_PAIRS[i] for i in rng.choice([i for i, p in enumerate(ALL_PAIRS) if p not in
                                                           HELD_OUT_PAIRS], 20, replace=False)]
    t0 = time.perf_counter()
    classifier, cinfo = digit_classifier(args.data_dir) if args.models else (None, None)
    if cinfo:
        print(f"digit classifier: {cinfo['eval_digits_accuracy']:.4f} on the evaluation digits", flush=True)
    result = {**provenance("text_to_image.py", None, "cpu"), "classifier": cinfo, "models": {},
              "settings": {k: v for k, v in vars(args).items() if k != "quick_pairs"}}

    def save() -> None:
        write_text_atomic(out / "text_to_image.json", json.dumps(result, indent=2) + "\n")
        write_text_atomic(out / "text_to_image.md", markdown(result))

    def finish() -> None:
        result["total_seconds"] = round(time.perf_counter() - t0, 1)
        save()
        print(markdown(result))

    t1 = time.perf_counter()
    ae = Path(args.autoencoder) if args.autoencoder else runs / "autoencoder"
    if not args.autoencoder and ddpm(["train-autoencoder", "--data", "mnist-pairs", "--data-dir", args.data_dir,
                                      "--image-size", "32,64", "--in-channels", "1", "--factor", "4",
                                      "--latent-channels", "4", "--steps", str(args.ae_steps), "--out", str(ae)]):
        raise SystemExit("training the autoencoder failed")
    result["autoencoder"] = {"train_seconds": None if args.autoencoder else round(time.perf_counter() - t1, 1),
                             "run": str(ae), **json.loads((ae / "metrics.json").read_text())}
    print(f"autoencoder: {result['autoencoder']}", flush=True)
    if not args.models:  # --models none: the autoencoder alone
        return finish()
    ev_digits, ev_labels = eval_pool(args.data_dir)
    seen = [p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS]
    real_pairs = [seen[i] for i in rng.integers(0, len(seen), 2000)]
    real = to_unit_range(make_canvases(ev_digits, ev_labels, real_pairs, 7))
    real_features = canvas_features(classifier, real)
    for name in args.models:
        r = train_chunks(name, ["--base-channels", str(args.width), "--lr-decay", "constant", *MODELS[name](ae)],
                         runs, classifier, args)
        pairs = ALL_PAIRS if args.final_pairs.get(name, "all") == "all" else args.quick_pairs + list(HELD_OUT_PAIRS)
        r["final_pairs"] = len(pairs)
        r["final"] = score(runs / name, classifier, args, per_prompt=args.per_prompt, pairs=pairs,
                           real_features=real_features)
        picture(runs / name, out / f"prompts_{name}.png", args)
        result["models"][name] = r
        print(f"{name}: {r['final']}", flush=True)
        save()  # a run cut short still has its table
    finish()


if __name__ == "__main__":
    main()
