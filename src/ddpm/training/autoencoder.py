"""Training the KL autoencoder, the first stage of latent diffusion (Rombach et al. 2022, LDM §3, App. G).

One readable file, with the conventions of ``ddpm.training.loop``: the run folder is locked while a process
works on it, every file is written atomically, every step draws from generators seeded by (seed, step), so
``--resume`` continues bit for bit, and Ctrl-C (or SIGTERM) saves at the end of the step under way.

A run folder holds:
  config.json                the AutoencoderRunConfig (with latent_scale once training has ended)
  autoencoder.safetensors    the weights with the config in their metadata (``load_autoencoder``)
  checkpoint.safetensors     weights, discriminator and optimizer states for ``--resume``
  log.jsonl, loss.png        the losses; reconstructions/step_*.png, held-out originals above reconstructions
  metrics.json               PSNR and SSIM of the held-out images (never trained on), at the last step

At the end the latents of (up to ``scale_images``) training images set latent_scale = 1 / std (LDM's
``scale_by_std``), so the latents latent diffusion sees have unit variance.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddpm import checkpoint as ckpt
from ddpm.config import AutoencoderRunConfig, AutoencoderTrainConfig
from ddpm.data.datasets import ImageDataset, load_dataset
from ddpm.data.transforms import compact, expand
from ddpm.errors import UserError
from ddpm.io import atomic_write, pid_lock, progress_bar, resolve_device, write_text_atomic
from ddpm.models.autoencoder import Autoencoder, check_autoencoder_config
from ddpm.models.autoencoder_io import AUTOENCODER, load_autoencoder, save_autoencoder
from ddpm.models.discriminator import NLayerDiscriminator, check_discriminator
from ddpm.models.perceptual import load_lpips
from ddpm.training.autoencoder_loss import AutoencoderObjective, hinge_d_loss
from ddpm.training.loop import LOCK, _nothing_recorded, _Signals
from ddpm.training.step import step_seed
from ddpm.viz.grid import save_grid
from ddpm.viz.plots import save_loss_plot

__all__ = ["latent_scale", "load_autoencoder", "save_autoencoder", "train_autoencoder"]

METRICS = "metrics.json"
BETAS = (0.5, 0.9)  # LDM's Adam betas for the autoencoder and the discriminator
MIN_LPIPS_SIDE = 16  # VGG16 halves the image four times before relu5_3
EVAL_BATCH = 256


def train_autoencoder(cfg: AutoencoderRunConfig, run_dir: str | Path, *, resume: bool = False,
                      data: ImageDataset | None = None, progress: bool = True) -> Path:
    """Train (or resume) an autoencoder run in ``run_dir``; returns the run folder. Ctrl-C saves and returns."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        with pid_lock(run_dir / LOCK, f"run folder {run_dir}"):
            for tmp in run_dir.glob(".*.tmp"):  # left by a process killed mid-write
                tmp.unlink()
            return _train(cfg, run_dir, resume=resume, data=data, progress=progress)
    except BaseException:
        if created and _nothing_recorded(run_dir):  # a run that failed before logging leaves no folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def split_holdout(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices): a seeded permutation; at most a tenth of the set is held out."""
    if n < 2:
        raise UserError(f"an autoencoder needs at least 2 images (one held out), got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, min(holdout, n // 10))
    return perm[k:], perm[:k]


class _State:
    """What a step reads and advances (the networks, their optimizers, the step count)."""

    def __init__(self, cfg: AutoencoderRunConfig, device: torch.device):
        tc = cfg.train
        torch.manual_seed(tc.seed)  # the initial weights
        self.model = Autoencoder(cfg.model).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, betas=BETAS)
        self.disc = self.disc_optimizer = None
        if tc.disc_start is not None:
            self.disc = NLayerDiscriminator(cfg.model.in_channels, tc.disc_channels, tc.disc_layers).to(device)
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=tc.lr, betas=BETAS)
        self.generator = torch.Generator(device)
        self.step = 0

    def save(self, run_dir: Path, cfg: AutoencoderRunConfig) -> None:
        """checkpoint.safetensors (everything --resume needs) and autoencoder.safetensors (the model)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise UserError(f"the weights at step {self.step} are not finite, so they were not saved; lower --lr")
        tensors, opt_meta = {}, {}
        parts = {"model": self.model, "disc": self.disc}
        for name, opt in (("optimizer", self.optimizer), ("disc_optimizer", self.disc_optimizer)):
            if opt is not None:
                flat, opt_meta[name] = ckpt._flatten_optimizer(opt.state_dict())
                tensors.update({f"{name}.{k.removeprefix('optimizer.')}": v for k, v in flat.items()})
        for name, module in parts.items():
            if module is not None:
                tensors.update({f"{name}.{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()})
        meta = {"format": ckpt.FORMAT, "step": str(self.step), "config": cfg.to_json(),
                "optimizer": json.dumps(opt_meta)}
        meta["sha256"] = ckpt.content_hash(tensors, meta)
        atomic_write(run_dir / ckpt.CHECKPOINT, lambda tmp: save_file(tensors, tmp, metadata=meta))
        save_autoencoder(run_dir, self.model, cfg, self.step)
        write_text_atomic(run_dir / ckpt.CONFIG, cfg.to_json() + "\n")

    def load(self, run_dir: Path) -> AutoencoderRunConfig:
        """Restore a saved run's state; returns its config."""
        tensors, meta = ckpt.read_checked(ckpt.find_file(run_dir, ckpt.CHECKPOINT))
        opt_meta = json.loads(meta["optimizer"])

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        self.model.load_state_dict(part("model"))
        if self.disc is not None and part("disc"):  # else a discriminator added on resume starts afresh
            self.disc.load_state_dict(part("disc"))
        for name, opt in (("optimizer", self.optimizer), ("disc_optimizer", self.disc_optimizer)):
            if opt is not None and name in opt_meta:
                flat = {f"optimizer.{k}": v for k, v in part(name).items()}
                opt.load_state_dict(ckpt._unflatten_optimizer(flat, opt_meta[name]))
        self.step = int(meta["step"])
        return AutoencoderRunConfig.from_dict(json.loads(meta["config"]))


