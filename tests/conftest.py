"""Shared fixtures: a tiny model config that trains in seconds on a 2-core CPU."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from ddpm.config import RunConfig
from ddpm.presets import make_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DDPM_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_script(path: str, name: str | None = None):
    """A repository script that is not a package module (``benchmarks/x.py``, ``docs/hooks.py``), imported
    from its path."""
    spec = importlib.util.spec_from_file_location(name or Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**train) -> RunConfig:
    """The digits preset shrunk: 16 channels, 20 diffusion steps, a few training steps."""
    cfg = make_config("digits")
    cfg.model.base_channels = 16
    cfg.model.num_heads = 2
    cfg.model.norm_groups = 8
    cfg.model.num_res_blocks = 1
    cfg.diffusion.timesteps = 20
    cfg.train.steps = 4
    cfg.train.batch_size = 8
    cfg.train.warmup_steps = 2
    cfg.train.sample_every = 0
    cfg.train.checkpoint_every = 2
    cfg.train.log_every = 2
    cfg.train.num_sample_images = 4
    cfg.runtime.device = "cpu"
    # Tests compare outputs at float32 tolerances; tests/test_speed.py checks the bf16 path against fp32.
    cfg.runtime.precision = "fp32"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


@pytest.fixture
def tiny_config_file(tmp_path) -> Path:
    cfg = tiny_config()
    path = tmp_path / "tiny.json"
    d = cfg.to_dict()
    d.pop("preset")
    path.write_text(json.dumps(d))
    return path
