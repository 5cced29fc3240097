"""Issue 2's quality table on the 8x8 digits: ours (``ddpm train`` defaults) beside lucidrains'
denoising-diffusion-pytorch and diffusers, each trained for the same wall-clock time and sampled the
same way (1,000 samples, the full 1,000-step ancestral sampler).

(a) Ours: ``ddpm train --data digits`` with every default, in a subprocess, timed (or ``--ours RUN``).
(b) lucidrains: ``Unet`` + ``GaussianDiffusion`` (pred_noise, linear betas 1e-4..0.02, T = 1000, the
    same as ours; it samples with beta-tilde and clips x0), sized to ours' parameter count by default
    (``--lucid-dim 32``: 0.83M parameters vs ours' 1.08M).
(c) diffusers: ``UNet2DModel`` (two levels, attention at 4x4 like ours; ``--diffusers-channels 32,64``:
    1.0M parameters) + ``DDPMScheduler`` (linear betas, 1000 steps, its default fixed_small variance
    and x0 clipping), sampled by a DDPMPipeline-like loop over ``scheduler.step``.
Both peers get our training recipe in a minimal loop of their own: the same digits tensor in [-1, 1],
batch 128, AdamW at 1e-3 with 200 warm-up steps then cosine decay to 5% over the wall-clock budget,
gradient clipping at 1, and an EMA of the weights (decay 0.999 with ours' warm-up) that samples. They
train until ``--budget`` seconds have passed (default: ours' whole ``ddpm train`` wall time, which also
includes its preview grids and checkpoints, so the peers get at least as much training time).

Metrics (``ddpm.evaluation``): a small CNN digit classifier trained on the digits (its held-out accuracy
is reported), the Frechet distance between its penultimate features of the samples and of all 1,797
real digits, KID and k-NN precision/recall in the same features, the share of samples it labels with
confidence above 0.9 and the normalized entropy of the predicted-class histogram. Issue 2's targets:
ours' distance at most half the better peer's, at least 90% confident samples, class entropy >= 0.97.

Writes OUT/results.json, OUT/results.md, OUT/<model>.png (a grid of 100 samples) and
OUT/<model>_samples.npz; our run is OUT/ours. The full run (about 10 minutes of training per model plus
~30 minutes of sampling on a 2-core CPU; run it on a quiet machine):

    .venv/bin/python benchmarks/digits_quality.py --out bench_out/digits_quality

Tiny smoke run (seconds; reuses a run and keeps its classifier out of the real cache):

    DDPM_CACHE=/tmp/ddpm-cache .venv/bin/python benchmarks/digits_quality.py --ours RUN --budget 15 --n 32 \\
        --out /tmp/digits_quality
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

METRICS = ["fid", "kid", "precision_recall", "confidence"]
BATCH_SIZE = 128  # ours' default (digits preset)
LR, WARMUP, LR_MIN_RATIO, GRAD_CLIP, EMA_DECAY = 1e-3, 200, 0.05, 1.0, 0.999  # ours' digits recipe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ours", help="reuse this trained run instead of training one")
    p.add_argument("--budget", type=float, help="training seconds per peer (default: ours' wall time)")
    p.add_argument("--n", type=int, default=1000, help="samples per model (default: 1000)")
    p.add_argument("--sample-batch", type=int, default=500, help="samples per batch, all models")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (all models)")
    p.add_argument("--lucid-dim", type=int, default=32, help="lucidrains Unet base width (default: 32)")
    p.add_argument("--diffusers-channels", default="32,64", help="UNet2DModel block_out_channels (default: 32,64)")
    p.add_argument("--models", default="ours,lucidrains,diffusers", help="which rows to produce")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/digits_quality")
    return p.parse_args(argv)


def count_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- ours ---------------------------------------------------------------------------------------------


def train_ours(args, out: Path, device) -> tuple[Path, float, dict]:
    """(run folder, wall seconds, info): ``ddpm train`` with its defaults, timed from outside."""
    if args.ours:
        run = Path(args.ours)
        timing = run / "bench_wall.json"
        if timing.is_file():
            return run, json.loads(timing.read_text())["wall_s"], {"wall_source": "bench_wall.json"}
        # A run trained elsewhere: its log's last throughput (which counts previews and checkpoints).
        lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        cfg = json.loads((run / "config.json").read_text())
        last = lines[-1]
        wall = last["step"] * cfg["train"]["batch_size"] / last["images_per_s"]
        return run, wall, {"wall_source": "estimated from log.jsonl"}
    run = out / "ours"
    if (run / "checkpoint.safetensors").exists():
        sys.exit(f"{run} already holds a run: pass --ours {run} to reuse it, or remove it")
    cmd = [sys.executable, "-m", "ddpm.cli", "train", "--data", "digits", "--out", str(run), "--device", str(device)]
    print("training ours:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    (run / "bench_wall.json").write_text(json.dumps({"wall_s": wall}) + "\n")
    return run, wall, {"wall_source": "measured", "command": " ".join(cmd)}


# --- the peers: a minimal training loop with our recipe, until the wall-clock budget --------------------


def lr_at(step: int, elapsed_fraction: float) -> float:
    """Ours' schedule with the cosine decay over wall-clock time, since the number of steps is not known."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    floor = LR * LR_MIN_RATIO
    return floor + (LR - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed_fraction)))


