"""LPIPS, the learned perceptual distance (Zhang et al. 2018, Eq. 1) that LDM adds to its autoencoder's L1 loss.

d(x, x') = sum_l mean_{h,w} || w_l * (f_l(x) - f_l(x')) ||^2, where f_l are VGG16's relu1_2 ... relu5_3
activations normalised to unit length along the channels, and w_l are learned 1x1 "linear" heads.

The network is VGG16's feature stack with the module indices of ``torchvision.models.vgg16().features``, so
torchvision's weights load by name; the heads are named as the ``lpips`` package's (``lin0.model.1.weight``).
Nothing is ever downloaded: the weights come from a file the user names or from where torchvision and
``lpips`` would have put them (``lpips_files``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from torch import nn

from ddpm.errors import UserError
from ddpm.io import read_safetensors

# VGG16's configuration "D" (Simonyan & Zisserman 2015): widths of the 3x3 convolutions, "M" a 2x2 max-pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in the feature stack
TAP_CHANNELS = (64, 128, 256, 512, 512)
VGG_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 in the torch hub cache
HEADS_FILE = "vgg.pth"  # LPIPS v0.1 linear heads (lpips/weights/v0.1/vgg.pth, taming's lpips/vgg.pth)
# Inputs in [-1, 1] -> ImageNet's normalisation (lpips' ScalingLayer).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional part up to relu5_3 (the last max-pool is not needed), indexed as torchvision's."""
    layers: list[nn.Module] = []
    c = 3
    for v in VGG16[:-1]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """A 1x1 convolution to one channel without bias; ``model.1`` as lpips' NetLinLayer names it."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """``lpips(x, y) -> (N,)`` distances of image batches in [-1, 1] (grey images are repeated to RGB)."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        for i, c in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{i}", _Head(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Eq. 1 of Zhang et al.: channel-normalised feature differences, weighted, averaged over space."""
        total = x.new_zeros(x.shape[0])
        fx, fy = self.taps(x), self.taps(y)
        for i, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # lpips' normalize_tensor
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}")((a - b).pow(2)).mean((1, 2, 3))
        return total


def lpips_files() -> tuple[Path, Path | None]:
    """Where the weights would be without a path given: torchvision's VGG16 in the torch hub cache, and the
    heads in the hub cache or inside an installed ``lpips`` package (None: no lpips package)."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    heads = hub / HEADS_FILE
    if not heads.is_file():
        spec = importlib.util.find_spec("lpips")  # finds the package without importing it
        if spec is not None and spec.origin:
            heads = Path(spec.origin).parent / "weights" / "v0.1" / HEADS_FILE
    return hub / VGG_FILE, heads


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path, "LPIPS weights")[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # a refused pickle is an UnpicklingError, a broken file an EOFError or RuntimeError
        raise UserError(f"cannot read LPIPS weights {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _our_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept torchvision's (``features.N``), lpips' (``net.sliceK.N``, ``lin0.model.1``) and our names; drop
    the rest (VGG's classifier, lpips' scaling constants)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(?:module\.)?(?:net\.slice\d\.|net\.)", "features.", k)
        if k.startswith("features.") or re.match(r"lin\d\.model\.1\.weight$", k):
            out[k] = v
    return out


def load_lpips(path: str | Path | None = None) -> LPIPS:
    """An LPIPS network in eval mode with frozen weights, from ``path`` (a .safetensors or .pth file with the
    VGG16 features and the heads, or the heads alone) completed from ``lpips_files()``; a missing file is a
    one-line UserError naming it."""
    vgg, heads = lpips_files()
    if path is not None and not Path(path).is_file():
        raise UserError(f"LPIPS weights not found: {path}")
    state = _our_names(_read(Path(path))) if path is not None else {}
    model = LPIPS()
    want = model.state_dict()
    for needed, where, prefix in ((heads, "the LPIPS linear heads", "lin"), (vgg, "torchvision's VGG16", "features")):
        if any(k.startswith(prefix) and k not in state for k in want):
            if needed is None or not needed.is_file():
                raise UserError(f"the perceptual loss needs {where}, not found at {needed or HEADS_FILE}; pass "
                                "--perceptual-weights FILE (.safetensors or .pth), or set --perceptual-weight 0")
            state = {**_our_names(_read(needed)), **state}
    state = {k: v for k, v in state.items() if k in want}
    bad = [k for k in want if k not in state or state[k].shape != want[k].shape]
    if bad:
        raise UserError(f"the LPIPS weights do not fit VGG16: {bad[0]} is missing or misshapen")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
