"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse

from ddpm.errors import UserError


def positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {value}")
        return value

    return parse


def require_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive, got {value}")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: auto)")


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """--precision, --memory-format, --compile: the speed options of ``ddpm.performance``."""
    from ddpm.config import COMPILE_MODES, MEMORY_FORMATS, PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS,
                        help="network arithmetic: bf16 autocast with fp32 weights, or fp32 (default: auto, bf16 "
                        "where the device has native bf16)")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, help="tensor layout (default: auto, contiguous)")
    parser.add_argument("--compile", choices=COMPILE_MODES,
                        help="torch.compile mode (default: auto: none on CPU; on CUDA default for training, "
                        "reduce-overhead (CUDA graphs) for sampling)")


def picture_path(out: str | None, default_name: str):
    """Where a one-picture command writes: ``--out`` as given, or ``default_name`` inside it when it is a
    folder (an existing one, or a path ending in a slash), or ``default_name`` here when it is unset."""
    from pathlib import Path

    if out is None:
        return Path(default_name)
    if out.endswith(("/", "\\")) or Path(out).is_dir():
        return Path(out) / default_name
    if not Path(out).suffix:
        raise UserError(f"--out {out} has no file suffix; give a file like {out}.png or a folder ending in /")
    return Path(out)
