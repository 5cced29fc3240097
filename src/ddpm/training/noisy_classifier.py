"""Training the noise-aware classifier of classifier guidance (Dhariwal & Nichol 2021, §4).

The classifier learns p(y | x_t, t) on x_t = q_sample(x0, t, eps) with t uniform over the 0-based
training steps of one schedule (Ho et al. Eq. 4), so its gradient grad_x log p(y | x_t, t) is defined
wherever a sampler evaluates it. A guided model must use the same schedule and T: both are saved with
the weights and checked when the classifier is loaded for guidance.

``ddpm.models.classifier.save_noisy_classifier`` writes it as PATH/classifier.safetensors (weights;
architecture, diffusion settings and held-out accuracies in its metadata) plus a readable
PATH/classifier.json, and ``load_noisy_classifier`` reads it back. No pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ddpm.config import ModelConfig, ScheduleName, doc, update
from ddpm.data.datasets import ImageDataset
from ddpm.diffusion.process import q_sample
from ddpm.diffusion.schedule import make_schedule
from ddpm.errors import UserError
from ddpm.models.classifier import NoisyClassifier
from ddpm.presets import make_config, preset_for_data
from ddpm.training.fit import fit, split_indices


@dataclass
class NoisyClassifierTrainConfig:
    """How the noisy classifier is trained (the shared fields mean what ``ClassifierTrainConfig``'s do)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    held_out: float = 0.2  # share of the data kept for the held-out accuracies
    seed: int = 0
    device: str = "cpu"
    schedule: ScheduleName = doc("linear", "--noisy: the guided model's schedule")
    timesteps: int = doc(1000, "--noisy: the guided model's T", positive=True)
    base_channels: int | None = doc(None, "--noisy: width of the U-Net trunk (default: the data set's preset)",
                                    positive=True)


def classifier_config_for(data: ImageDataset, base_channels: int | None = None) -> ModelConfig:
    """The data set's preset U-Net architecture (``ddpm.presets``), fitted to its images and classes."""
    if data.labels is None or not data.num_classes:
        raise UserError(f"data set {data.name} has no labels; a classifier needs a labelled data set")
    c, h, w = data.shape
    model = make_config(preset_for_data(data.name)).model
    values = {"image_size": (h, w), "in_channels": c, "out_channels": c, "num_classes": data.num_classes}
    if base_channels is not None:
        values["base_channels"] = base_channels
    return update(model, values, "classifier model")


@torch.no_grad()
def noisy_accuracy(model: NoisyClassifier, schedule, images: torch.Tensor, labels: torch.Tensor,
                   t: torch.Tensor, generator: torch.Generator, batch_size: int = 512) -> torch.Tensor:
    """Per-example correctness (N,) of the classifier on q_sample(images, t) with noise from ``generator``."""
    device = next(model.parameters()).device
    hits = []
    for xb, yb, tb in zip(images.split(batch_size), labels.split(batch_size), t.split(batch_size)):
        noise = torch.randn(xb.shape, generator=generator)
        x_t = q_sample(schedule, xb, tb, noise)
        hits.append((model(x_t.to(device), tb.to(device)).argmax(1).cpu() == yb))
    return torch.cat(hits)


def train_noisy_classifier(data: ImageDataset, cfg: NoisyClassifierTrainConfig | None = None, *,
                           progress: bool = True) -> tuple[NoisyClassifier, dict[str, Any]]:
    """Train p(y | x_t, t) on ``data`` (cross-entropy on x_t at uniform t); returns (model in eval mode, info).

    ``info`` holds held-out accuracies at uniform t, per quarter of t and at t = 0, the split sizes and
    the training settings. Everything random draws from one generator seeded with ``cfg.seed``.
    """
    cfg = cfg or NoisyClassifierTrainConfig()
    mcfg = classifier_config_for(data, cfg.base_channels)
    device = torch.device(cfg.device)
    schedule = make_schedule(cfg.schedule, cfg.timesteps)
    sched_dev = schedule.to(device)
    T = schedule.num_timesteps
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, held_idx = split_indices(len(data), cfg.held_out, gen)
    x_train, y_train = data.images[train_idx].to(device), data.labels[train_idx].to(device)

    with torch.random.fork_rng(devices=[]):
        # Initialisation and dropout draw from the global generator; seed it from ours, then restore it.
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        model = NoisyClassifier(mcfg).to(device)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            t = torch.randint(0, T, (len(idx),), generator=gen)
            noise = torch.randn((len(idx), *data.shape), generator=gen)
            idx, t = idx.to(device), t.to(device)
            return F.cross_entropy(model(q_sample(sched_dev, x_train[idx], t, noise.to(device)), t), y_train[idx])

        fit(model, batch_loss, len(train_idx), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
            weight_decay=cfg.weight_decay, warmup=0.1, generator=gen, desc="training noisy classifier",
            progress=progress)
    model.eval()

    # Held-out accuracy at uniform t (one draw per image) and at the quarters of t, from a fixed seed.
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    x_held, y_held = data.images[held_idx], data.labels[held_idx]
    t_held = torch.randint(0, T, (len(held_idx),), generator=eval_gen)
    hits = noisy_accuracy(model, schedule, x_held, y_held, t_held, eval_gen)
    quarter = (t_held * 4) // T
    clean = noisy_accuracy(model, schedule, x_held, y_held, torch.zeros_like(t_held), eval_gen)
    info = {
        "held_out_accuracy": hits.float().mean().item(),
        "held_out_accuracy_by_quarter": [hits[quarter == q].float().mean().item() if (quarter == q).any() else None
                                         for q in range(4)],
        "held_out_accuracy_t0": clean.float().mean().item(),
        "num_train": len(train_idx),
        "num_held_out": len(held_idx),
        "data": data.name,
        "train": asdict(cfg),
    }
    return model, info
