"""Issue 4's target: the ``mnist`` preset trained on the 10,000 MNIST test images for a wall-clock budget
on a 2-core CPU, against lucidrains' denoising-diffusion-pytorch (``Unet`` + ``GaussianDiffusion``) trained
on the same images for the same time, compared by classifier-FID (``ddpm.evaluation``).

"The same time": each model trains until ``--minutes`` of wall-clock have passed. Ours first times
``--calibrate-steps`` steps to choose how many steps fit (so its cosine learning-rate decay ends on
time), and a watchdog interrupts it at the budget should the machine slow down (the loop saves on
Ctrl-C). lucidrains' model trains with its Trainer's defaults (Adam 1e-4, betas (0.9, 0.99), EMA 0.995
every 10 steps, gradient clipping at 1; its GaussianDiffusion defaults: v-prediction, sigmoid
schedule, T = 1000) at our batch size, stopping at the budget. Both sample ``--n-fid`` images with
``--sample-steps`` deterministic DDIM steps (lucidrains' ``sampling_timesteps``; ours
``--sampler ddim``), or Algorithm 2 when that is 1000.

FID uses a small CNN classifier trained on the same 10,000 images (``ddpm.evaluation.reference.
cached_classifier``, cached under ``$DDPM_CACHE``) and all 10,000 as the reference; the "real floor" is
the FID of ``--n-fid`` real images against them (what a perfect model would score at that sample size).

Writes OUT/results.json, OUT/results.md, OUT/ours.png, OUT/lucidrains.png and our run in OUT/ours/
(with loss.png). Full run (about 2 x 60 minutes of training plus sampling; do not run it casually):

    nice -n 10 .venv/bin/python benchmarks/mnist_quality.py --data-dir ../shared/data/mnist \\
        --minutes 60 --n-fid 1000 --sample-steps 100 --out benchmarks/results/mnist_quality

Tiny smoke run (seconds; keep its classifier out of the real cache):

    DDPM_CACHE=/tmp/ddpm-cache .venv/bin/python benchmarks/mnist_quality.py --data-dir ../shared/data/mnist \\
        --minutes 0.05 --calibrate-steps 2 --n-fid 16 --sample-steps 5 --classifier-epochs 1 --out /tmp/mq
"""

from __future__ import annotations

import _thread
import argparse
import json
import threading
import time
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/mnist", help="folder with the MNIST IDX files")
    p.add_argument("--minutes", type=float, default=60.0, help="training wall-clock budget per model")
    p.add_argument("--calibrate-steps", type=int, default=20)
    p.add_argument("--n-fid", type=int, default=1000, help="samples per model for FID")
    p.add_argument("--sample-steps", type=int, default=100, help="sampling steps for both models")
    p.add_argument("--classifier-epochs", type=int, default=20)
    p.add_argument("--lucid-dim", type=int, default=32, help="lucidrains Unet base width")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/mnist_quality")
    return p.parse_args(argv)


def count_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class Watchdog:
    """Interrupts the main thread (KeyboardInterrupt) after ``seconds``; our loop saves and returns."""

    def __init__(self, seconds: float):
        self.timer = threading.Timer(seconds, _thread.interrupt_main)
        self.timer.daemon = True

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


