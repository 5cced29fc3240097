"""Latent and text runs: the pieces of a run beyond its U-Net (Rombach et al. 2022, LDM).

A latent run diffuses the latents of an autoencoder (``ddpm train --autoencoder AE``): its samplers draw
(N, C, H, W) latents exactly as they draw images, and only the ends differ, where images are encoded
for training and samples decoded. The run keeps its own copy of the autoencoder in ``RUN/autoencoder``
(weights and config, with the latent scale), so ``ddpm sample --checkpoint RUN`` needs nothing else
and a later change to the original autoencoder cannot change what the run draws.

A text run's condition is a (N, L) tensor of token ids (``ddpm.models.text.tokenize``); prompts are
tokenized here, where a sampling call is put together, and the empty caption is the "no text" input.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ddpm.config import ModelConfig
from ddpm.errors import UserError
from ddpm.io import progress_bar, umask
from ddpm.models.autoencoder import FirstStage
from ddpm.models.autoencoder_io import load_autoencoder, save_autoencoder
from ddpm.models.text import tokenize

AUTOENCODER_DIR = "autoencoder"  # in a latent run's folder: the autoencoder it was trained with


def keep_autoencoder(source: str | Path, run_dir: Path) -> FirstStage:
    """The first stage of a new latent run, read from ``source`` (a ``ddpm train-autoencoder`` run or a
    diffusers AutoencoderKL folder) and copied into ``run_dir/autoencoder`` in the run's own format; the
    copy is written to a temporary folder and renamed into place, so the run folder never holds half of
    it. A run that already holds one keeps it (a resume)."""
    kept = run_dir / AUTOENCODER_DIR
    if kept.is_dir():
        return run_autoencoder(run_dir)
    first_stage, cfg = load_autoencoder(source)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".autoencoder-", suffix=".tmp", dir=run_dir))
    try:
        save_autoencoder(tmp, first_stage.autoencoder, cfg)
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes the folder private; a kept folder gets the usual mode
        tmp.rename(kept)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return first_stage


def run_autoencoder(run_dir: str | Path, device: str | torch.device = "cpu") -> FirstStage:
    """The autoencoder a latent run keeps in its folder."""
    folder = Path(run_dir) / AUTOENCODER_DIR
    if not folder.is_dir():
        raise UserError(f"{run_dir} is a latent run but holds no {AUTOENCODER_DIR}/ folder; it is incomplete")
    return load_autoencoder(folder, device)[0]


@torch.no_grad()
def encode_images(first_stage: FirstStage, images: torch.Tensor, *, batch_size: int = 256,
                  progress: bool = True) -> torch.Tensor:
    """The scaled latents of ``images`` (N, C, H, W) in [-1, 1], on the first stage's device: each the mean
    of its posterior, so a data set is encoded once and its latents cached for every step of training."""
    device = next(first_stage.autoencoder.parameters()).device
    was_training = first_stage.autoencoder.training
    first_stage.autoencoder.eval()
    out = []
    for i in progress_bar(range(0, len(images), batch_size), desc="encoding", unit="batch", disable=not progress):
        out.append(first_stage.encode(images[i:i + batch_size].to(device).float()))
    first_stage.autoencoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(first_stage: FirstStage, z: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents, decoded in batches (the decoder is the large half)."""
    was_training = first_stage.autoencoder.training
    first_stage.autoencoder.eval()
    out = [first_stage.decode(z[i:i + batch_size]).clamp(-1, 1) for i in range(0, len(z), batch_size)]
    first_stage.autoencoder.train(was_training)
    return torch.cat(out)


def image_shape(first_stage: FirstStage) -> tuple[int, int, int]:
    """(C, H, W) of the images the autoencoder was made for (and a latent run decodes to)."""
    return (first_stage.config.in_channels, *first_stage.config.image_size)


def latent_shape(first_stage: FirstStage) -> tuple[int, int, int]:
    """(C, H, W) of the latents a latent run diffuses."""
    return first_stage.latent_shape(first_stage.config.image_size)


def is_text(cfg: ModelConfig) -> bool:
    return cfg.text_encoder != "none"


def text_condition(cfg: ModelConfig, prompts, n: int, device) -> torch.Tensor | None:
    """The (n, L) token ids of a text model's condition: one prompt for all n, n prompts, or token ids as
    they are; None stays None (the network reads it as the empty caption)."""
    if prompts is None:
        return None
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or len(prompts) != n:
            raise UserError(f"token ids of shape {tuple(prompts.shape)} for a batch of {n}")
        return prompts.to(device)
    if isinstance(prompts, str):
        prompts = [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise UserError(f"{len(prompts)} prompts for a batch of {n}")
    return tokenize(prompts, cfg).to(device)
