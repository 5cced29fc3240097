"""The training loop: Algorithm 1 of Ho et al. (2020), with AdamW, warm-up, clipping and EMA.

One readable file: ``train`` sets the run up and ``_loop`` runs it, one ``train_step`` (``ddpm.training.step``)
per batch. Rank-aware pieces (device, seeding, who logs and saves) come from ``ddpm.training.distributed``;
checkpoint I/O from ``ddpm.checkpoint``; the preview grids from ``ddpm.pipeline``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import torch

from ddpm import checkpoint as ckpt
from ddpm import runtime as rt
from ddpm.config import RunConfig, RuntimeConfig, flips
from ddpm.data import shards
from ddpm.data.datasets import ImageDataset, load_dataset
from ddpm.data.transforms import compact, expand, random_hflip
from ddpm.errors import UserError
from ddpm.io import pid_lock, progress_bar, say, write_text_atomic
from ddpm.models.text import build_vocabulary, null_tokens, tokenize
from ddpm.models.unet import (
    check_model_config,
    lone_channel_norm_widths,
    suggested_norm_groups,
)
from ddpm.pipeline import Run, SamplingOptions, build_model, build_schedule
from ddpm.pipeline.latent import (
    AUTOENCODER_DIR,
    encode_images,
    image_shape,
    is_text,
    keep_autoencoder,
    run_autoencoder,
)
from ddpm.training import distributed as dist
from ddpm.training.ema import make_ema
from ddpm.training.objective import Objective
from ddpm.training.step import TrainState, lr_at, seed_step, train_step
from ddpm.viz.grid import save_grid
from ddpm.viz.plots import save_loss_plot

PREVIEW_STEPS = 20  # network calls of each preview grid
PREVIEW_SAMPLER = "dpmpp2m"  # how the preview files name their sampler
LOCK = ".lock"  # in the run folder while ``ddpm train`` works on it (``ddpm.io.pid_lock``)


def check_data(data: ImageDataset, cfg: RunConfig) -> None:
    c, h, w = data.shape
    want = (cfg.model.in_channels, *cfg.model.image_size)
    if (c, h, w) != want:
        raise UserError(f"data set {data.name} has images of shape {c}x{h}x{w} but the model expects "
                        f"{want[0]}x{want[1]}x{want[2]}; pick a matching --preset or image size")
    if len(data) < 1:
        raise UserError(f"data set {data.name} is empty")
    if is_text(cfg.model) and data.captions is None:
        raise UserError(f"a text model needs captions, but data set {data.name} has none (an image folder with a "
                        "metadata.jsonl, mnist-pairs, or hf:NAME with --caption-column)")
    k = cfg.model.num_classes
    if k:
        if data.labels is None or not data.num_classes:
            raise UserError(f"a class-conditional model needs labels, but data set {data.name} has none")
        if data.num_classes != k:
            raise UserError(f"the model has {k} classes but data set {data.name} has {data.num_classes}")
        if not 0.0 <= cfg.train.p_uncond < 1.0:
            raise UserError(f"p_uncond must be in [0, 1), got {cfg.train.p_uncond}")


def check_shards(meta: dict, cfg: RunConfig) -> None:
    """A shard folder's images must have the model's size and channels, and labels for a conditional model."""
    want = (cfg.model.in_channels, *cfg.model.image_size)
    have = (meta["channels"], *meta["image_size"])
    if have != want:
        raise UserError(f"the shards in {cfg.train.data} hold {'x'.join(map(str, have))} images but the model "
                        f"expects {'x'.join(map(str, want))}; write them with --size and --channels to match")
    k = cfg.model.num_classes
    if k and len(meta.get("classes") or []) != k:
        raise UserError(f"the model has {k} classes but the shards in {cfg.train.data} have "
                        f"{len(meta.get('classes') or [])}")


def _memory_batches(data: ImageDataset, cfg: RunConfig, device: torch.device, per_rank: int,
                    gen: torch.Generator, condition: torch.Tensor | None, mirrored: torch.Tensor | None = None):
    """A function drawing a batch of ``per_rank`` images (with replacement) from the set held on the device,
    as uint8 where that is lossless (a quarter of the memory; ``expand`` makes each batch float), with their
    ``condition`` (labels or token ids) when there is one. A latent run's flip takes each image's latent from
    ``mirrored``, the latents of the mirrored images, with probability 1/2 (drawn after the indices, as the
    pixel flip is)."""
    images = compact(data.images).to(device)
    condition = None if condition is None else condition.to(device)
    mirrored = None if mirrored is None else mirrored.to(device)

    def batch():
        idx = torch.randint(0, len(images), (per_rank,), device=device, generator=gen)
        x = images[idx]
        if mirrored is not None:
            flip = torch.rand(per_rank, device=device, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], mirrored[idx], x)
        return x, None if condition is None else condition[idx]
    return batch


def _condition(data: ImageDataset, cfg: RunConfig) -> torch.Tensor | None:
    """What the network is conditioned on for each image: labels, the captions' token ids, or nothing. A words
    tokenizer's vocabulary is built from the captions of a new run (and saved in its config)."""
    m = cfg.model
    if is_text(m):
        if m.text_encoder == "trained" and m.tokenizer == "words" and not m.vocabulary:
            m.vocabulary = build_vocabulary(data.captions)
        return tokenize(list(data.captions), m)
    return data.labels if m.num_classes else None


