"""Sample-quality metrics computed from features (and logits) of real and generated images.

FID, KID and the Inception Score are torchmetrics' own implementations, fed precomputed features through
``FeatureInput`` (torchmetrics accepts any ``nn.Module`` as its ``feature`` extractor); only what no
library provides is written here: k-NN precision/recall (Kynkaanniemi et al. 2019) and the
classifier-confidence metrics (share of confident samples, normalized class entropy).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

# The two kinds of input the metrics take: features (N, d) and classifier logits (N, K).


class FeatureInput(nn.Module):
    """Identity "feature extractor": lets torchmetrics' metrics take features computed elsewhere
    (once, cached), in float64 so the statistics do not lose digits."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


@contextmanager
def _quiet():
    # torchmetrics warns that KID/IS keep all features in memory: that is the point here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="torchmetrics")
        warnings.filterwarnings("ignore", message="std\\(\\): degrees of freedom")  # IS/KID with one split
        yield


@dataclass
class FidReference:
    """The real side of FID as torchmetrics accumulates it (sum, sum of outer products, count), so a
    reference set's statistics are computed once and cached instead of its features."""

    features_sum: torch.Tensor  # (d,) float64
    features_cov_sum: torch.Tensor  # (d, d) float64
    num_samples: int

    STATE = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")

    @classmethod
    def from_features(cls, features: torch.Tensor) -> "FidReference":
        metric = _fid_metric(features.shape[1])
        metric.update(features, real=True)
        return cls(metric.real_features_sum.clone(), metric.real_features_cov_sum.clone(),
                   int(metric.real_features_num_samples))

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.STATE, (self.features_sum, self.features_cov_sum, torch.tensor(self.num_samples))))

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "FidReference":
        return cls(t["real_features_sum"].double(), t["real_features_cov_sum"].double(),
                   int(t["real_features_num_samples"]))


def _fid_metric(num_features: int):
    from torchmetrics.image.fid import FrechetInceptionDistance

    with _quiet():
        return FrechetInceptionDistance(feature=FeatureInput(num_features), reset_real_features=False)


def frechet_distance(real: torch.Tensor | FidReference, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, Eq. 6):

        ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2}).

    With Inception pool features this is FID. ``real`` may be features (N, d) or cached statistics.
    """
    if fake.shape[0] < 2:
        raise ValueError("the Frechet distance needs at least 2 samples on each side")
    if isinstance(real, FidReference):
        metric = _fid_metric(real.features_sum.shape[0])
        metric.real_features_sum.copy_(real.features_sum)
        metric.real_features_cov_sum.copy_(real.features_cov_sum)
        metric.real_features_num_samples.fill_(real.num_samples)
    else:
        metric = _fid_metric(real.shape[1])
        metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def frechet_distance_se(real: torch.Tensor | FidReference, fake: torch.Tensor, *, resamples: int | None = None,
                        seed: int = 0) -> float:
    """Bootstrap standard error of ``frechet_distance(real, fake)`` over the draw of ``fake``: the spread
    of the distance over ``resamples`` resamplings of the fake features with replacement.

    ``resamples`` by default: 50 (the estimate within ~10%) for up to 512 features, where a distance is
    cheap; 10 (~22%) above, as for Inception's 2048, where each needs the square root of a 2048 x 2048
    matrix.

    It measures how much the score of N samples moves with the samples drawn, which dominates small-N
    comparisons: with a classifier's features the mean term follows the class mix of the samples
    (benchmarks/README.md shows how far six seeds' scores of one digits model spread)."""
    if resamples is None:
        resamples = 50 if fake.shape[1] <= 512 else 10
    g = torch.Generator().manual_seed(seed)
    n = fake.shape[0]
    values = [frechet_distance(real, fake[torch.randint(0, n, (n,), generator=g)]) for _ in range(resamples)]
    return float(torch.tensor(values, dtype=torch.float64).std())


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over random subsets of the unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018, Eq. 4). Subsets are capped at the smaller set."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    with _quiet():
        metric = KernelInceptionDistance(feature=FeatureInput(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics draws the subsets from the global generator
        with _quiet():
            mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over ``splits`` of exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016, Eq. in §4).

    With Inception's logits this is the IS of the papers; with a classifier's, a domain IS."""
    from torchmetrics.image.inception import InceptionScore

    splits = min(splits, logits.shape[0])
    if splits < 1 or logits.shape[0] < 2:
        raise ValueError("the Inception Score needs at least 2 samples")
    with _quiet():
        metric = InceptionScore(feature=FeatureInput(logits.shape[1]), splits=splits)
    metric.update(logits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics shuffles before splitting with the global generator
        with _quiet():
            mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_radii(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row of x."""
    radii = []
    for chunk in x.split(batch):
        d = torch.cdist(chunk, x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # k + 1: the point itself sits at distance 0
    return torch.cat(radii)


def _share_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int) -> float:
    """Share of queries inside at least one ball B(centre_j, radius_j)."""
    inside = 0
    for chunk in queries.split(batch):
        inside += (torch.cdist(chunk, centres) <= radii[None, :]).any(dim=1).sum().item()
    return inside / queries.shape[0]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, batch: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eqs. 1-2).

    The manifold of a set is the union of balls around its points with radius the distance to the
    k-th nearest neighbour in the same set. Precision: share of generated samples inside the real
    manifold (quality). Recall: share of real samples inside the generated manifold (coverage).
    """
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side")
    real, fake = real.double(), fake.double()  # distances of near-duplicates are compared with <=
    precision = _share_inside(fake, real, _kth_neighbour_radii(real, k, batch), batch)
    recall = _share_inside(real, fake, _kth_neighbour_radii(fake, k, batch), batch)
    return precision, recall


def confident_share(logits: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of samples whose top class probability exceeds ``threshold`` ("% confident" in the benchmark tables)."""
    return (logits.softmax(dim=1).max(dim=1).values > threshold).double().mean().item()


def class_entropy(logits: torch.Tensor, num_classes: int | None = None) -> float:
    """Entropy of the histogram of predicted classes divided by log(num_classes): 1 when every class
    is predicted equally often, 0 when all samples get one class."""
    k = num_classes or logits.shape[1]
    counts = torch.bincount(logits.argmax(dim=1), minlength=k).double()
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum() / math.log(k))
