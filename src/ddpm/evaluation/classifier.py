"""Training the small image classifier (``ddpm.models.classifier.Classifier``) whose penultimate layer
gives a domain feature space for FID.

The Inception-v3 of FID (Heusel et al. 2017) sees 299x299 ImageNet photos; on 8x8 digits or 28x28 MNIST
its features say little and its weights may not be at hand offline. A classifier trained on the data
set itself gives features that separate what matters there (the digit), the "domain FID" used for
small images (e.g. the LeNet features of Salimans et al. 2016's MNIST experiments).

``ddpm.models.classifier.save_classifier`` writes it as one ``classifier.safetensors`` (weights; config
and held-out accuracy in its metadata) plus a readable ``classifier.json`` beside it. No pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ddpm.config import doc
from ddpm.data.datasets import ImageDataset
from ddpm.errors import UserError
from ddpm.models.classifier import Classifier, ClassifierConfig
from ddpm.training.fit import fit, split_indices


@dataclass
class ClassifierTrainConfig:
    """How a classifier is trained; extra options (e.g. noisy inputs) are added as fields here."""

    epochs: int = doc(15, "passes over the training share", positive=True)
    batch_size: int = doc(64, "images per step", positive=True)
    lr: float = doc(2e-3, "peak learning rate (AdamW, one-cycle)")
    weight_decay: float = doc(1e-4, "AdamW weight decay")
    held_out: float = doc(0.2, "share of the data held out for the accuracy")
    seed: int = doc(0, "seed of the split, the initialisation and the batches")
    device: str = doc("cpu", "the device to train on", cli=False)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)


def config_for(data: ImageDataset, **overrides) -> ClassifierConfig:
    if data.labels is None or not data.num_classes:
        raise UserError(f"data set {data.name} has no labels; a classifier needs a labelled data set")
    c, h, w = data.shape
    if not overrides.get("widths"):
        overrides["widths"] = (32, 64) if min(h, w) <= 8 else (32, 64, 128)
    return ClassifierConfig(in_channels=c, image_size=(h, w), num_classes=data.num_classes, **overrides)


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
