"""The training loop: Algorithm 1 of Ho et al. (2020), with AdamW, warm-up, clipping and EMA.

One readable function. Rank-aware pieces (device, seeding, who logs and saves) come from
``ddpm.training.distributed``; checkpoint I/O from ``ddpm.training.checkpoint``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm import performance as perf
from ddpm.api import build_model, build_schedule, sample_images
from ddpm.config import RunConfig
from ddpm.data.datasets import ImageDataset, load_dataset
from ddpm.errors import UserError
from ddpm.models.unet import check_model_config
from ddpm.training import checkpoint as ckpt
from ddpm.training import distributed as dist
from ddpm.training.ema import ema_decay_at, make_ema, update_ema
from ddpm.training.objective import Objective
from ddpm.viz.grid import save_grid
from ddpm.viz.plots import save_loss_plot


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then constant or cosine decay to lr_min_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.lr_min_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def check_data(data: ImageDataset, cfg: RunConfig) -> None:
    c, h, w = data.shape
    want = (cfg.model.in_channels, *cfg.model.image_size)
    if (c, h, w) != want:
        raise UserError(f"data set {data.name} has images of shape {c}x{h}x{w} but the model expects "
                        f"{want[0]}x{want[1]}x{want[2]}; pick a matching --preset or image size")
    if len(data) < 1:
        raise UserError(f"data set {data.name} is empty")
    k = cfg.model.num_classes
    if k:
        if data.labels is None or not data.num_classes:
            raise UserError(f"a class-conditional model needs labels, but data set {data.name} has none")
        if data.num_classes != k:
            raise UserError(f"the model has {k} classes but data set {data.name} has {data.num_classes}")
        if not 0.0 <= cfg.train.p_uncond < 1.0:
            raise UserError(f"p_uncond must be in [0, 1), got {cfg.train.p_uncond}")


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Ho & Salimans (2022) Algorithm 1: each label becomes the "no label" index with probability p_uncond."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


class _Logger:
    """JSONL log (and TensorBoard when installed), on the main rank only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.file = open(run_dir / "log.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            pass

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _rng_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "train": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["train"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def train(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, data: ImageDataset | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the run folder. Ctrl-C saves and returns."""
    run_dir = Path(run_dir)
    env = dist.DistEnv.from_environ()
    device = dist.resolve_device(cfg.train.device, env)
    dist.setup(env, device)
    tc = cfg.train

    state = None
    if resume:
        state = ckpt.load_training_state(run_dir)
        # The saved run defines the model and the diffusion; only the training settings may change.
        saved = state["config"]
        if (saved.model, saved.diffusion) != (cfg.model, cfg.diffusion):
            raise UserError(f"the model or diffusion settings differ from the run in {run_dir}; "
                            "resume with the run's own settings")
    elif (run_dir / ckpt.CHECKPOINT).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")

    check_model_config(cfg.model)
    perf.check_options(adamw_impl=tc.adamw_impl)
    precision = perf.resolve_precision(tc.precision, device)
    memory_format = perf.resolve_memory_format(tc.memory_format, device)
    compile_mode = perf.resolve_compile(tc.compile, device)
    torch.manual_seed(tc.seed + env.rank)  # dropout draws from the global generator
    if data is None:
        data = load_dataset(tc.data, tc.data_dir, image_size=cfg.model.image_size,
                            channels=cfg.model.in_channels, skip_bad_images=tc.skip_bad_images)
    check_data(data, cfg)
    images = data.images.to(device)
    labels = data.labels.to(device) if cfg.model.num_classes and data.labels is not None else None

    schedule = build_schedule(cfg.diffusion).to(device)
    objective = Objective(cfg.diffusion, schedule, device)  # loss, t sampler, per-quartile logs
    model = perf.to_memory_format(build_model(cfg.model).to(device), memory_format)
    ema = make_ema(model)
    optimizer = perf.make_adamw(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, impl=tc.adamw_impl,
                                device=device)
    gen = torch.Generator(device).manual_seed(tc.seed * 1000 + env.rank)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        perf.match_state_layouts(optimizer)
        _set_rng_state(gen, state["rng"])
        objective.load_state_dict(state.get("extra", {}))
        step = state["step"]
    # Autocast, memory format and compilation wrap the (DDP) module; the weights stay the model's.
    train_model = perf.Network(dist.wrap(model, env, device), precision=precision, memory_format=memory_format,
                               compile=compile_mode)

    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_text_atomic(run_dir / ckpt.CONFIG, cfg.to_json() + "\n")
    logger = _Logger(run_dir, env.is_main)

    def save() -> None:
        if env.is_main:
            ckpt.save_checkpoint(run_dir, cfg, step, model, ema, optimizer, _rng_state(gen),
                                 extra=objective.state_dict())
            save_loss_plot(run_dir / "log.jsonl", run_dir / "loss.png")

    def preview() -> None:
        if env.is_main:
            g = torch.Generator("cpu").manual_seed(tc.seed)
            k = cfg.model.num_classes  # a conditional model previews its classes in turn
            y = torch.arange(tc.num_sample_images) % k if k else None
            x = sample_images(ema, cfg, tc.num_sample_images, generator=g, device=device, progress=False, y=y,
                              precision=precision, memory_format=memory_format, compile="none")
            save_grid(x, run_dir / "samples" / f"step_{step:07d}.png")

    n, T = len(data), cfg.diffusion.timesteps
    foreach_clip = device.type in ("cpu", "cuda")
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    t_start, step_start = time.perf_counter(), step
    bar = tqdm(total=tc.steps, initial=step, desc="training", disable=not (progress and env.is_main),
               unit="step", dynamic_ncols=True)
    model.train()
    try:
        while step < tc.steps:
            idx = torch.randint(0, n, (tc.batch_size,), device=device, generator=gen)
            x0 = images[idx]
            y = labels[idx] if labels is not None else None
            t, weights = objective.sample_timesteps(tc.batch_size, gen)
            noise = torch.randn(x0.shape, device=device, generator=gen)
            if y is not None:  # drawn from gen after t and noise, so --resume replays it exactly
                y = drop_labels(y, tc.p_uncond, cfg.model.num_classes, gen)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, tc)
            loss = objective.loss(train_model, x0, t, noise, weights, y=y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                # One foreach kernel for the norm and one for the scaling; no CPU-GPU sync.
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=foreach_clip)
            optimizer.step()
            update_ema(ema, model, ema_decay_at(step, tc.ema_decay))
            step += 1
            loss_sum += loss.detach()
            loss_count += 1
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.steps:
                mean_loss = loss_sum.item() / loss_count  # CPU-GPU sync point, once per log interval
                loss_sum.zero_()
                loss_count = 0
                rate = (step - step_start) * tc.batch_size * env.world_size / (time.perf_counter() - t_start)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                logger.log(step, loss=mean_loss, lr=lr_at(step - 1, tc), images_per_s=rate, **objective.log_values())
            if step % tc.checkpoint_every == 0 and step < tc.steps:
                save()
            if tc.sample_every and step % tc.sample_every == 0 and step < tc.steps:
                preview()
    except KeyboardInterrupt:
        bar.close()
        save()
        logger.close()
        if env.is_main:
            print(f"interrupted at step {step}; checkpoint saved to {run_dir} (continue with --resume)")
        dist.teardown(env)
        return run_dir
    bar.close()
    save()
    if tc.sample_every:
        preview()
    logger.close()
    dist.teardown(env)
    return run_dir