def _saved_state(state: _State, cfg: AutoencoderRunConfig, run_dir: Path, resume: bool) -> None:
    if not resume:
        if (run_dir / ckpt.CHECKPOINT).exists() or (run_dir / AUTOENCODER).exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        return
    saved = state.load(run_dir)
    if saved.model != cfg.model:  # the network is the run's; only the training settings may change
        raise UserError(f"the model settings differ from the run in {run_dir}; resume with the run's own settings")


def _data(cfg: AutoencoderRunConfig, data: ImageDataset | None) -> ImageDataset:
    tc, m = cfg.train, cfg.model
    if data is None:
        data = load_dataset(tc.data, tc.data_dir, image_size=m.image_size, channels=m.in_channels,
                            skip_bad_images=tc.skip_bad_images)
    want = (m.in_channels, *m.image_size)
    if tuple(data.shape) != want:
        raise UserError(f"data set {data.name} has images of shape {'x'.join(map(str, data.shape))} but the "
                        f"autoencoder expects {'x'.join(map(str, want))}")
    return data


def _train(cfg: AutoencoderRunConfig, run_dir: Path, *, resume: bool, data: ImageDataset | None,
           progress: bool) -> Path:
    tc = cfg.train
    cfg.latent_scale = None  # measured when training ends; until then the weights have none
    check_autoencoder_config(cfg.model)
    if tc.disc_start is not None:
        check_discriminator(cfg.model.image_size, tc.disc_layers)
    if tc.perceptual_weight > 0 and min(cfg.model.image_size) < MIN_LPIPS_SIDE:
        raise UserError(f"the perceptual loss (LPIPS) needs images of at least {MIN_LPIPS_SIDE} px; use "
                        "--perceptual-weight 0")
    device = resolve_device(cfg.runtime.device)
    lpips = load_lpips(tc.perceptual_weights).to(device) if tc.perceptual_weight > 0 else None
    state = _State(cfg, device)
    _saved_state(state, cfg, run_dir, resume)
    data = _data(cfg, data)
    train_idx, held_idx = split_holdout(len(data), tc.holdout, tc.seed)
    images = compact(data.images[train_idx]).to(device)
    held = data.images[held_idx].to(device)
    write_text_atomic(run_dir / ckpt.CONFIG, cfg.to_json() + "\n")
    objective = AutoencoderObjective(tc.kl_weight, tc.perceptual_weight, tc.disc_weight, lpips)
    log = open(run_dir / "log.jsonl", "a")

    def save() -> None:
        state.save(run_dir, cfg)
        save_loss_plot(run_dir / "log.jsonl", run_dir / "loss.png")

    def evaluate() -> dict[str, float]:
        metrics = reconstruction_metrics(state.model, held)
        save_reconstructions(state.model, held[:tc.num_sample_images],
                             run_dir / "reconstructions" / f"step_{state.step:07d}.png")
        log.write(json.dumps({"step": state.step, **metrics}) + "\n")
        log.flush()
        return metrics

    signals = _Signals()
    try:
        with signals.installed():
            try:
                _loop(state, cfg, objective, images, log, save, evaluate, progress=progress,
                      stop=lambda: signals.pending)
            except KeyboardInterrupt:
                save()
                print(f"interrupted at step {state.step}; checkpoint saved to {run_dir} (continue with --resume)")
                return run_dir
        metrics = evaluate()
        g = torch.Generator(device).manual_seed(tc.seed)
        cfg.latent_scale = latent_scale(state.model, expand(images[:tc.scale_images]), g)
        save()
        write_text_atomic(run_dir / METRICS, json.dumps({"step": state.step, "holdout_images": len(held), **metrics,
                                                         "latent_scale": cfg.latent_scale}, indent=2) + "\n")
    finally:
        log.close()
    return run_dir


