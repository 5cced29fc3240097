"""The speed table: our U-Net presets against diffusers' ``UNet2DModel`` and lucidrains' ``Unet``
(denoising-diffusion-pytorch), timed in one run on one machine.

For every preset (``--presets mnist,cifar10``; ``digits`` for a smoke test) it builds our network and
the two peers at the same resolution, sized to a comparable number of FLOPs per image (counted with
``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions and attention; the ratio to ours is
printed and must lie within 0.75-1.25), and times:

(Ours computes each upsampling's nearest-neighbour resize and 3x3 convolution as one 2x2 convolution of
the low-resolution input, ``ddpm.models.layers.upsample_conv``: the same function with half of those
multiply-adds. Its counted FLOPs are what it executes, 0.91x (mnist) and 0.94x (cifar10) those of the
same blocks computed as a resize followed by a convolution, which is how the peers, sized to the latter,
compute them; their printed ratios are against the executed count.)

- the training step (images/s): draw t and noise, q_sample, the network, L_simple in float32
  (``ddpm.training.objective``), backward, gradient clipping at 1, the AdamW step and the EMA update,
  at the preset's batch size: ``ddpm.training.step.train_step``, the training loop's own step. Every
  row runs exactly this step; only the network, its precision and the AdamW implementation differ
  (ours: ``ddpm.runtime``'s choice for the device; the peers: PyTorch's default AdamW, as their
  trainers use it). Our presets train with dropout 0.1, the peers' defaults
  have none, so ours pays for drawing dropout masks.
- the sampling step (network evaluations/s = images per second of reverse steps, under inference
  mode): ours through ``Run.sample`` (``ddpm.pipeline``; Algorithm 2, the device's default options), diffusers
  through ``DDPMScheduler.step``, lucidrains through ``GaussianDiffusion.p_sample``.

Each peer runs in its default precision (float32) and again under the same bf16 autocast we use
(``ddpm.runtime.ModelRunner``). Our rows are ``ours`` (``--ours-variants``: ``auto`` = the device's
defaults; ``fp32``; any '+'-joined option values such as ``bf16+channels_last`` or
``bf16+reduce-overhead``, for choosing a device's defaults). Achieved GFLOP/s = images/s x counted FLOPs
per image (forward + backward for training, forward for sampling), beside the machine's matmul peak:
a large ``torch.mm`` timed in fp32 and bf16 in the same rounds (on CUDA the fp32 peak is without TF32,
while cuDNN convolutions use TF32 by default).

Timings are interleaved: ``--rounds`` rounds, each running every measurement for ``--seconds /
--rounds`` seconds, so load from other processes hits all rows alike; the table shows medians (the
JSON keeps every round). Writes OUT/speed.md and OUT/speed.json.

    .venv/bin/python benchmarks/speed.py --out bench_out/speed                     # this CPU, ~10 min
    .venv/bin/python benchmarks/speed.py --device cuda --out bench_out/speed-cuda \\
        --ours-variants auto,fp32,bf16+channels_last,bf16+none                          # GPU, defaults check
    .venv/bin/python benchmarks/speed.py --presets digits --seconds 0.3 --out /tmp/speed  # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm import runtime as rt
from ddpm.io import resolve_device, write_text_atomic
from ddpm.pipeline import Run, build_model, build_schedule
from ddpm.presets import make_config
from ddpm.runtime import ADAMW_IMPLS, COMPILE_MODES, MEMORY_FORMATS, PRECISIONS
from ddpm.training.ema import make_ema
from ddpm.training.objective import Objective
from ddpm.training.step import TrainState, train_step

# Peers sized to ours (FLOPs per image within ~10%, see the printed ratios): diffusers' block_out_channels
# and the level with attention (ours attends at 7x7 for mnist, 16x16 for cifar10, 4x4 for digits), and
# lucidrains' base width with its defaults (linear attention at outer levels, full attention innermost).
PEERS = {
    "digits": {"diffusers": dict(block_out_channels=(32, 64), attention_level=1),
               "lucidrains": dict(dim=32, dim_mults=(1, 2))},
    "mnist": {"diffusers": dict(block_out_channels=(32, 64, 64), attention_level=2),  # 1.09x ours' FLOPs
              "lucidrains": dict(dim=24, dim_mults=(1, 2, 2))},  # 0.94x (dim 32: 1.51x)
    "cifar10": {"diffusers": dict(block_out_channels=(64, 128, 128, 128), attention_level=1),
                "lucidrains": dict(dim=72, dim_mults=(1, 2, 2, 2))},
    # Ho et al.'s CIFAR-10 network: diffusers' UNet2DModel of google/ddpm-cifar10-32, the same network.
    "ddpm-cifar10": {"diffusers": dict(block_out_channels=(128, 256, 256, 256), attention_level=1),
                     "lucidrains": dict(dim=128, dim_mults=(1, 2, 2, 2))},
}
ENV_KNOBS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY")
OPTION_VALUES = {"precision": PRECISIONS, "memory_format": MEMORY_FORMATS, "compile": COMPILE_MODES,
                 "adamw_impl": ADAMW_IMPLS}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--presets", default="mnist,cifar10", help=f"comma-separated, of {', '.join(PEERS)}")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per measurement, split over the rounds")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (the real speed; needs a quiet machine); cpu: this process's CPU time "
                   "with one thread, for A/B ratios on a CPU shared with other jobs (implies --threads 1)")
    p.add_argument("--train-batch", type=int, help="training batch (default: the preset's)")
    p.add_argument("--sample-batch", type=int, help="sampling batch (default: the preset's training batch)")
    p.add_argument("--ours-variants", default="auto,fp32",
                   help="our rows: 'auto' (the device's defaults) or '+'-joined option values, e.g. "
                   "fp32, bf16+channels_last, bf16+default (default: auto,fp32)")
    p.add_argument("--peers", default="diffusers,lucidrains", help="comma-separated; '' for ours alone")
    p.add_argument("--cpu-allocator", default="auto", choices=rt.CPU_ALLOCATORS,
                   help="malloc for the whole process, every row alike (ddpm.runtime; auto: keep on a glibc CPU, "
                        "as ddpm train does)")
    p.add_argument("--out", default="bench_out/speed", help="folder for speed.md and speed.json")
    return p.parse_args(argv)


def parse_variant(text: str) -> dict[str, str]:
    """'bf16+channels_last' -> {"precision": "bf16", "memory_format": "channels_last"}; 'auto' -> {}."""
    options: dict[str, str] = {}
    for value in filter(None, text.split("+")):
        if value == "auto":
            continue
        names = [k for k, values in OPTION_VALUES.items() if value in values]
        if len(names) != 1:
            raise SystemExit(f"unknown option value {value!r} in --ours-variants {text!r}")
        options[names[0]] = value
    return options


# --- networks ---------------------------------------------------------------------------------------------


class SampleOutput(nn.Module):
    """diffusers' ``UNet2DModel`` as ``f(x, t) -> tensor`` (it returns an output object)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