def train_peer(name: str, model: torch.nn.Module, loss_fn, images: torch.Tensor, budget: float, seed: int):
    """Train ``model`` (whose ``loss_fn(model, x0, gen)`` is the peer's own loss) for ``budget`` seconds."""
    from tqdm.auto import tqdm

    from ddpm.training.ema import ema_decay_at, make_ema, update_ema

    torch.manual_seed(seed)  # lucidrains draws t and noise from the global generator
    gen = torch.Generator(images.device).manual_seed(seed)
    ema = make_ema(model)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    step, t0 = 0, time.perf_counter()
    bar = tqdm(desc=f"training {name}", unit="step", total=None)
    while (elapsed := time.perf_counter() - t0) < budget:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, elapsed / budget)
        idx = torch.randint(0, len(images), (BATCH_SIZE,), device=images.device, generator=gen)
        loss = loss_fn(model, images[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        update_ema(ema, model, ema_decay_at(step, EMA_DECAY))
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    bar.close()
    return ema.eval(), {"steps": step, "train_wall_s": wall, "train_images_per_s": step * BATCH_SIZE / wall}


def lucidrains_peer(args, device):
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    unet = Unet(dim=args.lucid_dim, dim_mults=(1, 2), channels=1, flash_attn=False)
    # auto_normalize=False: it takes and returns [-1, 1] like ours.
    diffusion = GaussianDiffusion(unet, image_size=8, timesteps=1000, objective="pred_noise",
                                  beta_schedule="linear", auto_normalize=False).to(device)

    def loss_fn(model, x0, gen):
        return model(x0)  # its own Algorithm 1: t and noise from the global generator

    def sample(ema, n, seed):
        torch.manual_seed(seed)  # its sampler draws from the global generator
        return ema.sample(batch_size=n)

    return diffusion, count_params(unet), loss_fn, sample


def diffusers_peer(args, device):
    from diffusers import DDPMScheduler, UNet2DModel

    channels = tuple(int(c) for c in args.diffusers_channels.split(","))
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=channels,
                       layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=min(32, channels[0])).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)

    def loss_fn(model, x0, gen):
        t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device, generator=gen)
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
        return F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)

    @torch.no_grad()
    def sample(ema, n, seed):
        g = torch.Generator("cpu").manual_seed(seed)
        x = torch.randn((n, 1, 8, 8), generator=g).to(device)
        scheduler.set_timesteps(1000)
        for t in scheduler.timesteps:
            x = scheduler.step(ema(x, t).sample, t, x, generator=g).prev_sample
        return x

    return unet, count_params(unet), loss_fn, sample


# --- evaluation -------------------------------------------------------------------------------------------


def timed_samples(sample_batch, n: int, batch: int, seed: int, device) -> tuple[torch.Tensor, float]:
    out, t0 = [], time.perf_counter()
    for start in range(0, n, batch):
        out.append(sample_batch(min(batch, n - start), seed + start).float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out).clamp(-1, 1), time.perf_counter() - t0


