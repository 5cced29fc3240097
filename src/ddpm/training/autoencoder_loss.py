"""The autoencoder's losses: LDM's ``LPIPSWithDiscriminator`` (Rombach et al. 2022, App. G; Esser et al. 2021,
VQGAN Eq. 4-7) without its learned output variance.

    L_AE = sum|x - x^| + w_p * LPIPS(x, x^) * (pixels) + w_kl * KL(q(z|x) || N(0, I)) + lambda * w_d * L_G

per example, averaged over the batch, where L_G = -mean D(x^) is the generator's hinge loss and the
adaptive weight lambda = ||grad L_rec|| / (||grad L_G|| + 1e-4), both gradients taken at the decoder's last
layer (VQGAN Eq. 7), balances the two. The discriminator D learns with the hinge loss
L_D = 1/2 (mean relu(1 - D(x)) + mean relu(1 + D(x^))). Each is a small function of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.models.autoencoder import DiagonalGaussian

ADAPTIVE_WEIGHT_MAX = 1e4  # LDM's clamp of lambda


def reconstruction_terms(x: torch.Tensor, recon: torch.Tensor, posterior: DiagonalGaussian,
                         lpips: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Per-example terms, each (N,): ``l1`` summed over pixels, ``lpips`` (0 without a network), ``kl``."""
    terms = {"l1": (x - recon).abs().flatten(1).sum(1), "kl": posterior.kl()}
    terms["lpips"] = lpips(x, recon) if lpips is not None else torch.zeros_like(terms["l1"])
    return terms


def reconstruction_loss(terms: dict[str, torch.Tensor], pixels: int, perceptual_weight: float) -> torch.Tensor:
    """LDM's rec_loss = |x - x^| + w_p * LPIPS at every pixel, summed over them, averaged over the batch."""
    return (terms["l1"] + perceptual_weight * pixels * terms["lpips"]).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017; taming's hinge_d_loss)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge GAN: make D(x^) large."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """lambda = ||d rec / d w|| / (||d L_G / d w|| + 1e-4) at the decoder's last weight w, clamped to
    [0, 1e4] and detached (VQGAN Eq. 7; LDM's calculate_adaptive_weight). The graphs are kept for backward."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


@dataclass
class AutoencoderObjective:
    """The weights of L_AE and the networks it needs besides the autoencoder."""

    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    disc_weight: float = 0.5
    lpips: nn.Module | None = None

    def autoencoder_loss(self, autoencoder, x: torch.Tensor, generator: torch.Generator,
                         discriminator: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(L_AE, the reconstruction, log values) for images ``x``; the adversarial term only with a
        ``discriminator`` (after the start step)."""
        recon, posterior = autoencoder(x, generator)
        terms = reconstruction_terms(x, recon, posterior, self.lpips if self.perceptual_weight > 0 else None)
        rec = reconstruction_loss(terms, x[0].numel(), self.perceptual_weight)
        loss = rec + self.kl_weight * terms["kl"].mean()
        logs = {"l1": terms["l1"].mean().detach() / x[0].numel(), "kl": terms["kl"].mean().detach()}
        if self.perceptual_weight > 0:
            logs["lpips"] = terms["lpips"].mean().detach()
        if discriminator is not None:
            g = generator_loss(discriminator(recon))
            lam = adaptive_weight(rec, g, autoencoder.last_layer()) * self.disc_weight
            loss = loss + lam * g
            logs.update(g=g.detach(), d_weight=lam)
        return loss, recon, logs
