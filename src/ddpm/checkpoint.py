"""The run folder: checkpoints as safetensors + JSON, written atomically (``ddpm.io.atomic_write``).

Training writes these files and the pipeline reads them, so the format sits below both.

A run folder holds:
  config.json              the full typed RunConfig
  checkpoint.safetensors   weights, EMA, optimizer state, RNG states and extra training state (e.g. the
                           loss-aware timestep sampler's history), with step and config in its
                           metadata: everything ``--resume`` needs, in one file so one rename commits it
  ema.safetensors          the EMA weights alone (the sampling model), with the config in its metadata
  checkpoint.previous.safetensors   the checkpoint before the latest; ``--resume`` falls back to it (with a
                           warning) when the latest is missing or damaged

Every file carries the SHA-256 of its tensors in its metadata, checked when it is loaded, so a file
damaged on disk is an error naming it instead of a model that silently computes something else.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ddpm.config import RunConfig
from ddpm.errors import UserError
from ddpm.io import atomic_write, read_safetensors, write_text_atomic

CHECKPOINT = "checkpoint.safetensors"
PREVIOUS = "checkpoint.previous.safetensors"  # the one before, kept until the next is complete
EMA = "ema.safetensors"
CONFIG = "config.json"
FORMAT = "ddpm-checkpoint-1"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _cpu_state(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, cfg: RunConfig, step: int, model, ema, optimizer, rng: dict[str, torch.Tensor],
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """``extra``: further training state for ``--resume`` (e.g. the loss-aware timestep sampler's history)."""
    run_dir = Path(run_dir)
    _check_finite(step, run_dir, model, ema)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {**_cpu_state(model, "model"), **_cpu_state(ema, "ema"), **opt_tensors,
               **{f"rng.{k}": v.contiguous().cpu() for k, v in rng.items()},
               **{f"extra.{k}": v.detach().contiguous().cpu() for k, v in (extra or {}).items()}}
    meta = {"format": FORMAT, "step": str(step), "config": cfg.to_json(), "optimizer": json.dumps(opt_meta)}
    meta["sha256"] = content_hash(tensors, meta)
    had_one = (run_dir / CHECKPOINT).exists()
    if had_one:
        os.replace(run_dir / CHECKPOINT, run_dir / PREVIOUS)  # one rename: a crash leaves one or the other
    try:
        atomic_write(run_dir / CHECKPOINT, lambda tmp: save_file(tensors, tmp, metadata=meta))
    except UserError:  # refused (full disk, ...): the last good checkpoint goes back to being the latest
        if had_one:
            os.replace(run_dir / PREVIOUS, run_dir / CHECKPOINT)
        raise
    save_ema(run_dir, cfg, step, {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")})


def _check_finite(step: int, run_dir: Path, *models) -> None:
    """Non-finite weights are never saved: they would replace the last good checkpoint with a useless one."""
    for m in models:
        if m is not None and not all(bool(torch.isfinite(p).all()) for p in m.parameters()):
            raise UserError(f"the weights at step {step} are not finite, so they were not saved; {run_dir} "
                            "keeps its last checkpoint. Lower --lr or train in --precision fp32")


def save_ema(run_dir: Path, cfg: RunConfig, step: int, state: dict[str, torch.Tensor]) -> None:
    """The sampling half of a run folder: ema.safetensors (weights, config in its metadata) and config.json.

    Enough for every command that samples; a converted checkpoint is only this (no optimizer to resume)."""
    run_dir = Path(run_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": FORMAT, "step": str(step), "config": cfg.to_json()}
    meta["sha256"] = content_hash(tensors, meta)
    atomic_write(run_dir / EMA, lambda tmp: save_file(tensors, tmp, metadata=meta))
    write_text_atomic(run_dir / CONFIG, cfg.to_json() + "\n")


def find_file(run: str | Path, name: str) -> Path:
    """``run`` may be a run folder or a .safetensors file inside one."""
    p = Path(run)
    if p.is_file():
        return p
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    if not (p / name).is_file():
        raise UserError(f"no {name} in {p}; is it a ddpm run folder?")
    return p / name


def content_hash(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 of the metadata (but the hash itself) and the tensors (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checked(path: Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a ddpm file whose format and content hash are right; else a UserError naming it."""
    tensors, meta = read_safetensors(path, what)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UserError(f"{path} is not a ddpm {what} (format {meta.get('format')!r})")
    if "sha256" in meta and content_hash(tensors, meta) != meta["sha256"]:  # files before the hash have none
        raise UserError(f"{path} is damaged: its contents do not match the hash they were saved with")
    try:
        json.loads(meta["config"]), json.loads(meta.get("optimizer", "{}")), int(meta.get("step", 0))
    except ValueError:
        raise UserError(f"{path} is damaged: its metadata cannot be read") from None
    return tensors, meta


def load_training_state(run_dir: str | Path) -> dict[str, Any]:
    """Everything ``--resume`` needs: config, step, model/ema/optimizer state dicts, RNG states, extra state.

    When the latest checkpoint is missing, unreadable or damaged and the previous one is good, that one is
    used, with a warning that says why."""
    try:
        tensors, meta = read_checked(find_file(run_dir, CHECKPOINT))
    except UserError as latest:
        previous = Path(run_dir) / PREVIOUS
        if not previous.is_file():
            raise
        try:
            tensors, meta = read_checked(previous)
        except UserError:
            raise latest from None
        warnings.warn(f"{latest}; resuming from the previous checkpoint {previous} (step {meta['step']})",
                      stacklevel=2)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    return {
        "config": RunConfig.from_dict(json.loads(meta["config"])),
        "step": int(meta["step"]),
        "model": part("model"),
        "ema": part("ema"),
        "optimizer": _unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optimizer.")},
                                          json.loads(meta["optimizer"])),
        "rng": part("rng"),
        "extra": part("extra"),
    }


def load_ema(run: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor], int]:
    """(config, EMA state dict, step) from a run folder or an ema.safetensors file."""
    tensors, meta = read_checked(find_file(run, EMA))
    return RunConfig.from_dict(json.loads(meta["config"])), tensors, int(meta.get("step", 0))
