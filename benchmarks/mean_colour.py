"""Does a trained network see an image's mean colour? How well it predicts the mean of the noise, and how
colourful its samples are against the real images.

A diffusion model has to predict the noise's per-image, per-channel mean (its "DC" part) to get an
image's overall colour right: at large t that mean is most of what separates the image's mean from the
noise's, and sampling divides the error by sqrt(alpha-bar_t). A network whose GroupNorms hold one
channel per group (instance normalisation: ``--norm-groups`` equal to a level's width) removes every
channel's spatial mean and can barely do it, and its samples come out in flat, oversaturated colours
(``benchmarks/results/cifar10_cpu_norm_groups_32/``).

Two measurements, neither timed:

- ``mean error``: for each run (its EMA model, float32, the run's own data set unless ``--data``), ``--n``
  training images noised to each t of ``--t`` from seeded noise; the mean squared error of the predicted
  noise's per-image, per-channel mean, divided by the variance of the true noise's mean (1 / pixels). 1
  is no better than predicting zero, as a network blind to it must; 0 is exact. Even a perfect network
  stays near 1 at small t, where the noise's mean is tiny beside the image's and nothing in x_t tells
  them apart; the floor falls towards 0 at large t, where x_t's mean is mostly the noise's. Compare
  networks at t >= 500.
- ``colourfulness`` (optional, ``--samples LABEL=FILE.npz``: colour samples as ``ddpm sample`` and
  ``benchmarks/quality.py`` write them, or a folder of images): the mean over pixels of the standard deviation across R, G and B
  in [-1, 1]: 0 for grey images.

Writes ``--out``/results.json and results.md, with the command:

    .venv/bin/python benchmarks/mean_colour.py \\
        --runs norm_groups_32=bench_out/q_cifar_cpu_g32/ours,norm_groups_8=bench_out/q_cifar_cpu/ours \\
        --samples real=bench_out/q_cifar_cpu/real_samples.npz,norm_groups_32=bench_out/q_cifar_cpu_g32/ours_samples.npz,norm_groups_8=bench_out/q_cifar_cpu/ours_samples.npz \\
        --out bench_out/mean_colour                                                               # 30 s
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (provenance of result files)

from ddpm.cli._common import parse_ints  # noqa: E402
from ddpm.data.datasets import load_dataset  # noqa: E402
from ddpm.data.transforms import expand  # noqa: E402
from ddpm.diffusion.process import q_sample  # noqa: E402
from ddpm.errors import UserError  # noqa: E402
from ddpm.evaluation.samples import load_samples  # noqa: E402
from ddpm.pipeline import load_run  # noqa: E402


def fail(message: str):
    """Bad input: one line and exit status 2."""
    print(f"mean_colour.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def labelled(text: str, flag: str, p: argparse.ArgumentParser) -> dict[str, str]:
    """``LABEL=PATH,LABEL=PATH`` as a dict, every path existing."""
    pairs = {}
    for item in filter(None, text.split(",")):
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            p.error(f"{flag} takes LABEL=PATH,... (got {item!r})")
        if not Path(path).exists():
            p.error(f"{flag} {label}: no such file or folder {path}")
        pairs[label] = path
    return pairs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="", help="LABEL=RUN_DIR,... (the mean error of each run's network)")
    p.add_argument("--samples", default="", help="LABEL=FILE.npz,... (the colourfulness of each sample set)")
    p.add_argument("--data", help="data set of the mean error (default: each run's own, with its --data-dir)")
    p.add_argument("--data-dir")
    p.add_argument("--n", type=int, default=256, help="images of the mean error (default 256)")
    p.add_argument("--t", default="10,100,300,500,700,900,990", help="0-based timesteps, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/mean_colour")
    args = p.parse_args(argv)
    args.runs, args.samples = labelled(args.runs, "--runs", p), labelled(args.samples, "--samples", p)
    if not args.runs and not args.samples:
        p.error("give --runs, --samples or both")
    try:
        args.t = parse_ints(args.t, "--t")
    except UserError as e:
        p.error(str(e))
    if args.n < 2:
        p.error("--n must be at least 2")
    return args


def mean_error_ratio(pred: torch.Tensor, eps: torch.Tensor) -> float:
    """The squared error of the per-image, per-channel spatial mean of ``pred`` against ``eps``'s, over
    the variance of a mean of standard normal pixels (1 / pixels): about 1 for a prediction of zero."""
    pixels = eps.shape[-1] * eps.shape[-2]
    err = (pred.double() - eps.double()).mean(dim=(-2, -1))
    return float(err.pow(2).mean() * pixels)


def colourfulness(images: torch.Tensor) -> float:
    """Mean over pixels of the standard deviation across the colour channels of (N, C, H, W) images in
    [-1, 1] (population standard deviation)."""
    return float(images.double().std(dim=1, correction=0).mean())


@torch.no_grad()
def run_part(path: str, args) -> dict:
    run = load_run(path)
    cfg = run.config
    if cfg.train.autoencoder or cfg.model.num_classes or cfg.model.text_encoder != "none":
        fail(f"{path} is a latent, class or text run; this measures pixel-space unconditional runs")
    T = cfg.diffusion.timesteps
    bad = [t for t in args.t if not 0 <= t < T]
    if bad:
        fail(f"{path}: --t {bad[0]} is outside its timesteps 0..{T - 1}")
    data_dir = args.data_dir or (None if args.data else cfg.train.data_dir)
    data = load_dataset(args.data or cfg.train.data, data_dir, cfg.model.image_size, cfg.model.in_channels)
    gen = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(data), generator=gen)[:args.n]
    x0 = expand(data.images[pick])
    denoise = run.denoiser(clip_x0=False, runtime={"precision": "fp32", "compile": "none"})
    ratios = {}
    for t in args.t:  # keys as JSON writes them
        eps = torch.randn(x0.shape, generator=gen)
        x_t = q_sample(run.schedule, x0, torch.full((len(x0),), t), eps)
        ratios[str(t)] = mean_error_ratio(denoise(x_t, t).eps, eps)
    return {"checkpoint": path, "norm_groups": cfg.model.norm_groups, "base_channels": cfg.model.base_channels,
            "trained_steps": run.step, "images": len(pick), "mean_error_ratio": ratios}


def to_markdown(r: dict) -> str:
    lines = ["# Does the network see an image's mean colour?", "", *speed.provenance_lines(r)]
    if r["runs"]:
        labels = list(r["runs"])
        lines += ["## The noise's mean: squared error over its variance (1: no better than zero)", "",
                  ", ".join(f"{k}: `{v['checkpoint']}` ({v['base_channels']} base channels, {v['norm_groups']} "
                            f"norm groups, {v['trained_steps']} steps)" for k, v in r["runs"].items())
                  + f"; {next(iter(r['runs'].values()))['images']} images each.", "",
                  "| t | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
        for t in r["t"]:
            lines.append(f"| {t} | " + " | ".join(f"{r['runs'][k]['mean_error_ratio'][str(t)]:.3f}"
                                                    for k in labels) + " |")
        lines.append("")
    if r["samples"]:
        lines += ["## Colourfulness of samples (mean standard deviation across R, G, B)", "",
                  "| samples | images | colourfulness |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['images']} | {v['colourfulness']:.3f} |" for k, v in r["samples"].items()]
    return "\n".join(lines) + "\n"


def colour_samples(path: str) -> torch.Tensor:
    """A samples file or folder (``ddpm.evaluation.samples.load_samples``) that must hold colour images."""
    images = load_samples(path)
    if images.shape[1] != 3:
        fail(f"{path} holds {images.shape[1]}-channel images, not (N, H, W, 3) colour images")
    return images


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        arrays = {label: colour_samples(path) for label, path in args.samples.items()}  # before the slow part
        runs = {label: run_part(path, args) for label, path in args.runs.items()}
    except UserError as e:
        fail(str(e))
    samples = {label: {"file": args.samples[label], "images": len(a), "colourfulness": colourfulness(a)}
               for label, a in arrays.items()}
    r = {"t": args.t, "runs": runs, "samples": samples, **speed.provenance("mean_colour.py", argv, "cpu")}
    speed.write_results(args.out, r, to_markdown(r))
    return r


if __name__ == "__main__":
    main()