def make_diffusers(cfg, block_out_channels, attention_level) -> nn.Module:
    """diffusers' UNet2DModel with ours' blocks per level (``layers_per_block``; its up path has one more,
    as ours has), attention at one level, and the given widths."""
    from diffusers import UNet2DModel

    n = len(block_out_channels)
    down = tuple("AttnDownBlock2D" if i == attention_level else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if i == attention_level else "UpBlock2D" for i in reversed(range(n)))
    c = cfg.model.in_channels
    return SampleOutput(UNet2DModel(sample_size=cfg.model.image_size, in_channels=c, out_channels=c,
                                    block_out_channels=block_out_channels,
                                    layers_per_block=cfg.model.num_res_blocks,
                                    down_block_types=down, up_block_types=up,
                                    norm_num_groups=min(32, block_out_channels[0])))


def make_lucidrains(cfg, dim, dim_mults) -> nn.Module:
    from denoising_diffusion_pytorch import Unet

    return Unet(dim=dim, dim_mults=dim_mults, channels=cfg.model.in_channels)


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_per_image(net: Callable, module: nn.Module, shape, device) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image, counted on a batch of 2."""
    x = torch.randn(2, *shape, device=device)
    t = torch.tensor([10, 500], device=device)
    with torch.no_grad():
        fwd = count_flops(lambda: net(x, t))
    train = count_flops(lambda: net(x, t).float().square().mean().backward())
    module.zero_grad(set_to_none=True)
    return fwd / 2, train / 2


# --- the two steps ------------------------------------------------------------------------------------------


def train_step_fn(cfg, module: nn.Module, net: Callable, optimizer, batch: int, device) -> Callable[[], int]:
    """``ddpm.training.step.train_step`` (the training loop's step) of ``net`` on random images; returns the
    images it processed."""
    schedule = build_schedule(cfg.diffusion).to(device)
    gen = torch.Generator(device).manual_seed(0)
    fp16 = getattr(net, "dtype", None) == torch.float16  # fp16 trains with its loss scaler, as the loop does
    state = TrainState(net, module, make_ema(module), optimizer, Objective(cfg.diffusion, schedule, device), gen,
                       cfg.train, scaler=rt.grad_scaler("fp16" if fp16 else "fp32", device))
    data = torch.rand(4 * batch, cfg.model.in_channels, *cfg.model.image_size, device=device, generator=gen) * 2 - 1
    module.train()

    def step_fn() -> int:
        idx = torch.randint(0, len(data), (batch,), device=device, generator=gen)
        train_step(state, data[idx])
        return batch

    return step_fn


def ours_train_step(cfg, model: nn.Module, *, precision: str = "auto", memory_format: str = "contiguous",
                    batch: int | None = None, warm_up_steps: int = 1, adamw_impl: str = "auto") -> Callable[[], int]:
    """``train_step_fn`` of ``model`` on the CPU with our options (precision and AdamW resolved for the
    CPU, uncompiled), after ``warm_up_steps`` untimed steps: the step the A/B and profile scripts time."""
    device = torch.device("cpu")
    net = rt.runner(model, rt.resolve(device, precision=precision, memory_format=memory_format, compile="none"))
    opt = rt.make_adamw(model.parameters(), lr=cfg.train.lr, weight_decay=0.0, impl=adamw_impl, device=device)
    step = train_step_fn(cfg, model, net, opt, batch or cfg.train.batch_size, device)
    for _ in range(warm_up_steps):
        step()
    return step


def with_variant(cfg, options: dict, device=None):
    """``cfg`` with ``options`` (a ``parse_variant``) in place of its own: ``adamw_impl`` in its train
    section, the others (and ``device``, when given) in its runtime section."""
    runtime = {k: v for k, v in options.items() if k != "adamw_impl"}
    if device is not None:
        runtime["device"] = str(device)
    train = {k: v for k, v in options.items() if k == "adamw_impl"}
    return dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, **runtime),
                               train=dataclasses.replace(cfg.train, **train))


def ours_sample_fn(cfg, model: nn.Module, batch: int, device, options: dict) -> Callable[[], int]:
    """A few reverse steps of ``Run.sample`` (Algorithm 2) on a batch with the runtime ``options`` (a
    ``parse_variant``; the rest: the config's); returns network evaluations.

    Several steps per call amortise the call's set-up (schedule tables, grid coefficients), which a real
    1000-step run pays once: 2 on a CPU, where a step takes a large part of a second, 20 on a GPU.
    """
    steps = 20 if device.type == "cuda" else 2
    gen = torch.Generator(device).manual_seed(0)
    T = cfg.diffusion.timesteps
    grid = list(range(T // 2, T // 2 - steps, -1))  # mid-grid steps: every step draws noise
    run, runtime = Run.of(model, cfg), with_variant(cfg, options, device).runtime

    def step_fn() -> int:
        run.sample(batch, generator=gen, timesteps=grid, runtime=runtime, progress=False)
        return batch * steps

    return step_fn


def diffusers_sample_fn(cfg, net: Callable, batch: int, device) -> Callable[[], int]:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=cfg.diffusion.timesteps, beta_schedule="linear")
    scheduler.set_timesteps(cfg.diffusion.timesteps)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, cfg.model.in_channels, *cfg.model.image_size, device=device, generator=gen)
    t = int(scheduler.timesteps[len(scheduler.timesteps) // 2])

    @torch.inference_mode()
    def step_fn() -> int:
        out = net(x, torch.full((batch,), t, device=device))
        scheduler.step(out, t, x, generator=gen)
        return batch

    return step_fn


def lucidrains_sample_fn(cfg, unet: nn.Module, batch: int, device, precision: str) -> Callable[[], int]:
    import contextlib

    from denoising_diffusion_pytorch import GaussianDiffusion

    diffusion = GaussianDiffusion(unet, image_size=cfg.model.image_size, timesteps=cfg.diffusion.timesteps,
                                  objective="pred_noise", beta_schedule="linear", auto_normalize=False).to(device)
    diffusion.eval()
    x = torch.randn(batch, cfg.model.in_channels, *cfg.model.image_size, device=device)
    t = cfg.diffusion.timesteps // 2

    def step_fn() -> int:
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            diffusion.p_sample(x, t)
        return batch

    return step_fn


def peak_fn(dtype: torch.dtype, device) -> tuple[Callable[[], int], int]:
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: (torch.mm(a, b), 2 * n**3)[1]), 1


# --- timing -------------------------------------------------------------------------------------------------


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# time.perf_counter, or time.process_time for --clock cpu: on a loaded machine a multi-threaded run's
# elapsed time mostly measures waiting (OpenMP threads stall on descheduled peers), while one thread's CPU
# time stays close to its quiet-machine time.
CLOCK = {"now": time.perf_counter}


def run_for(fn: Callable[[], int], seconds: float, device) -> float:
    """Units per second of ``fn`` (which returns the units it processed), over at least ``seconds``."""
    now = CLOCK["now"]
    sync(device)
    units, t0 = 0, now()
    while True:
        units += fn()
        if now() - t0 >= seconds:
            sync(device)
            return units / (now() - t0)


def warm_up(fn: Callable[[], int], device) -> float:
    """Seconds of the first calls (compilation, CUDA graph capture, allocator warm-up)."""
    calls = 3 if device.type == "cuda" else 1
    sync(device)
    t0 = CLOCK["now"]()
    for _ in range(calls):
        fn()
    sync(device)
    return CLOCK["now"]() - t0


def ab_parser(description: str, *, seconds: float, rounds: int, out: str) -> argparse.ArgumentParser:
    """The options of the A/B scripts (dropout_mask.py, upsample_conv.py): preset, threads, clock, rounds and
    the folder of their result files."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=out, help=f"folder of results.json and results.md (default: {out})")
    p.add_argument("--preset", default="mnist")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    p.add_argument("--seconds", type=float, default=seconds, help="seconds per measurement and round")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: this process's CPU time with one thread (implies --threads 1)")
    return p


def threads_text(n: int) -> str:
    """"1 thread", "2 threads"."""
    return f"{n} thread{'s' if n != 1 else ''}"


def write_ab(script: str, argv, args, result: dict, table: list[str]) -> None:
    """An A/B script's result files: OUT/results.json (its medians and per-round figures, the settings, the
    CPU and the command) and OUT/results.md (a heading, the CPU and the command, then ``table``)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = {"preset": args.preset, "threads": torch.get_num_threads(), "clock": args.clock, "rounds": args.rounds,
         "seconds": args.seconds, **provenance(script, argv, "cpu"), "result": result}
    clock = "elapsed time" if args.clock == "wall" else "CPU time of one thread"
    head = (f"# {script}: the {args.preset} preset, {threads_text(r['threads'])}, {clock}, medians of {args.rounds} "
            f"interleaved rounds of {args.seconds:g} s")
    write_text_atomic(out / "results.json", json.dumps(r, indent=2) + "\n")
    write_text_atomic(out / "results.md", "\n".join([head, "", *provenance_lines(r), *table]) + "\n")


def write_results(out: str | Path, r: dict, markdown: str) -> None:
    """A benchmark's result files: OUT/results.json (``r``) and OUT/results.md (``markdown``), each written
    atomically, and the page printed."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "results.json", json.dumps(r, indent=2) + "\n")
    write_text_atomic(folder / "results.md", markdown)
    print(markdown)


def set_threads(args) -> None:
    """``args.threads`` torch threads; one with ``--clock cpu``."""
    if args.clock == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)


def alternate(steps: dict[str, Callable[[], int]], args, device) -> dict[str, list[float]]:
    """Units/s of each step, timed in turn for ``args.rounds`` rounds of ``args.seconds`` on ``args.clock``;
    the clock is restored afterwards."""
    CLOCK["now"] = time.process_time if args.clock == "cpu" else time.perf_counter
    rates: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for _ in range(args.rounds):
            for name, step in steps.items():
                rates[name].append(run_for(step, args.seconds, device))
    finally:
        CLOCK["now"] = time.perf_counter
    return rates


# --- rows ---------------------------------------------------------------------------------------------------


def build_rows(preset: str, args, device) -> list[dict]:
    """Every row of one preset: its networks, FLOP counts and the two step functions."""
    # Every row runs with main()'s --cpu-allocator (process-wide): the config says so, so that sampling
    # through Run does not switch malloc for the rows after it.
    cfg = make_config(preset)
    cfg.runtime.cpu_allocator = args.cpu_allocator_resolved
    cfg.runtime.device = str(device)
    shape = (cfg.model.in_channels, *cfg.model.image_size)
    train_batch = args.train_batch or cfg.train.batch_size
    sample_batch = args.sample_batch or train_batch
    rows = []
    for variant in args.ours_variants.split(","):
        options = parse_variant(variant)
        ours = with_variant(cfg, options)
        r = ours.runtime
        train_options = rt.resolve(device, precision=r.precision, memory_format=r.memory_format, compile=r.compile)
        resolved = {"precision": train_options.precision, "memory_format": train_options.memory_format,
                    "compile": train_options.compile,
                    "adamw_impl": rt.resolve_adamw_impl(ours.train.adamw_impl, device)}
        torch.manual_seed(0)
        fresh = build_model(cfg.model).to(device)  # FLOPs are counted on a plain float32 copy
        model = build_model(cfg.model).to(device)
        net = rt.runner(model, train_options)
        optimizer = rt.make_adamw(model.parameters(), lr=cfg.train.lr, weight_decay=0.0,
                                  impl=resolved["adamw_impl"], device=device)
        sampler_model = build_model(cfg.model).to(device)
        sample_resolved = rt.resolve_compile(r.compile, device, sampling=True)
        rows.append({
            "preset": preset, "model": "ours" if variant == "auto" else f"ours[{variant}]", "family": "ours",
            "config": f"base {cfg.model.base_channels}, mult {cfg.model.channel_mult}, dropout {cfg.model.dropout}",
            "options": {**resolved, "sample_compile": sample_resolved}, "precision": resolved["precision"],
            "params": sum(p.numel() for p in model.parameters()),
            "flops": flops_per_image(rt.ModelRunner(fresh), fresh, shape, device),
            "train": train_step_fn(cfg, model, net, optimizer, train_batch, device),
            "sample": ours_sample_fn(cfg, sampler_model, sample_batch, device, options),
        })
    for peer in filter(None, args.peers.split(",")):
        spec = PEERS[preset][peer]
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            make = make_diffusers if peer == "diffusers" else make_lucidrains
            module = make(cfg, **spec).to(device)
            net = rt.ModelRunner(module, precision=precision)
            sample_module = make(cfg, **spec).to(device).eval()
            sample_net = rt.ModelRunner(sample_module, precision=precision)
            rows.append({
                "preset": preset, "model": peer if precision == "fp32" else f"{peer}[bf16]", "family": peer,
                "config": ", ".join(f"{k} {v}" for k, v in spec.items()), "precision": precision,
                "options": {"precision": precision, "adamw_impl": "PyTorch default"},
                "params": sum(p.numel() for p in module.parameters()),
                "flops": flops_per_image(rt.ModelRunner(module), module, shape, device),
                "train": train_step_fn(cfg, module, net, torch.optim.AdamW(module.parameters(), lr=cfg.train.lr),
                                       train_batch, device),
                "sample": (diffusers_sample_fn(cfg, sample_net, sample_batch, device) if peer == "diffusers"
                           else lucidrains_sample_fn(cfg, sample_module, sample_batch, device, precision)),
            })
    ours_fwd = rows[0]["flops"][0]
    for row in rows:
        row["flop_ratio"] = row["flops"][0] / ours_fwd
        if not 0.75 <= row["flop_ratio"] <= 1.25:
            warnings.warn(f"{preset} {row['model']}: forward FLOPs {row['flop_ratio']:.2f}x ours, outside 0.75-1.25")
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.clock == "cpu":
        if device.type != "cpu":
            raise SystemExit("--clock cpu times CPU work; use --clock wall on a GPU")
        CLOCK["now"] = time.process_time
    set_threads(args)
    allocator = args.cpu_allocator_resolved = rt.configure_cpu_allocator(args.cpu_allocator, device)
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    presets = [p.strip() for p in args.presets.split(",")]
    for p in presets:
        if p not in PEERS:
            raise SystemExit(f"unknown preset {p!r}; choose from {', '.join(PEERS)}")

    rows = [row for p in presets for row in build_rows(p, args, device)]
    peaks = {name: peak_fn(dtype, device)[0] for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    jobs = [(f"peak {k}", fn) for k, fn in peaks.items()]
    for i, row in enumerate(rows):
        jobs += [(f"{i} train", row["train"]), (f"{i} sample", row["sample"])]
    warm = {}
    for name, fn in jobs:
        warm[name] = warm_up(fn, device)
        print(f"warm-up {name}: {warm[name]:.1f}s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name, _ in jobs}
    for r in range(args.rounds):
        for name, fn in jobs:
            rates[name].append(run_for(fn, args.seconds / args.rounds, device))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    peak = {k: statistics.median(rates[f"peak {k}"]) / 1e9 for k in peaks}
    table = []
    for i, row in enumerate(rows):
        fwd, train_flops = row["flops"]
        train, sample = statistics.median(rates[f"{i} train"]), statistics.median(rates[f"{i} sample"])
        table.append({
            **{k: row[k] for k in ("preset", "model", "family", "config", "precision", "options", "params",
                                   "flop_ratio")},
            "gflop_forward": fwd / 1e9, "gflop_train": train_flops / 1e9,
            "train_images_per_s": train, "sample_evals_per_s": sample,
            "train_gflops": train * train_flops / 1e9, "sample_gflops": sample * fwd / 1e9,
            "train_rounds": rates[f"{i} train"], "sample_rounds": rates[f"{i} sample"],
            "warmup_s": {"train": warm[f"{i} train"], "sample": warm[f"{i} sample"]},
        })
    for row in table:
        base = next(r for r in table if r["preset"] == row["preset"] and r["model"] == "diffusers") \
            if "diffusers" in args.peers else None
        row["train_share_bf16_peak"] = row["train_gflops"] / peak["bf16"]
        row["sample_share_bf16_peak"] = row["sample_gflops"] / peak["bf16"]
        row["train_share_fp32_peak"] = row["train_gflops"] / peak["fp32"]
        row["sample_share_fp32_peak"] = row["sample_gflops"] / peak["fp32"]
        if base is not None:
            row["train_vs_diffusers"] = row["train_images_per_s"] / base["train_images_per_s"]
            row["sample_vs_diffusers"] = row["sample_evals_per_s"] / base["sample_evals_per_s"]
    result = {
        "device": describe(device), "cpu": cpu_info(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "clock": args.clock, "cpu_allocator": allocator,
        "seconds": args.seconds, "rounds": args.rounds, "peak_gflops": peak,
        "peak_rounds": {k: rates[f"peak {k}"] for k in peaks}, "rows": table,
        "command": shlex.join(["python", "benchmarks/speed.py", *(sys.argv[1:] if argv is None else argv)]),
        # Variables that change which kernels run (ONEDNN_MAX_CPU_ISA=AVX512_CORE: a CPU without bf16 units).
        "env": {k: os.environ[k] for k in ENV_KNOBS if k in os.environ},
    }
    write_text_atomic(out / "speed.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "speed.md", to_markdown(result))
    print(to_markdown(result))
    return result


def cpu_info() -> dict:
    """The CPU's model and flags as lscpu reports them (/proc/cpuinfo where lscpu is missing), so every
    figure says which machine it comes from."""
    fields = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                fields.setdefault({"model name": "Model name", "flags": "Flags"}.get(key.strip(), key.strip()),
                                  value.strip())
        except OSError:
            pass
    return {"model": fields.get("Model name", platform.processor() or platform.machine()),
            "cores": fields.get("CPU(s)"), "flags": fields.get("Flags", "").split()}


def describe(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    flags = [k for k in ("avx512_bf16", "amx_bf16") if caps.get(k)]
    return f"CPU {platform.processor() or platform.machine()} ({', '.join(flags) or 'no native bf16'})"


def cpu_line(cpu: dict | None, result_file: str = "speed.json") -> list[str]:
    """The lscpu model and the flags that decide the fast paths (AVX-512, bf16, AMX), for a result page
    whose JSON (``result_file``) keeps all of the flags."""
    if not cpu:
        return []
    wanted = [f for f in cpu["flags"] if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2", "fma"))]
    return [f"CPU: {cpu['model']}, {cpu.get('cores')} logical CPUs; flags: {' '.join(wanted) or 'none of note'} "
            f"(all of lscpu's flags are in {result_file}).", ""]


def provenance(script: str, argv, device) -> dict:
    """What a result file records about where and how it was measured: the CPU (on a CPU run) and the
    benchmark's own command line (``argv`` None: this process's)."""
    return {"cpu": cpu_info() if getattr(device, "type", device) == "cpu" else None,
            "command": shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])}


def provenance_lines(r: dict, result_file: str = "results.json") -> list[str]:
    """The CPU line and the command of a result recorded by :func:`provenance`, for its markdown page."""
    return [*cpu_line(r.get("cpu"), result_file), *([f"Command: `{r['command']}`", ""] if r.get("command") else [])]


def to_markdown(r: dict) -> str:
    peak = r["peak_gflops"]
    clock = "elapsed time" if r.get("clock", "wall") == "wall" else "CPU time of one thread"
    allocator = f", malloc {r['cpu_allocator']}" if r.get("cpu_allocator") else ""
    lines = [f"# Speed: {r['device']}, torch {r['torch']}, {threads_text(r['threads'])}, {clock}{allocator}",
             "", *cpu_line(r.get("cpu")),
             *([f"Environment: {' '.join(f'{k}={v}' for k, v in r['env'].items())}", ""] if r.get("env") else []),
             f"Matmul peak (median of {r['rounds']} interleaved rounds): fp32 {peak['fp32']:.0f} GFLOP/s, "
             f"bf16 {peak['bf16']:.0f} GFLOP/s. Medians of {r['rounds']} rounds of {r['seconds'] / r['rounds']:.1f} s.",
             "", "| preset | model | config | precision | params | GFLOP/img fwd | FLOPs vs ours | train img/s "
             "| train GFLOP/s | % peak | vs diffusers | sample evals/s | sample GFLOP/s | % peak "
             "| vs diffusers |", "|" + "---|" * 15]

    def versus(x, kind):  # "-" where no diffusers row of the preset was measured
        return f"{x[f'{kind}_vs_diffusers']:.2f}x" if f"{kind}_vs_diffusers" in x else "-"

    def share(x, kind):  # of the matmul peak in the row's own precision (an fp32 row: the fp32 peak)
        return 100 * x[f"{kind}_share_{'fp32' if x['precision'] == 'fp32' else 'bf16'}_peak"]

    for x in r["rows"]:
        lines.append(
            f"| {x['preset']} | {x['model']} | {x['config']} | {x['precision']} | {x['params'] / 1e6:.2f}M "
            f"| {x['gflop_forward']:.3f} | {x['flop_ratio']:.2f} | {x['train_images_per_s']:.1f} "
            f"| {x['train_gflops']:.0f} | {share(x, 'train'):.0f}% "
            f"| {versus(x, 'train')} | {x['sample_evals_per_s']:.1f} "
            f"| {x['sample_gflops']:.0f} | {share(x, 'sample'):.0f}% "
            f"| {versus(x, 'sample')} |")
    lines += ["", "% peak: the row's GFLOP/s as a share of the matmul peak in its own precision (fp32 rows: the "
              "fp32 peak; bf16 rows: the bf16 peak).", ""]
    for preset in dict.fromkeys(x["preset"] for x in r["rows"]):
        rows = {x["model"]: x for x in r["rows"] if x["preset"] == preset}
        if "ours" not in rows:
            continue
        for peer in [m for m in rows if rows[m]["family"] != "ours"]:
            ours, other = rows["ours"], rows[peer]
            lines.append(f"- {preset}: ours / {peer}: training "
                         f"{ours['train_images_per_s'] / other['train_images_per_s']:.2f}x, sampling "
                         f"{ours['sample_evals_per_s'] / other['sample_evals_per_s']:.2f}x")
    lines += ["", "Our options per row: " + "; ".join(
        f"{x['preset']} {x['model']}: " + ", ".join(f"{k}={v}" for k, v in x["options"].items())
        for x in r["rows"] if x["family"] == "ours")]
    if r.get("command"):
        lines += ["", f"Command: `{r['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
