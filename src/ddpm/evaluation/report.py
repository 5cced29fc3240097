"""Named metrics over (features, logits) of samples against a reference, and the report table.

    >>> stats = reference_stats(load_dataset("digits"), extractor)
    >>> feats, logits = extract(extractor, images)
    >>> compute_metrics(["fid", "precision_recall"], feats, logits, stats)
    {'fid': 3.1, 'precision': 0.8, 'recall': 0.7}
"""

from __future__ import annotations

import torch

from ddpm.errors import UserError
from ddpm.evaluation import metrics as M
from ddpm.evaluation.features import extract
from ddpm.evaluation.reference import ReferenceStats

# name -> the least number of samples it needs (precision/recall: more than k = 3 neighbours).
SAMPLE_METRICS = {"fid": 2, "kid": 2, "precision_recall": 4, "is": 2, "confidence": 1}
PR_K = 3


def parse_metrics(text: str, known: tuple[str, ...]) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def check_sample_count(names: list[str], n: int, num_reference: int | None = None) -> None:
    for name in names:
        need = SAMPLE_METRICS.get(name, 1)
        if n < need:
            raise UserError(f"too few samples: {name} needs at least {need}, got {n}")
        if num_reference is not None and num_reference < need:
            raise UserError(f"too few reference images: {name} needs at least {need}, got {num_reference}")


def compute_metrics(names: list[str], features: torch.Tensor, logits: torch.Tensor, ref: ReferenceStats, *,
                    num_classes: int | None = None, seed: int = 0) -> dict[str, float]:
    """The named metrics of samples (features, logits) against ``ref``, as a flat dict of floats."""
    check_sample_count(names, features.shape[0], ref.features.shape[0])
    out: dict[str, float] = {}
    for name in names:
        if name == "fid":
            out["fid"] = M.frechet_distance(ref.fid, features)
            out["fid_se"] = M.frechet_distance_se(ref.fid, features, seed=seed)
        elif name == "kid":
            out["kid_mean"], out["kid_std"] = M.kernel_inception_distance(ref.features, features, seed=seed)
        elif name == "precision_recall":
            out["precision"], out["recall"] = M.precision_recall(ref.features, features, k=PR_K)
        elif name == "is":
            out["is_mean"], out["is_std"] = M.inception_score(logits, seed=seed)
        elif name == "confidence":
            out["confident_share"] = M.confident_share(logits)
            out["class_entropy"] = M.class_entropy(logits, num_classes)
        else:
            raise UserError(f"unknown metric {name!r}; choose from {', '.join(SAMPLE_METRICS)}")
    return out


def score_images(names: list[str], images: torch.Tensor, extractor, ref: ReferenceStats, *, batch_size: int = 256,
                 device=None, num_classes: int | None = None, seed: int = 0) -> dict[str, float]:
    """``compute_metrics`` of ``images`` (N, C, H, W), clamped to [-1, 1] and embedded by ``extractor``."""
    feats, logits = extract(extractor, images.clamp(-1, 1), batch_size=batch_size, device=device, progress=False)
    return compute_metrics(names, feats, logits, ref, num_classes=num_classes, seed=seed)


def format_table(rows: dict[str, float | str], title: str = "") -> str:
    width = max((len(k) for k in rows), default=0)
    lines = [title] if title else []
    for k, v in rows.items():
        if isinstance(v, (list, dict)):
            continue  # per-step curves and the like belong in the JSON report, not the table
        lines.append(f"  {k:<{width}}  {v:.6g}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    return "\n".join(lines)
