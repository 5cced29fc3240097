"""The quality tables of issues 2, 3 and 4: ours (``ddpm train --data DATA`` with every default) beside
lucidrains' denoising-diffusion-pytorch and diffusers, each trained for the same wall-clock time on the
same machine and sampled the same way, in one table.

(a) Ours: ``ddpm train --data DATA`` with every default (the data set's preset), in a subprocess, timed
    (or ``--ours RUN``).
(b) lucidrains: ``Unet`` + ``GaussianDiffusion`` (pred_noise, linear betas 1e-4..0.02, T = 1000, the
    same as ours; it samples with beta-tilde and clips x0), at ours' depth (``--lucid-dim 32``).
(c) diffusers: ``UNet2DModel`` (ours' levels, blocks per level and attention at the lowest resolution)
    + ``DDPMScheduler`` (linear betas, 1000 steps, its default fixed_small variance and x0 clipping),
    sampled by a DDPMPipeline-like loop over ``scheduler.step``; for DDIM, ``DDIMScheduler`` with
    "trailing" spacing (so its first step sees pure noise) and eta = 0.
Each peer trains twice, in a minimal loop of the benchmark's own, on the same images:
- with ours' recipe (rows ``lucidrains``, ``diffusers``), read from our run's config.json: ours' batch
  size, AdamW at ours' learning rate with ours' warm-up then ours' decay (cosine by default) spread over
  the wall-clock budget, ours' optimizer step (``ddpm.training.step.optimizer_step``: gradient clipping),
  and an EMA of the weights (ours' decay and warm-up) that samples; this compares the networks and
  libraries alone;
- with its own defaults (rows ``lucidrains-own``, ``diffusers-own``): what a user of that library gets
  out of the box, as ours is ``ddpm train`` with its defaults (lucidrains: its GaussianDiffusion and
  Trainer defaults; diffusers: the recipe of its train_unconditional.py example; see the functions).
All train until ``--budget`` seconds have passed (default: ours' whole ``ddpm train`` wall time, which
also includes its preview grids and checkpoints, so the peers get at least as much training time).

Sampling, the same for all three: ``--sampler ancestral`` (Algorithm 2, all 1,000 steps; the default on
digits) or ``ddim`` with ``--steps K`` (eta = 0; the default on MNIST is 100 steps, since 1,000-step
sampling of 1,000 28x28 images takes about an hour per model on 2 cores).

Metrics (``ddpm.evaluation``): a small CNN classifier trained on the data set (its held-out accuracy is
reported; cached as ``ddpm evaluate --features classifier`` caches it), the Frechet distance between its
penultimate features of the samples and of all real images, KID and k-NN precision/recall in the same
features, the share of samples it labels with confidence above 0.9 and the normalized entropy of the
predicted-class histogram; "real" is the same for ``--n`` real images (the floor at that sample size).
Issue 2's targets (digits): ours' distance at most half the better peer's, at least 90% confident
samples, class entropy >= 0.97.

Writes OUT/results.json, OUT/results.md, OUT/<model>.png (a grid of 100 samples) and
OUT/<model>_samples.npz; our run is OUT/ours. Full runs (run them on a quiet machine):

    .venv/bin/python benchmarks/quality.py --data digits --out bench_out/quality_digits    # ~45 min
    .venv/bin/python benchmarks/quality.py --data mnist --data-dir ../shared/data/mnist \
        --out bench_out/quality_mnist                                                      # ~80 min

CIFAR-10 (``--data-dir`` may be the binary batches or an image folder, <class>/<image>) trains ours alone
here: the ``cifar10`` preset is sized for a GPU, so the README's picture comes from a small network (the
flags of ``results/cifar10_cpu/``; about 55 min with the classifier on 2 cores). That network needs
``--norm-groups 8``: ``results/cifar10_cpu_norm_groups_32/`` is the same run with the default 32 groups,
one channel each at its first level, and its samples are flat, oversaturated colours.

Tiny smoke run (seconds; reuses a run and keeps its classifier out of the real cache):

    DDPM_CACHE=/tmp/ddpm-cache .venv/bin/python benchmarks/quality.py --ours RUN --budget 15 --n 32 \
        --out /tmp/quality
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_line, provenance, threads_text  # noqa: E402  (the CPU's model and flags, as speed.py records them)

METRICS = ["fid", "kid", "precision_recall", "confidence"]
# Per data set: the peers' shapes at ours' preset (levels, attention at the lowest resolution) and the
# default sampling. lucidrains downsamples between all its levels, diffusers in all blocks but the last.
DATASETS = {
    "digits": dict(lucid_mults=(1, 2), diffusers_channels=(32, 64), sampler="ancestral", steps=1000),
    "mnist": dict(lucid_mults=(1, 2, 2), diffusers_channels=(32, 64, 64), sampler="ddim", steps=100),
    "cifar10": dict(lucid_mults=(1, 2, 2, 2), diffusers_channels=(64, 128, 128, 128), sampler="ddim", steps=100),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits", choices=sorted(DATASETS), help="(default: digits)")
    p.add_argument("--data-dir", help="folder with the named set's original files (MNIST: the IDX files)")
    p.add_argument("--ours", help="reuse this trained run instead of training one")
    p.add_argument("--ours-flags", default="", help="extra flags of ours' ddpm train, e.g. '--precision fp32' "
                   "(a CPU without bf16)")
    p.add_argument("--budget", type=float, help="training seconds per peer (default: ours' wall time)")
    p.add_argument("--n", type=int, default=1000, help="samples per model (default: 1000)")
    p.add_argument("--sampler", choices=["ancestral", "ddim"], help="(default: per data set, see above)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: per data set)")
    p.add_argument("--sample-batch", type=int, default=500, help="samples per batch, all models")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (all models)")
    p.add_argument("--lucid-dim", type=int, default=32, help="lucidrains Unet base width (default: 32)")
    p.add_argument("--diffusers-channels", help="UNet2DModel block_out_channels (default: per data set)")
    p.add_argument("--models", default="ours,lucidrains,diffusers,lucidrains-own,diffusers-own",
                   help="rows to produce: ours, and each peer with ours' recipe (lucidrains, diffusers) or its own "
                   "defaults (lucidrains-own, diffusers-own)")
    p.add_argument("--reuse", help="an earlier results.json of the same --ours run, budget, n and sampler whose "
                   "rows join this table (so the table grows without retraining)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="(default: bench_out/quality_DATA)")
    args = p.parse_args(argv)
    spec = DATASETS[args.data]
    args.sampler = args.sampler or spec["sampler"]
    args.steps = 1000 if args.sampler == "ancestral" else args.steps or spec["steps"]
    args.out = args.out or f"bench_out/quality_{args.data}"
    return args


def count_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- ours ---------------------------------------------------------------------------------------------


def train_ours(args, out: Path, device) -> tuple[Path, float, dict]:
    """(run folder, wall seconds, info): ``ddpm train`` with its defaults, timed from outside."""
    if args.ours:
        if args.ours_flags:
            sys.exit("--ours-flags change how ours trains; they cannot apply to a run reused with --ours")
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
    cmd = [sys.executable, "-m", "ddpm.cli", "train", "--data", args.data, "--out", str(run), "--device", str(device)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    cmd += shlex.split(args.ours_flags)
    print("training ours:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    write_text_atomic(run / "bench_wall.json", json.dumps({"wall_s": wall}) + "\n")
    return run, wall, {"wall_source": "measured", "command": " ".join(cmd)}


# --- the peers: a minimal training loop with our recipe, until the wall-clock budget --------------------


def wall_clock_lr(recipe: dict):
    """(step, elapsed share of the budget) -> the learning rate of ``recipe`` (``TrainConfig``'s lr,
    warmup_steps, lr_decay, lr_min_ratio): ours' schedule (``ddpm.training.step.lr_at``: linear warm-up, then
    constant or cosine decay to lr_min_ratio x lr) with the decay spread over the wall-clock budget, as
    the number of steps is not known: after warm-up, the elapsed share of the budget is that share of the
    decay. Also diffusers' example's schedule (cosine to 0)."""
    from ddpm.config import TrainConfig, update
    from ddpm.training.step import lr_at

    span = 10**6  # decay steps standing for the whole budget
    schedule = {k: recipe[k] for k in ("lr", "warmup_steps", "lr_decay", "lr_min_ratio") if k in recipe}
    cfg = update(TrainConfig(), schedule | {"steps": recipe["warmup_steps"] + span}, "recipe")

    def lr(step: int, elapsed_fraction: float) -> float:
        return lr_at(step if step < cfg.warmup_steps else cfg.warmup_steps + elapsed_fraction * span, cfg)

    return lr


class Recipe:
    """How a peer trains: batch size, optimizer, learning rate as a function of (step, elapsed share of the
    budget) or None for a constant one, gradient clipping, and the EMA (``ema_update(step)`` after each
    step; ``ema_model()`` is what samples)."""

    def __init__(self, batch_size, optimizer, lr_fn, grad_clip, ema_update, ema_model):
        self.batch_size, self.optimizer, self.lr_fn, self.grad_clip = batch_size, optimizer, lr_fn, grad_clip
        self.ema_update, self.ema_model = ema_update, ema_model


def ours_recipe(model: torch.nn.Module, cfg: dict) -> Recipe:
    """Ours' recipe (``cfg``: our run's ``train`` config): AdamW, warm-up then ours' decay over the
    wall-clock budget, our gradient clipping and EMA (decay and warm-up)."""
    from ddpm.training.ema import ema_decay_at, make_ema, update_ema

    ema = make_ema(model)
    return Recipe(cfg["batch_size"], torch.optim.AdamW(model.parameters(), lr=cfg["lr"]),
                  wall_clock_lr(cfg), cfg["grad_clip"],
                  lambda step: update_ema(ema, model, ema_decay_at(step, cfg["ema_decay"])), lambda: ema.eval())


def train_peer(name: str, model: torch.nn.Module, loss_fn, images: torch.Tensor, budget: float, seed: int,
               recipe: Recipe):
    """Train ``model`` (whose ``loss_fn(model, x0, gen)`` is the peer's own loss) for ``budget`` seconds
    by ``recipe``, each step through ours' ``optimizer_step``; returns (the EMA model, info)."""
    from tqdm.auto import tqdm

    from ddpm.training.step import optimizer_step

    torch.manual_seed(seed)  # lucidrains draws t and noise from the global generator
    gen = torch.Generator(images.device).manual_seed(seed)
    opt, batch = recipe.optimizer, recipe.batch_size
    model.train()
    step, t0 = 0, time.perf_counter()
    bar = tqdm(desc=f"training {name}", unit="step", total=None)
    while (elapsed := time.perf_counter() - t0) < budget:
        if recipe.lr_fn is not None:
            for group in opt.param_groups:
                group["lr"] = recipe.lr_fn(step, elapsed / budget)
        idx = torch.randint(0, len(images), (batch,), device=images.device, generator=gen)
        loss = loss_fn(model, images[idx], gen)
        optimizer_step(loss, model, opt, grad_clip=recipe.grad_clip)
        recipe.ema_update(step)
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    bar.close()
    return recipe.ema_model(), {"steps": step, "train_wall_s": wall, "train_images_per_s": step * batch / wall,
                                "batch_size": batch}


def lucidrains_peer(args, device, shape, model_cfg, own: bool = False):
    """With ``own``, its own defaults instead of ours' settings: GaussianDiffusion's v-prediction and
    sigmoid schedule on [0, 1] images (auto_normalize), and its Trainer's recipe: batch 16, Adam at 1e-4
    with betas (0.9, 0.99), no learning-rate schedule, gradient clipping at 1, EMA 0.995 every 10 steps."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    channels, height, width = shape
    unet = Unet(dim=args.lucid_dim, dim_mults=DATASETS[args.data]["lucid_mults"], channels=channels, flash_attn=False)
    # sampling_timesteps < T: its DDIM (eta 0).
    if own:
        diffusion = GaussianDiffusion(unet, image_size=(height, width), timesteps=1000,
                                      sampling_timesteps=args.steps).to(device)
    else:  # auto_normalize=False: it takes and returns [-1, 1] like ours.
        diffusion = GaussianDiffusion(unet, image_size=(height, width), timesteps=1000, objective="pred_noise",
                                      beta_schedule="linear", auto_normalize=False,
                                      sampling_timesteps=args.steps).to(device)
    scale = (lambda x: (x + 1) / 2) if own else (lambda x: x)

    def loss_fn(model, x0, gen):
        return model(scale(x0))  # its own Algorithm 1: t and noise from the global generator

    def sample(ema, n, seed):
        torch.manual_seed(seed)  # its sampler draws from the global generator
        x = ema.sample(batch_size=n)
        return x * 2 - 1 if own else x

    def own_recipe(model):
        from ema_pytorch import EMA

        ema = EMA(model, beta=0.995, update_every=10)
        return Recipe(16, torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99)), None, 1.0,
                      lambda step: ema.update(), lambda: ema.ema_model.eval())

    return diffusion, count_params(unet), loss_fn, sample, own_recipe


def diffusers_peer(args, device, shape, model_cfg, own: bool = False):
    """With ``own``, the recipe of diffusers' unconditional training example (train_unconditional.py):
    batch 16, AdamW at 1e-4 with betas (0.95, 0.999), weight decay 1e-6, 500 warm-up steps then cosine
    decay (here over the wall-clock budget), gradient clipping at 1, EMAModel with warm-up (inv_gamma 1,
    power 3/4, max decay 0.9999); its DDPMScheduler defaults are already ours (linear betas, epsilon)."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    channels = (tuple(int(c) for c in args.diffusers_channels.split(",")) if args.diffusers_channels
                else DATASETS[args.data]["diffusers_channels"])
    levels = len(channels)
    unet = UNet2DModel(sample_size=shape[1:], in_channels=shape[0], out_channels=shape[0],
                       block_out_channels=channels, layers_per_block=model_cfg["num_res_blocks"],
                       down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
                       norm_num_groups=min(32, channels[0])).to(device)
    betas = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    scheduler = DDPMScheduler(**betas)
    if args.sampler == "ddim":
        sampler, step_kwargs = DDIMScheduler(**betas, timestep_spacing="trailing"), {"eta": 0.0}
    else:
        sampler, step_kwargs = scheduler, {}

    def loss_fn(model, x0, gen):
        t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device, generator=gen)
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
        return F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)

    @torch.no_grad()
    def sample(ema, n, seed):
        g = torch.Generator("cpu").manual_seed(seed)
        x = torch.randn((n, *shape), generator=g).to(device)
        sampler.set_timesteps(args.steps)
        for t in sampler.timesteps:
            x = sampler.step(ema(x, t).sample, t, x, generator=g, **step_kwargs).prev_sample
        return x

    def own_recipe(model):
        import copy

        from diffusers.training_utils import EMAModel

        ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)

        def ema_model():
            averaged = copy.deepcopy(model)
            ema.copy_to(averaged.parameters())
            return averaged.eval()

        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        schedule = {"lr": 1e-4, "warmup_steps": 500, "lr_decay": "cosine", "lr_min_ratio": 0.0}  # cosine to 0
        return Recipe(16, opt, wall_clock_lr(schedule), 1.0,
                      lambda step: ema.step(model.parameters()), ema_model)

    return unet, count_params(unet), loss_fn, sample, own_recipe


