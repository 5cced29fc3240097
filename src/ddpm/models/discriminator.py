"""The PatchGAN discriminator of LDM's autoencoder training (Isola et al. 2017, pix2pix; taming-transformers'
``NLayerDiscriminator``, which LDM's ``LPIPSWithDiscriminator`` uses).

``n_layers`` stride-2 4x4 convolutions (BatchNorm and LeakyReLU(0.2) after all but the first's norm), one
stride-1 4x4 convolution, then a 4x4 convolution to one logit per patch: each logit judges a receptive
field (70x70 pixels for n_layers = 3), not the whole image.
"""

from __future__ import annotations

from torch import nn

from ddpm.errors import UserError


def patch_side(side: int, n_layers: int) -> int:
    """The side of the logit map for an input of ``side`` pixels (k4 s2 p1 halves, k4 s1 p1 takes one off)."""
    for _ in range(n_layers):
        side = (side + 2 - 4) // 2 + 1
    return side - 2


def check_discriminator(image_size: tuple[int, int], n_layers: int) -> None:
    if min(patch_side(s, n_layers) for s in image_size) < 1:
        fits = max([n for n in range(1, 9) if min(patch_side(s, n) for s in image_size) >= 1], default=None)
        hint = f"use --disc-layers {fits} or fewer" if fits else "the images are too small for a discriminator"
        raise UserError(f"a {n_layers}-layer discriminator leaves nothing of {image_size[0]}x{image_size[1]} "
                        f"images; {hint}")


class NLayerDiscriminator(nn.Sequential):
    """(N, C, H, W) -> (N, 1, h, w) patch logits. Initialised as pix2pix: conv weights N(0, 0.02), BatchNorm
    scales N(1, 0.02), biases 0."""

    def __init__(self, in_channels: int, channels: int = 64, n_layers: int = 3):
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last of these keeps the size (taming's layout)
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