def _loop(state: _State, cfg: AutoencoderRunConfig, objective: AutoencoderObjective, images: torch.Tensor, log,
          save, evaluate, *, progress: bool, stop) -> None:
    """Steps from ``state.step`` to ``steps``: a batch, the autoencoder's step, the discriminator's (once it
    is on), then logs, checkpoints and evaluations at their intervals."""
    tc = cfg.train
    sums: dict[str, torch.Tensor] = {}
    count, t0, step0 = 0, time.perf_counter(), state.step
    bar = progress_bar(total=tc.steps, initial=state.step, desc="training autoencoder", disable=not progress,
                       unit="step", dynamic_ncols=True)
    state.model.train()
    try:
        while state.step < tc.steps:
            logs = train_step(state, objective, images, tc)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0) + v
            count += 1
            bar.update(1)
            step = state.step
            if step % tc.log_every == 0 or step == tc.steps:
                means = {k: float(v) / count for k, v in sums.items()}  # CPU-GPU sync, once per log interval
                sums, count = {}, 0
                rate = (step - step0) * tc.batch_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{means['loss']:.4g}", img_s=f"{rate:.0f}")
                log.write(json.dumps({"step": step, **means, "images_per_s": rate}) + "\n")
                log.flush()
            if step % tc.checkpoint_every == 0 and step < tc.steps:
                save()
            if tc.sample_every and step % tc.sample_every == 0 and step < tc.steps:
                evaluate()
            if stop():
                raise KeyboardInterrupt
    finally:
        bar.close()


def train_step(state: _State, objective: AutoencoderObjective, images: torch.Tensor,
               tc: AutoencoderTrainConfig) -> dict[str, torch.Tensor]:
    """One step of LDM's two-player training: Adam on L_AE, then (after ``disc_start``) Adam on the
    discriminator's hinge loss. Every draw comes from generators seeded by (seed, step): a resumed run
    replays each step exactly."""
    gen = state.generator
    gen.manual_seed(step_seed(tc.seed, state.step, 0, 0))  # the batch and the posterior samples
    torch.manual_seed(step_seed(tc.seed, state.step, 0, 1))  # anything drawing from the global generator
    idx = torch.randint(0, len(images), (tc.batch_size,), device=images.device, generator=gen)
    x = expand(images[idx])
    gan = state.disc is not None and state.step >= tc.disc_start
    loss, recon, logs = objective.autoencoder_loss(state.model, x, gen, state.disc if gan else None)
    if not torch.isfinite(loss):
        raise UserError(f"the loss is not finite at step {state.step}; lower --lr (or --disc-weight)")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    logs["loss"] = loss.detach()
    if gan:
        d_loss = hinge_d_loss(state.disc(x), state.disc(recon.detach()))
        state.disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        state.disc_optimizer.step()
        logs["loss_disc"] = d_loss.detach()
    state.step += 1
    return logs


@torch.no_grad()
def reconstruct(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """decode(mode of q(z | x)), in batches, in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    out = torch.cat([model.decode(model.encode(b).mode()) for b in x.split(EVAL_BATCH)])
    model.train(was)
    return out


def reconstruction_metrics(model: Autoencoder, x: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, the mean over images) and SSIM (Wang et al. 2004) of the reconstructions of ``x``, both on
    [0, 1] images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    target = (x.float() + 1) / 2
    pred = (reconstruct(model, x).clamp(-1, 1) + 1) / 2
    side = min(x.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)  # SSIM's Gaussian window must fit small images
    psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0, kernel_size=kernel)
    return {"psnr": float(psnr), "ssim": float(ssim)}


def save_reconstructions(model: Autoencoder, x: torch.Tensor, path: Path) -> None:
    """One row of originals above one row of their reconstructions."""
    save_grid(torch.cat([x, reconstruct(model, x)]).cpu(), path, nrow=len(x))


@torch.no_grad()
def latent_scale(model: Autoencoder, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """1 / std of posterior samples of images ``x`` over every latent element (LDM's ``scale_by_std``)."""
    was = model.training
    model.eval()
    z = torch.cat([model.encode(b).sample(generator) for b in x.split(EVAL_BATCH)])
    model.train(was)
    return 1.0 / float(z.float().flatten().std())