# Rows: name -> (factory, trained with the peer's own defaults rather than ours' recipe)
PEERS = {"lucidrains": (lucidrains_peer, False), "diffusers": (diffusers_peer, False),
         "lucidrains-own": (lucidrains_peer, True), "diffusers-own": (diffusers_peer, True)}


# --- evaluation -------------------------------------------------------------------------------------------


def timed_samples(name: str, sample_batch, n: int, batch: int, seed: int, device) -> tuple[torch.Tensor, float]:
    """``n`` samples from ``sample_batch(count, seed)`` in batches, with a progress bar; (images, seconds)."""
    from tqdm.auto import tqdm

    out, t0 = [], time.perf_counter()
    with tqdm(total=n, desc=f"sampling {name}", unit="img") as bar:
        for start in range(0, n, batch):
            out.append(sample_batch(min(batch, n - start), seed + start).float().cpu())
            bar.update(len(out[-1]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out).clamp(-1, 1), time.perf_counter() - t0


def score(name: str, images: torch.Tensor, extractor, ref, out: Path, seed: int, device) -> dict:
    import numpy as np

    from ddpm.evaluation.report import score_images
    from ddpm.viz.grid import save_grid, to_uint8

    save_grid(images[:100], out / f"{name}.png", nrow=10)
    np.savez(out / f"{name}_samples.npz", to_uint8(images))
    return score_images(METRICS, images, extractor, ref, device=device, num_classes=10, seed=seed)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from dataclasses import asdict

    from ddpm.data.datasets import load_dataset
    from ddpm.evaluation.reference import classifier_reference, real_floor_images
    from ddpm.evaluation.samples import generate_samples
    from ddpm.io import resolve_device
    from ddpm.pipeline import SamplingOptions, load_run
    from ddpm.presets import make_config, preset_for_data

    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",")]
    preset = make_config(preset_for_data(args.data))
    data = load_dataset(args.data, args.data_dir, image_size=preset.model.image_size,
                        channels=preset.model.in_channels)
    images = data.images.to(device)
    sampling = "ancestral, 1000 steps" if args.sampler == "ancestral" else f"DDIM (eta 0), {args.steps} steps"

    extractor, ref = classifier_reference(data, device=device, progress=False)
    clf_info = extractor.info
    print(f"{args.data} classifier: held-out accuracy {clf_info['held_out_accuracy']:.4f} ({clf_info['path']})",
          flush=True)

    rows: dict[str, dict] = {}
    real, real_label = real_floor_images(data, args.n, args.seed)  # the floor at this sample size
    rows["real"] = {"images": real_label, **score("real", real, extractor, ref, out, args.seed, device)}
    run_dir, wall, ours_info = train_ours(args, out, device) if "ours" in models or args.budget is None else (None, None, {})
    budget = args.budget or wall
    train_cfg, model_cfg = asdict(preset.train), asdict(preset.model)
    if "ours" in models:
        run = load_run(run_dir, device)
        cfg = run.config
        train_cfg, model_cfg = asdict(cfg.train), asdict(cfg.model)
        options = SamplingOptions(args.sampler, steps=None if args.sampler == "ancestral" else args.steps)

        def ours_batch(k, seed):
            return generate_samples(run, k, seed=seed, batch_size=k, progress=False, sampling=options)

        x, s = timed_samples("ours", ours_batch, args.n, args.sample_batch, args.seed, device)
        rows["ours"] = {"params": count_params(run.model), "steps": run.step, "train_wall_s": wall,
                        "train_images_per_s": run.step * cfg.train.batch_size / wall,
                        "sample_images_per_s": args.n / s, "run": str(run_dir), **ours_info,
                        **score("ours", x, extractor, ref, out, args.seed, device)}
        print("ours:", rows["ours"], flush=True)

    for name, (make, own) in PEERS.items():
        if name not in models:
            continue
        torch.manual_seed(args.seed)
        model, params, loss_fn, sample, own_recipe = make(args, device, data.shape, model_cfg, own=own)
        recipe = own_recipe(model) if own else ours_recipe(model, train_cfg)
        ema, info = train_peer(name, model, loss_fn, images, budget, args.seed, recipe)
        with torch.inference_mode():
            x, s = timed_samples(name, lambda k, seed: sample(ema, k, seed), args.n, args.sample_batch, args.seed, device)
        rows[name] = {"params": params, **info, "recipe": "own defaults" if own else "ours",
                      "sample_images_per_s": args.n / s, **score(name, x, extractor, ref, out, args.seed, device)}
        print(f"{name}:", rows[name], flush=True)
    if args.reuse:
        earlier = json.loads(Path(args.reuse).read_text())
        if abs(earlier["budget_s"] - budget) > 1 or earlier["n"] != args.n or earlier["sampling"] != sampling:
            sys.exit(f"{args.reuse}: another budget, sample count or sampler; its rows cannot join this table")
        for name, row in earlier["rows"].items():
            rows.setdefault(name, {**row, "reused_from": args.reuse})

    order = ["real", "ours", *PEERS]
    rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    result = {"data": args.data, "n": args.n, "budget_s": budget, "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "sampling": sampling, "recipe": train_cfg,
              "classifier": {"held_out_accuracy": clf_info["held_out_accuracy"], "path": clf_info["path"]},
              "rows": rows, "targets": targets(rows) if args.data == "digits" else {},
              **provenance("quality.py", argv, device)}
    write_text_atomic(out / "results.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "results.md", to_markdown(result))
    print(to_markdown(result))
    return result


def targets(rows: dict) -> dict:
    """Issue 2: ours' distance <= half the better peer's (separately against the peers trained with ours'
    recipe and with their own defaults), >= 90% confident samples, class entropy >= 0.97."""
    if "ours" not in rows:
        return {}
    ours = rows["ours"]
    t = {"confident_share >= 0.9": ours["confident_share"] >= 0.9, "class_entropy >= 0.97": ours["class_entropy"] >= 0.97}
    for label, own in (("ours' recipe", False), ("their own defaults", True)):
        peers = [r["fid"] for k, r in rows.items() if k in PEERS and PEERS[k][1] == own]
        if peers:
            t[f"fid <= 0.5 x best peer ({label})"] = ours["fid"] <= 0.5 * min(peers)
    return t


def to_markdown(r: dict) -> str:
    head = ("| model | recipe | params | train steps | train img/s | sample img/s | classifier FD | KID | precision "
            "| recall | % confident | class entropy |")
    lines = [f"# {r['data']} quality: {r['n']} samples each, {r['sampling']}, {r['budget_s']:.0f} s training budget, "
             f"{r['device']} ({threads_text(r['threads'])})", "",
             *cpu_line(r.get("cpu"), "results.json"),
             f"Classifier held-out accuracy: {r['classifier']['held_out_accuracy']:.4f}", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for name, row in r["rows"].items():
        recipe = "-" if name == "real" else row.get("recipe", "ours") + (" (reused)" if "reused_from" in row else "")
        label = f"real ({row['images']})" if name == "real" and "images" in row else name
        cost = ("| - | - | - | - " if name == "real" else
                f"| {row['params'] / 1e6:.2f}M | {row['steps']} | {row['train_images_per_s']:.0f} "
                f"| {row['sample_images_per_s']:.2f} ")
        fd = f"{row['fid']:.3f}" + (f" ± {row['fid_se']:.3f}" if row.get("fid_se") is not None else "")
        lines.append(f"| {label} | {recipe} {cost}| {fd} | {row['kid_mean']:.4f} "
                     f"| {row['precision']:.3f} | {row['recall']:.3f} | {100 * row['confident_share']:.1f} "
                     f"| {row['class_entropy']:.4f} |")
    if r.get("command"):
        lines += ["", f"Command: `{r['command']}`"]
    if r["targets"]:
        lines += ["", "Issue 2 targets: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["targets"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