def _latent_data(data: ImageDataset, cfg: RunConfig, first_stage, progress: bool):
    """A latent run's training set: the images' latents, encoded once (and the mirrored images' latents when
    the run flips, since a mirrored image's latent is not exactly the mirrored latent)."""
    latents = encode_images(first_stage, data.images, progress=progress)
    mirrored = encode_images(first_stage, data.images.flip(-1), progress=progress) if flips(cfg.train) else None
    return dataclasses.replace(data, images=latents.cpu()), None if mirrored is None else mirrored.cpu()


def _streamed_batches(cfg: RunConfig, env: dist.DistEnv, device: torch.device, per_rank: int, step: int):
    """A function returning the next batch streamed from shards by DataLoader workers (each rank and worker
    reads its own shards). A resumed run starts a fresh shuffle at the epoch it had reached."""
    tc = cfg.train
    meta = shards.read_meta(tc.data)
    workers = min(tc.data_workers, len(meta["shards"]) // env.world_size)  # no more workers than shards to read
    stream = shards.ShardStream(tc.data, seed=tc.seed, rank=env.rank, world_size=env.world_size,
                                start_epoch=step * tc.batch_size // meta["count"], workers=workers)
    loader = torch.utils.data.DataLoader(stream, batch_size=per_rank, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    it = iter(loader)

    def batch():
        x, y = next(it)
        return x.to(device, non_blocking=True), y.to(device) if cfg.model.num_classes else None
    return batch


def _run_id(run_dir: Path) -> str:
    return "ddpm-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]


class _Logger:
    """log.jsonl, and TensorBoard or Weights & Biases when asked for (``TrainConfig.logger``), on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, cfg: RunConfig):
        self.enabled, self.tb, self.wandb = enabled, None, None
        if not enabled:
            return
        kind = cfg.train.logger
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--logger tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(run_dir / "tb"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise UserError("--logger wandb needs the wandb package (pip install wandb)") from None
            self.wandb = wandb.init(project="ddpm", name=run_dir.name, dir=str(run_dir), config=cfg.to_dict(),
                                    id=_run_id(run_dir), resume="allow")  # a resumed run continues its curves
        self.file = open(run_dir / "log.jsonl", "a")

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()


def train(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, data: ImageDataset | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the run folder. Ctrl-C saves and returns."""
    run_dir = Path(run_dir)
    env = dist.DistEnv.from_environ()
    created = not run_dir.exists()
    try:
        with pid_lock(run_dir / LOCK, f"run folder {run_dir}") if env.is_main else contextlib.nullcontext():
            if env.is_main:  # temporary files of a process killed mid-write (no other writer holds the lock)
                for tmp in run_dir.glob(".*.tmp"):
                    tmp.unlink()
            return _train(cfg, run_dir, env, resume=resume, data=data, progress=progress)
    except BaseException:
        # A run that failed before its first checkpoint (bad data, a bad setting) leaves no folder behind.
        if created and env.is_main and _nothing_recorded(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(cfg: RunConfig, run_dir: Path, env: dist.DistEnv, *, resume: bool, data: ImageDataset | None,
           progress: bool) -> Path:
    device = dist.rank_device(cfg.runtime.device, env)
    dist.setup(env, device)
    tc = cfg.train
    saved = _saved_state(cfg, run_dir, resume)
    if saved is None and env.is_main:  # before the data load, which may take long (a latent run encodes it)
        _warn_lone_channel_norms(cfg)
    if not is_text(cfg.model):  # a text model's vocabulary comes from the data, so it is checked after them
        check_model_config(cfg.model)
    rt.check_options(adamw_impl=tc.adamw_impl)
    r = cfg.runtime
    options = rt.resolve(device, precision=r.precision, memory_format=r.memory_format, compile=r.compile)
    rt.configure_cpu_allocator(r.cpu_allocator, device)
    per_rank = dist.per_rank_batch(tc.batch_size, env)
    torch.manual_seed(tc.seed)  # the initial weights (the same on every rank; DDP also sends rank 0's)
    streamed = data is None and shards.is_shard_folder(tc.data)
    first_stage = mirrored = condition = None
    if streamed:
        if tc.autoencoder or is_text(cfg.model):
            raise UserError("latent and text runs train from a data set held in memory, not from shards")
        check_shards(shards.read_meta(tc.data), cfg)
    else:
        data, first_stage, mirrored, condition = _training_set(cfg, data, run_dir, env, device, progress)
    check_model_config(cfg.model)
    state = _train_state(cfg, options, env, saved)
    batches = (_streamed_batches(cfg, env, device, per_rank, state.step) if streamed
               else _memory_batches(data, cfg, device, per_rank, state.generator, condition, mirrored))
    if env.enabled and env.is_main:
        say(f"training on {env.world_size} processes: {per_rank} images each per step (batch {tc.batch_size})")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / ckpt.CONFIG, cfg.to_json() + "\n")
    logger = _Logger(run_dir, env.is_main, cfg)
    # Previews run the EMA model where it is, with the training runtime's precision and layout, uncompiled.
    preview_runtime = RuntimeConfig("auto", options.precision, options.memory_format, "none")
    # A glance, not a measurement: 20 calls of DPM-Solver++(2M) instead of T of Algorithm 2, named in the file.
    preview_sampling = SamplingOptions(sampler="dpm++2m", steps=min(PREVIEW_STEPS, cfg.diffusion.timesteps))

    signals = _Signals()

    def save() -> None:
        if env.is_main:
            ckpt.save_checkpoint(run_dir, cfg, state.step, state.model, state.ema, state.optimizer, {},
                                 extra=_extra_state(state))
            save_loss_plot(run_dir / "log.jsonl", run_dir / "loss.png")
        dist.barrier(env)  # every rank waits for the save: none runs ahead of a checkpoint it may resume from

    def preview() -> None:
        if env.is_main:
            g = torch.Generator("cpu").manual_seed(tc.seed)
            n = tc.num_sample_images
            k = cfg.model.num_classes  # a conditional model previews its classes in turn
            y = torch.arange(n) % k if k else None
            if condition is not None and is_text(cfg.model):  # a text model: the first captions of the data
                y = condition[torch.arange(n) % len(condition)]
            x = Run.of(state.ema, cfg, first_stage).sample(n, generator=g, progress=False, y=y,
                                                           runtime=preview_runtime, sampling=preview_sampling)
            save_grid(x, run_dir / "samples" / f"step_{state.step:07d}_{PREVIEW_SAMPLER}-{preview_sampling.steps}.png")

    try:
        with signals.installed():
            try:
                _loop(state, batches, logger, save, preview, progress=progress and env.is_main,
                      stop=lambda: dist.any_rank(signals.pending, env), flip=flips(tc) and first_stage is None)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM (preemption) at the end of a step: save, then stop
                save()
                logger.close()
                if env.is_main:
                    print(f"interrupted at step {state.step}; checkpoint saved to {run_dir} (continue with --resume)")
                return run_dir
            save()
    finally:
        dist.teardown(env)
    if tc.sample_every:
        preview()
    logger.close()
    return run_dir


def _warn_lone_channel_norms(cfg: RunConfig) -> None:
    """A new run whose GroupNorms would normalise single channels gets a warning naming the fix."""
    widths = lone_channel_norm_widths(cfg.model)
    if widths:
        levels = (f"{widths[0]}-channel level" if len(widths) == 1 else
                  f"{', '.join(map(str, widths[:-1]))}- and {widths[-1]}-channel levels")
        warnings.warn(f"--norm-groups {cfg.model.norm_groups} leaves one channel per group at the {levels}"
                      ": the network cannot see an image's mean colour, so samples come out in flat, "
                      f"oversaturated colours; pass --norm-groups {suggested_norm_groups(cfg.model)}", stacklevel=2)


def _training_set(cfg: RunConfig, data: ImageDataset | None, run_dir: Path, env: dist.DistEnv,
                  device: torch.device, progress: bool):
    """(the set training draws from, a latent run's first stage, the mirrored latents, the condition): the data
    set loaded (at the autoencoder's image size for a latent run), encoded for a latent run, checked against
    the model, and its labels or captions made into what the network is conditioned on."""
    tc = cfg.train
    first_stage = mirrored = None
    if tc.autoencoder:
        first_stage = _first_stage(tc.autoencoder, run_dir, env, device)
    if data is None:
        c, h, w = image_shape(first_stage) if first_stage else (cfg.model.in_channels, *cfg.model.image_size)
        data = load_dataset(tc.data, tc.data_dir, image_size=(h, w), channels=c,
                            skip_bad_images=tc.skip_bad_images, caption_column=tc.caption_column)
    if first_stage is not None:
        data, mirrored = _latent_data(data, cfg, first_stage, progress and env.is_main)
    check_data(data, cfg)
    return data, first_stage, mirrored, _condition(data, cfg)


def _first_stage(source: str, run_dir: Path, env: dist.DistEnv, device: torch.device):
    """A latent run's autoencoder on ``device``: rank 0 keeps a copy in the run folder (a resume reads that
    copy), the other ranks read it once it is there."""
    if env.is_main:
        first_stage = keep_autoencoder(source, run_dir)
    dist.barrier(env)
    if not env.is_main:
        first_stage = run_autoencoder(run_dir)
    first_stage.autoencoder.to(device).eval().requires_grad_(False)
    return first_stage


def _nothing_recorded(run_dir: Path) -> bool:
    """Whether a run folder holds only what a run writes before its first log line (its config, the lock)."""
    if not run_dir.is_dir():
        return False
    return all(p.name in (ckpt.CONFIG, LOCK, AUTOENCODER_DIR) or (p.name == "log.jsonl" and p.stat().st_size == 0)
               for p in run_dir.iterdir())


class _Signals:
    """SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send before they kill) both stop training: the
    signal only marks the stop, and the loop stops at the end of the step under way, saves a checkpoint and
    returns. So the checkpoint is always that of a whole step (a resumed run ends bit for bit where an
    uninterrupted one does), and further signals never cut the save short."""

    def __init__(self):
        self.pending = False

    def _handler(self, signum, frame) -> None:
        self.pending = True

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)



def _saved_state(cfg: RunConfig, run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint to resume from (its model and diffusion must be ``cfg``'s), or None for a new run."""
    if not resume:
        if (run_dir / ckpt.CHECKPOINT).exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        return None
    saved = ckpt.load_training_state(run_dir)
    # The saved run defines the model and the diffusion; only the training settings may change.
    if (saved["config"].model, saved["config"].diffusion) != (cfg.model, cfg.diffusion):
        raise UserError(f"the model or diffusion settings differ from the run in {run_dir}; "
                        "resume with the run's own settings")
    return saved


def _train_state(cfg: RunConfig, options: rt.Resolved, env: dist.DistEnv, saved: dict | None) -> TrainState:
    """Model, EMA, optimizer, objective and generator on the device, restored from ``saved`` when resuming."""
    tc, device = cfg.train, options.device
    schedule = build_schedule(cfg.diffusion).to(device)
    objective = Objective(cfg.diffusion, schedule, device)  # loss, t sampler, per-quartile logs
    model = rt.to_memory_format(build_model(cfg.model).to(device), options.memory_format)
    ema = make_ema(model)
    optimizer = rt.make_adamw(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, impl=tc.adamw_impl,
                              device=device)
    gen = torch.Generator(device)  # seeded afresh each step (``seed_step``)
    scaler = rt.grad_scaler(options.precision, device)
    step = skipped = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        rt.match_state_layouts(optimizer)
        objective.load_state_dict(saved.get("extra", {}))
        _load_scaler(scaler, saved.get("extra", {}))
        step = saved["step"]
        skipped = int(saved.get("extra", {}).get("skipped_steps", torch.tensor(0)).item())
    # Autocast, memory format and compilation wrap the (DDP) module; the weights stay the model's.
    wrapped = dist.wrap(model, env, device)
    network = rt.ModelRunner(wrapped, precision=options.precision, memory_format=options.memory_format,
                             compile=options.compile)
    model.checkpointing = tc.activation_checkpointing
    objective.gather = dist.gather_fn(env)  # the loss-aware t sampler learns from every rank's losses
    null = null_tokens(cfg.model, 1)[0].to(device) if is_text(cfg.model) else cfg.model.num_classes
    return TrainState(network, model, ema, optimizer, objective, gen, tc, null_label=null,
                      step=step, scaler=scaler, skipped=skipped, rank=env.rank,
                      no_sync=getattr(wrapped, "no_sync", contextlib.nullcontext), all_ranks=dist.all_true_fn(env))


def _extra_state(state: TrainState) -> dict[str, torch.Tensor]:
    """Training state beyond weights, optimizer and RNG that a resume needs: the timestep sampler's history
    and fp16's loss scale."""
    extra = {**state.objective.state_dict(), "skipped_steps": torch.tensor(state.skipped)}
    if state.scaler is not None:
        s = state.scaler.state_dict()
        extra["grad_scaler.scale"] = torch.tensor(float(s["scale"]))
        extra["grad_scaler.growth_tracker"] = torch.tensor(int(s["_growth_tracker"]))
    return extra


def _load_scaler(scaler: torch.amp.GradScaler | None, extra: dict[str, torch.Tensor]) -> None:
    if scaler is not None and "grad_scaler.scale" in extra:
        scaler.load_state_dict({**scaler.state_dict(), "scale": extra["grad_scaler.scale"].item(),
                                "_growth_tracker": int(extra["grad_scaler.growth_tracker"].item())})


def _loop(state: TrainState, batches, logger: "_Logger", save, preview, *, progress: bool,
          stop=lambda: False, flip: bool = False) -> None:
    """Train from ``state.step`` to the configured steps: a batch (``batches()``: images, labels or None),
    ``train_step``, then logs, checkpoints and previews at their intervals."""
    tc, gen = state.config, state.generator
    loss_sum = torch.zeros((), device=next(state.model.parameters()).device)
    loss_count = 0
    t_start, step_start = time.perf_counter(), state.step
    bar = progress_bar(total=tc.steps, initial=state.step, desc="training", disable=not progress, unit="step",
               dynamic_ncols=True)
    state.model.train()
    try:
        while state.step < tc.steps:
            seed_step(state)
            x, y = batches()
            x0 = expand(x)
            if flip:  # drawn after the batch, before train_step's draws
                x0 = random_hflip(x0, gen)
            loss = train_step(state, x0, y)
            if not state.skipped_in_row:  # a skipped step's loss is NaN or inf: kept out of the mean
                loss_sum += loss
                loss_count += 1
            bar.update(1)
            step = state.step
            if step % tc.log_every == 0 or step == tc.steps:
                mean_loss = loss_sum.item() / max(1, loss_count)  # CPU-GPU sync, once per log interval
                loss_sum.zero_()
                loss_count = 0
                rate = (step - step_start) * tc.batch_size / (time.perf_counter() - t_start)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                logger.log(step, loss=mean_loss, lr=lr_at(step - 1, tc), images_per_s=rate,
                           skipped_steps=state.skipped, **state.objective.log_values())
            if step % tc.checkpoint_every == 0 and step < tc.steps:
                save()
            if tc.sample_every and step % tc.sample_every == 0 and step < tc.steps:
                preview()
            if stop():
                raise KeyboardInterrupt
    finally:
        bar.close()
