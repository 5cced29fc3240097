"""A small CNN image classifier whose penultimate layer gives a domain feature space for FID.

The Inception-v3 of FID (Heusel et al. 2017) sees 299x299 ImageNet photos; on 8x8 digits or 28x28 MNIST
its features say little and its weights may not be at hand offline. A classifier trained on the data
set itself gives features that separate what matters there (the digit), the "domain FID" used for
small images (e.g. the LeNet features of Salimans et al. 2016's MNIST experiments).

Saved as one ``classifier.safetensors`` (weights; config and held-out accuracy in its metadata) plus a
readable ``classifier.json`` beside it. No pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ddpm.config import _build
from ddpm.data.datasets import ImageDataset
from ddpm.errors import UserError
from ddpm.training.checkpoint import atomic_write, read_safetensors, write_text_atomic

WEIGHTS = "classifier.safetensors"
INFO = "classifier.json"
FORMAT = "ddpm-classifier-1"


@dataclass
class ClassifierConfig:
    """Architecture: ``len(widths)`` stages of two 3x3 convs, each stage but the last halving the size
    while it is at least ``min_size`` * 2; global average pooling; a ``feature_dim`` layer (the
    features); a linear head."""

    in_channels: int = 1
    image_size: tuple[int, int] = (8, 8)
    num_classes: int = 10
    widths: tuple[int, ...] = ()  # () picks by size: (32, 64) up to 8 px (digits), (32, 64, 128) above
    feature_dim: int = 128
    min_size: int = 4
    dropout: float = 0.1


@dataclass
class ClassifierTrainConfig:
    """How a classifier is trained; extra options (e.g. noisy inputs) are added as fields here."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    held_out: float = 0.2  # share of the data kept for the held-out accuracy
    seed: int = 0
    device: str = "cpu"
    model: ClassifierConfig = field(default_factory=ClassifierConfig)


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        if not cfg.widths:
            raise ValueError("ClassifierConfig.widths is empty; build configs with config_for(data)")
        self.config = cfg
        layers: list[nn.Module] = []
        c, size = cfg.in_channels, min(cfg.image_size)
        for i, w in enumerate(cfg.widths):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU()]
            c = w
            if i < len(cfg.widths) - 1 and size >= 2 * cfg.min_size:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(c, cfg.feature_dim), nn.SiLU())
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    @property
    def num_features(self) -> int:
        return self.config.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim) of images (N, C, H, W) in [-1, 1]."""
        return self.embed(self.body(x).mean(dim=(2, 3)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def config_for(data: ImageDataset, **overrides) -> ClassifierConfig:
    if data.labels is None or not data.num_classes:
        raise UserError(f"data set {data.name} has no labels; a classifier needs a labelled data set")
    c, h, w = data.shape
    if not overrides.get("widths"):
        overrides["widths"] = (32, 64) if min(h, w) <= 8 else (32, 64, 128)
    return ClassifierConfig(in_channels=c, image_size=(h, w), num_classes=data.num_classes, **overrides)


def split_indices(n: int, held_out: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (train, held-out) split of range(n) drawn from ``generator``."""
    if not 0.0 < held_out < 1.0:
        raise UserError(f"held-out share must be in (0, 1), got {held_out}")
    perm = torch.randperm(n, generator=generator)
    k = max(1, int(round(n * held_out)))
    if k >= n:
        raise UserError(f"a data set of {n} images is too small to hold out {held_out:.0%} of it")
    return perm[k:], perm[:k]


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for xb, yb in zip(images.split(batch_size), labels.split(batch_size)):
        correct += (model(xb.to(device)).argmax(1).cpu() == yb).sum().item()
    model.train(was_training)
    return correct / len(labels)


def fit(model: nn.Module, batch_loss: Callable[[torch.Tensor], torch.Tensor], num_train: int, *, epochs: int,
        batch_size: int, lr: float, weight_decay: float, warmup: float, generator: torch.Generator,
        desc: str, progress: bool = True) -> None:
    """Train ``model`` for ``epochs`` passes over ``num_train`` examples in shuffled batches: AdamW with a
    one-cycle learning rate (``warmup`` = share of the steps rising to ``lr``). ``batch_loss(idx)``
    returns the mean loss of the examples at the CPU indices ``idx``; shuffling draws from ``generator``
    before each epoch, then ``batch_loss`` may draw from it too. The loss shown syncs once per epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(num_train / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=warmup)
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress)
    for _ in bar:
        perm = torch.randperm(num_train, generator=generator)
        loss_sum = torch.zeros((), device=next(model.parameters()).device)
        for idx in perm.split(batch_size):
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        bar.set_postfix(loss=f"{loss_sum.item() / steps_per_epoch:.4f}")


def train_classifier(data: ImageDataset, cfg: ClassifierTrainConfig | None = None, *,
                     generator: torch.Generator | None = None, progress: bool = True) -> tuple[Classifier, dict]:
    """Train a classifier on ``data`` with a held-out split; returns (model in eval mode, info).

    ``info`` holds the held-out accuracy, the split sizes and the training settings. Plain training
    (AdamW, cosine learning rate, no augmentation) so the result depends only on the data and the seed.
    """
    cfg = cfg or ClassifierTrainConfig()
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    mcfg = config_for(data, **{k: v for k, v in asdict(cfg.model).items()
                               if k not in ("in_channels", "image_size", "num_classes")})
    device = torch.device(cfg.device)
    train_idx, held_idx = split_indices(len(data), cfg.held_out, gen)
    x_train, y_train = data.images[train_idx].to(device), data.labels[train_idx].to(device)
    x_held, y_held = data.images[held_idx], data.labels[held_idx]

    with torch.random.fork_rng(devices=[]):
        # Initialisation and dropout draw from the global generator; seed it from ours, then restore it.
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        model = Classifier(mcfg).to(device)
        fit(model, lambda idx: F.cross_entropy(model(x_train[idx.to(device)]), y_train[idx.to(device)]),
            len(train_idx), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
            weight_decay=cfg.weight_decay, warmup=0.15, generator=gen, desc="training classifier",
            progress=progress)
    model.eval()
    info = {
        "held_out_accuracy": accuracy(model, x_held, y_held),
        "train_accuracy": accuracy(model, x_train.cpu(), y_train.cpu()),
        "num_train": len(train_idx),
        "num_held_out": len(held_idx),
        "data": data.name,
        "train": {k: v for k, v in asdict(cfg).items() if k != "model"},
    }
    return model, info


def save_classifier(model: Classifier, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write PATH/classifier.safetensors (+ PATH/classifier.json); returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = json.dumps(asdict(model.config))
    meta = {"format": FORMAT, "config": config, "info": json.dumps(info or {})}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=meta))
    write_text_atomic(folder / INFO, json.dumps({"config": asdict(model.config), **(info or {})}, indent=2) + "\n")
    return folder


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """(model in eval mode, info) from a folder written by ``save_classifier`` or its .safetensors file."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise UserError(f"classifier not found: {path} (train one with: ddpm train-classifier --data NAME --out PATH)")
    tensors, meta = read_safetensors(p, "classifier")
    if meta.get("format") != FORMAT:
        raise UserError(f"{p} is not a ddpm classifier (format {meta.get('format')!r})")
    cfg = _build(ClassifierConfig, json.loads(meta["config"]), "classifier config")
    model = Classifier(cfg)
    model.load_state_dict(tensors)
    return model.to(device).eval(), json.loads(meta.get("info", "{}"))