def score(name: str, images: torch.Tensor, extractor, ref, out: Path, seed: int, device) -> dict:
    import numpy as np

    from ddpm.evaluation.features import extract
    from ddpm.evaluation.report import compute_metrics
    from ddpm.viz.grid import save_grid, to_uint8

    save_grid(images[:100], out / f"{name}.png", nrow=10)
    np.savez(out / f"{name}_samples.npz", to_uint8(images))
    feats, logits = extract(extractor, images, device=device, progress=False)
    return compute_metrics(METRICS, feats, logits, ref, num_classes=10, seed=seed)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from ddpm.api import load_run
    from ddpm.data.datasets import load_digits
    from ddpm.evaluation.features import make_extractor
    from ddpm.evaluation.reference import cached_classifier, reference_stats
    from ddpm.evaluation.samples import generate_samples
    from ddpm.training.distributed import DistEnv, resolve_device

    device = resolve_device(args.device, DistEnv())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",")]
    data = load_digits()
    images = data.images.to(device)

    classifier, clf_info, clf_path = cached_classifier(data, device=device)
    extractor = make_extractor("classifier", classifier=classifier, device=device)
    ref = reference_stats(data, extractor, device=device, progress=False)
    print(f"digit classifier: held-out accuracy {clf_info['held_out_accuracy']:.4f} ({clf_path})", flush=True)

    rows: dict[str, dict] = {}
    run_dir, wall, ours_info = train_ours(args, out, device) if "ours" in models or args.budget is None else (None, None, {})
    budget = args.budget or wall
    if "ours" in models:
        run = load_run(run_dir, device)
        cfg = run.config
        x, s = timed_samples(lambda k, seed: generate_samples(run.model, cfg, k, seed=seed, batch_size=k, device=device,
                                                              sampler="ancestral", progress=False),
                             args.n, args.sample_batch, args.seed, device)
        rows["ours"] = {"params": count_params(run.model), "steps": run.step, "train_wall_s": wall,
                        "train_images_per_s": run.step * cfg.train.batch_size / wall,
                        "sample_images_per_s": args.n / s, "run": str(run_dir), **ours_info,
                        **score("ours", x, extractor, ref, out, args.seed, device)}
        print("ours:", rows["ours"], flush=True)

    for name, make in (("lucidrains", lucidrains_peer), ("diffusers", diffusers_peer)):
        if name not in models:
            continue
        torch.manual_seed(args.seed)
        model, params, loss_fn, sample = make(args, device)
        ema, info = train_peer(name, model, loss_fn, images, budget, args.seed)
        with torch.inference_mode():
            x, s = timed_samples(lambda k, seed: sample(ema, k, seed), args.n, args.sample_batch, args.seed, device)
        rows[name] = {"params": params, **info, "sample_images_per_s": args.n / s,
                      **score(name, x, extractor, ref, out, args.seed, device)}
        print(f"{name}:", rows[name], flush=True)

    result = {"n": args.n, "budget_s": budget, "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "sampling": "ancestral, 1000 steps",
              "classifier": {"held_out_accuracy": clf_info["held_out_accuracy"], "path": str(clf_path)},
              "rows": rows, "targets": targets(rows)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def targets(rows: dict) -> dict:
    """Issue 2: ours' distance <= half the better peer's, >= 90% confident, class entropy >= 0.97."""
    if "ours" not in rows:
        return {}
    ours = rows["ours"]
    peers = [r["fid"] for k, r in rows.items() if k != "ours"]
    t = {"confident_share >= 0.9": ours["confident_share"] >= 0.9, "class_entropy >= 0.97": ours["class_entropy"] >= 0.97}
    if peers:
        t["fid <= 0.5 x best peer"] = ours["fid"] <= 0.5 * min(peers)
    return t


def to_markdown(r: dict) -> str:
    head = ("| model | params | train steps | train img/s | sample img/s | classifier FD | KID | precision | recall "
            "| % confident | class entropy |")
    lines = [f"# Digits quality: {r['n']} samples each, {r['sampling']}, {r['budget_s']:.0f} s training budget, "
             f"{r['device']} ({r['threads']} threads)", "",
             f"Digit classifier held-out accuracy: {r['classifier']['held_out_accuracy']:.4f}", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | {row['steps']} | {row['train_images_per_s']:.0f} "
                     f"| {row['sample_images_per_s']:.2f} | {row['fid']:.3f} | {row['kid_mean']:.4f} "
                     f"| {row['precision']:.3f} | {row['recall']:.3f} | {100 * row['confident_share']:.1f} "
                     f"| {row['class_entropy']:.4f} |")
    if r["targets"]:
        lines += ["", "Issue 2 targets: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["targets"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
