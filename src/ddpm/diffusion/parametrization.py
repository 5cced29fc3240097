"""The one place that converts between eps, x0 and v predictions.

With a_t = sqrt(alpha-bar_t) and s_t = sqrt(1 - alpha-bar_t), x_t = a_t x0 + s_t eps, and
v = a_t eps - s_t x0 (Salimans & Ho 2022, §4). Each function takes the coefficients a, s already
broadcast to the batch (tensors or Python floats) so samplers on any timestep grid can use them.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v")


def to_eps_x0(output: torch.Tensor, x_t: torch.Tensor, a, s, prediction: str):
    """(eps, x0) implied by a network ``output`` of the given ``prediction`` type at x_t."""
    if prediction == "eps":
        return output, (x_t - s * output) / a
    if prediction == "x0":
        return (x_t - a * output) / s, output
    if prediction == "v":
        return s * x_t + a * output, a * x_t - s * output
    raise ValueError(f"unknown prediction {prediction!r}")


def eps_from_x0(x0: torch.Tensor, x_t: torch.Tensor, a, s) -> torch.Tensor:
    """The eps consistent with x_t and a (possibly clipped) x0."""
    return (x_t - a * x0) / s


def training_target(x0: torch.Tensor, noise: torch.Tensor, a, s, prediction: str) -> torch.Tensor:
    """What the network regresses onto for L_simple (Ho et al. Eq. 14 for eps)."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * noise - s * x0
    raise ValueError(f"unknown prediction {prediction!r}")
