"""Reference statistics and default classifiers, computed once and cached on disk.

The cache lives in ``$DDPM_CACHE`` (default ``~/.cache/ddpm``):

    reference/<data>-<data hash>-<extractor key>.safetensors   FID sums, a feature subset, logits
    classifiers/<data>-<data hash>-<settings hash>/            the classifier trained on <data>

Keys hold a hash of the data set's pixels and of the extractor's weights, so a changed data folder or
a retrained classifier never reuses stale statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ddpm.data.datasets import ImageDataset
from ddpm.evaluation.classifier import ClassifierTrainConfig, train_classifier
from ddpm.evaluation.features import ClassifierExtractor, FeatureExtractor, extract
from ddpm.evaluation.metrics import FidReference
from ddpm.io import atomic_write, say
from ddpm.models.classifier import Classifier, load_classifier, save_classifier

CACHE_ENV = "DDPM_CACHE"
REFERENCE_FORMAT = "ddpm-reference-1"
MAX_REFERENCE_FEATURES = 10_000  # kept for KID and precision/recall; FID uses every image


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ddpm").expanduser()


def data_key(data: ImageDataset) -> str:
    """``<name>-<hash of the pixels>``: the cache key of a data set."""
    h = hashlib.sha256(str(tuple(data.images.shape)).encode())
    h.update(data.images.detach().cpu().contiguous().numpy().data)
    return f"{data.name}-{h.hexdigest()[:12]}"


@dataclass
class ReferenceStats:
    fid: FidReference  # statistics of every reference image
    features: torch.Tensor  # (<= MAX_REFERENCE_FEATURES, d): a fixed random subset, for KID and precision/recall
    logits: torch.Tensor  # logits of the same subset
    num_images: int


def reference_stats(data: ImageDataset, extractor: FeatureExtractor, *, device=None, batch_size: int = 256,
                    progress: bool = True, use_cache: bool = True) -> ReferenceStats:
    """Features of the reference data set through ``extractor``, from the cache or computed and cached."""
    path = cache_dir() / "reference" / f"{data_key(data)}-{extractor.key}.safetensors"
    if use_cache and path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") == REFERENCE_FORMAT:
                t = load_file(str(path))
                return ReferenceStats(FidReference.from_tensors(t), t["features"], t["logits"], int(meta["num_images"]))
        except (SafetensorError, OSError, KeyError, ValueError):
            pass  # an unreadable cache entry is recomputed and overwritten
    features, logits = extract(extractor, data.images, batch_size=batch_size, device=device, progress=progress,
                               desc=f"reference features ({data.name})")
    fid = FidReference.from_features(features)
    if features.shape[0] > MAX_REFERENCE_FEATURES:
        keep = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_REFERENCE_FEATURES]
        features, logits = features[keep], logits[keep]
    stats = ReferenceStats(fid, features.contiguous(), logits.contiguous(), len(data))
    if use_cache:
        tensors = {**fid.tensors(), "features": stats.features, "logits": stats.logits}
        meta = {"format": REFERENCE_FORMAT, "num_images": str(len(data)), "data": data.name,
                "extractor": json.dumps(extractor.info)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return stats


def cached_classifier(data: ImageDataset, *, cfg: ClassifierTrainConfig | None = None, progress: bool = True,
                      device="cpu") -> tuple[Classifier, dict, Path]:
    """The classifier for ``data`` from the cache, trained (with a progress bar) and cached on first use.

    Each training setting (epochs, seed, ...; not the device) has its own entry, so a quick classifier
    trained for a smoke test never stands in for the default one."""
    cfg = cfg or ClassifierTrainConfig()
    settings = {k: v for k, v in asdict(cfg).items() if k != "device"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    folder = cache_dir() / "classifiers" / f"{data_key(data)}-{digest}"
    if (folder / "classifier.safetensors").is_file():
        model, info = load_classifier(folder, device)
        return model, info, folder
    if progress:
        say(f"training a {data.name} classifier for the features (once; cached in {folder})")
    model, info = train_classifier(data, cfg, progress=progress)
    save_classifier(model, folder, info)
    return model.to(device), info, folder


def classifier_reference(data: ImageDataset, *, cfg: ClassifierTrainConfig | None = None, device="cpu",
                         batch_size: int = 256, progress: bool = True) -> tuple[ClassifierExtractor, ReferenceStats]:
    """The data set's cached classifier as a feature extractor, and the reference statistics through it.

    This is the default metric of ``ddpm evaluate`` and of every benchmark; the extractor's ``info`` holds
    the classifier's training record (``held_out_accuracy``, ...) and its cache ``path``."""
    model, info, folder = cached_classifier(data, cfg=cfg, progress=progress, device=device)
    extractor = ClassifierExtractor(model, info, str(folder)).to(device)
    return extractor, reference_stats(data, extractor, device=device, batch_size=batch_size, progress=progress)


def real_floor_images(data: ImageDataset, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(images, "k of N"): ``n`` real images drawn without replacement by ``seed``, whose distance to the
    whole set is the floor a metric reaches at that sample size. Where ``n`` reaches the set's size they are
    the whole reference (distance ~0, no floor); the label says which it is."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.images[idx], f"{len(idx)} of {len(data)}"