def train_ours(args, data, out: Path, budget: float) -> dict:
    from ddpm.api import load_run
    from ddpm.presets import make_config
    from ddpm.training.loop import train

    cfg = make_config("mnist")
    cfg.train.device, cfg.train.seed, cfg.train.sample_every = "cpu", args.seed, 0
    # Calibrate on a scratch run: the loop logs images/s measured after its start-up.
    calib = make_config("mnist")
    calib.train.device, calib.train.sample_every = "cpu", 0
    calib.train.steps = calib.train.checkpoint_every = calib.train.log_every = args.calibrate_steps
    train(calib, out / "calibration", data=data, progress=False)
    rate = json.loads((out / "calibration" / "log.jsonl").read_text().splitlines()[-1])["images_per_s"]
    per_step = calib.train.batch_size / rate
    # 3% head-room for the final checkpoint; the watchdog below stops a run that still overruns.
    cfg.train.steps = max(1, int(0.97 * budget / per_step))
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, cfg.train.steps // 10))
    cfg.train.checkpoint_every = max(1, cfg.train.steps // 4)
    cfg.train.log_every = max(1, min(50, cfg.train.steps // 20))
    t0 = time.perf_counter()
    with Watchdog(1.02 * budget):
        try:
            train(cfg, out / "ours", data=data, progress=False)
        except KeyboardInterrupt:  # the interrupt landed outside the loop's own handler
            pass
    seconds = time.perf_counter() - t0
    run = load_run(out / "ours")
    return {"run": run, "planned_steps": cfg.train.steps, "steps": run.step, "train_seconds": seconds,
            "seconds_per_step": per_step, "params": count_params(run.model), "batch_size": cfg.train.batch_size}


def train_lucidrains(args, data, budget: float, batch_size: int) -> dict:
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    torch.manual_seed(args.seed)
    unet = Unet(dim=args.lucid_dim, dim_mults=(1, 2, 2), channels=1, flash_attn=False)
    diffusion = GaussianDiffusion(unet, image_size=28, timesteps=1000, sampling_timesteps=args.sample_steps)
    ema = EMA(diffusion, beta=0.995, update_every=10)
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
    images01 = (data.images + 1) / 2  # lucidrains normalises [0, 1] inputs itself
    gen = torch.Generator().manual_seed(args.seed)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        idx = torch.randint(0, len(images01), (batch_size,), generator=gen)
        loss = diffusion(images01[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        ema.update()
        steps += 1
    return {"ema": ema, "steps": steps, "train_seconds": time.perf_counter() - t0, "params": count_params(unet),
            "last_loss": loss.item()}


@torch.no_grad()
def sample_lucidrains(ema, n: int, batch: int = 250) -> torch.Tensor:
    model = ema.ema_model.eval()
    out = [model.sample(batch_size=min(batch, n - i)) for i in range(0, n, batch)]
    return torch.cat(out) * 2 - 1


def main(argv=None) -> dict:
    from ddpm.data.datasets import load_dataset
    from ddpm.evaluation.classifier import ClassifierTrainConfig
    from ddpm.evaluation.features import extract, make_extractor
    from ddpm.evaluation.metrics import frechet_distance
    from ddpm.evaluation.reference import cached_classifier, reference_stats
    from ddpm.evaluation.samples import generate_samples
    from ddpm.viz.grid import save_grid

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    data = load_dataset("mnist", args.data_dir, image_size=(28, 28), channels=1)

    ours = train_ours(args, data, out, budget)
    lucid = train_lucidrains(args, data, budget, ours["batch_size"])

    t0 = time.perf_counter()
    sampler = {"sampler": "ddim", "steps": args.sample_steps} if args.sample_steps < 1000 else {}
    x_ours = generate_samples(ours["run"].model, ours["run"].config, args.n_fid, seed=args.seed, progress=False,
                              **sampler)
    ours["sample_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x_lucid = sample_lucidrains(lucid["ema"], args.n_fid)
    lucid["sample_seconds"] = time.perf_counter() - t0
    save_grid(x_ours[:64], out / "ours.png")
    save_grid(x_lucid[:64], out / "lucidrains.png")

    classifier, info, _ = cached_classifier(data, cfg=ClassifierTrainConfig(epochs=args.classifier_epochs),
                                            progress=False)
    extractor = make_extractor("classifier", classifier=classifier)
    ref = reference_stats(data, extractor, progress=False)

    def fid(x: torch.Tensor) -> float:
        feats, _ = extract(extractor, x.clamp(-1, 1), progress=False)
        return frechet_distance(ref.fid, feats)

    real = data.images[torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:args.n_fid]]
    results = {
        "budget_minutes": args.minutes, "n_fid": args.n_fid, "sample_steps": args.sample_steps,
        "classifier_held_out_accuracy": info.get("held_out_accuracy"), "fid_real_floor": fid(real),
        "ours": {k: v for k, v in ours.items() if k != "run"} | {"fid": fid(x_ours)},
        "lucidrains": {k: v for k, v in lucid.items() if k != "ema"} | {"fid": fid(x_lucid)},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


def to_markdown(r: dict) -> str:
    lines = [f"MNIST (10,000 test images), {r['budget_minutes']:g} min of training per model, "
             f"{r['n_fid']} samples with {r['sample_steps']} steps; classifier-FID (real floor "
             f"{r['fid_real_floor']:.3f}, classifier held-out accuracy {r['classifier_held_out_accuracy']})", "",
             "| model | params | steps | train s | sample s | FID |", "|---|---|---|---|---|---|"]
    for name in ("ours", "lucidrains"):
        m = r[name]
        lines.append(f"| {name} | {m['params']:,} | {m['steps']} | {m['train_seconds']:.0f} | "
                     f"{m['sample_seconds']:.0f} | {m['fid']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
