"""Feature extractors for the metrics: the standard FID Inception-v3 and a data set's own classifier.

An extractor maps images (N, C, H, W) in [-1, 1] to ``(features, logits)``: features for FID, KID and
precision/recall; logits for the Inception Score and the classifier-confidence metrics.

``inception`` is the network of Heusel et al. (2017) with the TensorFlow weights ("pt_inception-2015-12-05"),
as torch-fidelity (and through it torchmetrics) ports it, including TF1's bilinear resize to 299x299,
so numbers compare with published ones. Its weights come from, in order: an explicit path
(``--inception-weights`` / env ``DDPM_INCEPTION_WEIGHTS``), the torch hub cache, the usual download.
Where none works, a one-line ``UserError`` says how to provide them; there is no silent fallback.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ddpm.errors import UserError
from ddpm.io import progress_bar
from ddpm.models.classifier import Classifier, load_classifier

EXTRACTORS = ("inception", "classifier")
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_ENV = "DDPM_INCEPTION_WEIGHTS"


class FeatureExtractor:
    """``extractor(x) -> (features (N, num_features), logits (N, num_classes))`` for x in [-1, 1]."""

    name: str
    key: str  # identifies the network and its weights: reference statistics are cached under it
    num_features: int
    num_classes: int
    info: dict[str, Any]

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise UserError if images of (C, H, W) ``shape`` cannot go through this extractor."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def to(self, device) -> "FeatureExtractor":
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self._network().parameters()).device

    def _network(self) -> torch.nn.Module:
        raise NotImplementedError


def state_hash(module: torch.nn.Module) -> str:
    """A short content hash of a module's weights, so cached statistics follow the weights, not a path."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ClassifierExtractor(FeatureExtractor):
    """Penultimate-layer features and logits of a ``Classifier`` (domain FID for small images)."""

    name = "classifier"

    def __init__(self, model: Classifier, info: dict[str, Any] | None = None, path: str | None = None):
        self.model = model.eval()
        self.num_features = model.config.feature_dim
        self.num_classes = model.config.num_classes
        self.key = f"classifier-{state_hash(model)}"
        self.info = {"extractor": "classifier", "path": path, **(info or {})}

    def check(self, shape):
        c = self.model.config
        want = (c.in_channels, *c.image_size)
        if tuple(shape) != want:
            raise UserError(f"the classifier takes {want[0]}x{want[1]}x{want[2]} images, got "
                            f"{shape[0]}x{shape[1]}x{shape[2]}; use a classifier trained on the reference data")

    @torch.no_grad()
    def __call__(self, x):
        f = self.model.features(x)
        return f, self.model.logits(f)

    def to(self, device):
        self.model.to(device)
        return self

    def _network(self):
        return self.model


def _inception_weights_path(explicit: str | None) -> Path | None:
    """The local weights file to use, or None to try the usual download."""
    explicit = explicit or os.environ.get(INCEPTION_ENV)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise UserError(f"Inception weights file not found: {p}")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3: 2048-d pool features and the 1008 unbiased logits (torch-fidelity's port)."""

    name = "inception"
    key = "inception-2015-12-05"
    num_features = 2048
    num_classes = 1008

    def __init__(self, weights: str | Path | None = None):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise UserError("the inception features need torch-fidelity: pip install torch-fidelity") from None
        path = _inception_weights_path(str(weights) if weights else None)
        if path is None:
            try:
                torch.hub.load_state_dict_from_url(INCEPTION_URL, progress=True)
            except Exception as e:  # no network, proxy, HTTP error: all mean "provide the file yourself"
                target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
                raise UserError(f"FID Inception weights unavailable ({type(e).__name__}); download {INCEPTION_URL} "
                                f"to {target}, or pass --inception-weights PATH (env {INCEPTION_ENV})") from None
            path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        try:
            # weights_only: a weights file must hold tensors only, never code to run.
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"cannot read Inception weights {path}: {str(e).splitlines()[0]}") from None
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path))
        self.info = {"extractor": "inception", "weights": str(path)}

    def check(self, shape):
        if shape[0] not in (1, 3):
            raise UserError(f"the Inception features take 1- or 3-channel images, got {shape[0]} channels")

    @torch.no_grad()
    def __call__(self, x):
        # The network takes uint8 RGB, as the images would be stored: quantize like a saved PNG.
        u8 = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        features, logits = self.net(u8)
        return features, logits

    def to(self, device):
        self.net.to(device)
        return self

    def _network(self):
        return self.net


def make_extractor(name: str, *, classifier: str | Path | Classifier | None = None,
                   inception_weights: str | Path | None = None, device="cpu") -> FeatureExtractor:
    """``inception`` or ``classifier`` (``classifier`` is a path or a model; see ``reference.cached_classifier``)."""
    if name == "inception":
        return InceptionExtractor(inception_weights).to(device)
    if name == "classifier":
        if classifier is None:
            raise UserError("the classifier features need a classifier (--classifier PATH)")
        if isinstance(classifier, Classifier):
            return ClassifierExtractor(classifier).to(device)
        model, info = load_classifier(classifier)
        return ClassifierExtractor(model, info, str(classifier)).to(device)
    raise UserError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")


def extract(extractor: FeatureExtractor, images: torch.Tensor, *, batch_size: int = 256, device=None,
            progress: bool = True, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of all ``images`` (N, C, H, W) in [-1, 1], in batches, on the CPU in float32.

    Batches go to ``device`` (default: where the extractor's weights are)."""
    extractor.check(tuple(images.shape[1:]))
    device = device if device is not None else extractor.device
    feats, logits = [], []
    for xb in progress_bar(images.split(batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        f, lg = extractor(xb.to(device))
        feats.append(f.float().cpu())
        logits.append(lg.float().cpu())
    return torch.cat(feats), torch.cat(logits)
