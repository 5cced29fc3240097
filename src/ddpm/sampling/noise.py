"""Seeded noise where each sample owns its generator, so an image depends only on its seed."""

from __future__ import annotations

from typing import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape``; a list of generators draws row i from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        g_dev = generator.device if generator is not None else device
        return torch.randn(tuple(shape), generator=generator, device=g_dev, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
    return torch.stack(rows).to(device)


def seed_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
