"""What the sub-commands share: flags derived from the config dataclasses, list parsers, output paths.

Flags are not restated by hand. ``add_config_flags`` makes one ``--flag`` per field of a config
dataclass (``RunConfig``'s sections, ``SamplingOptions``, ...): its type, its choices (a ``Literal``
field's values, which come from the registries of samplers, grids, schedules, predictions and
variances) and its help (the field's ``doc``). ``config_values`` reads back the flags a user gave.
So a new sampler or schedule appears in every sub-command that takes one without touching the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, get_args, get_origin, get_type_hints

from ddpm.config import RuntimeConfig, update
from ddpm.errors import UserError
from ddpm.io import resolve_device


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


def int_tuple(name: str, empty_ok: bool = False):
    """An argparse type for a comma-separated tuple; ``empty_ok``: ``none`` (or nothing) is the empty tuple.
    A bad value ends as argparse's one-line usage error (exit status 2), not a traceback."""
    def parse(text: str) -> tuple[int, ...]:
        if empty_ok and text.strip().lower() in ("", "none"):
            return ()
        try:
            return tuple(parse_ints(text, name))
        except UserError as e:
            hint = " (none: the empty list)" if empty_ok else ""
            raise argparse.ArgumentTypeError(f"{e}{hint}") from None

    return parse


def _parse_list(text: str, what: str, cast: Callable[[str], Any], kind: str) -> list:
    try:
        values = [cast(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"{what} takes comma-separated {kind}, got {text!r}") from None
    if not values:
        raise UserError(f"{what} is empty")
    return values


def parse_ints(text: str, what: str = "--t") -> list[int]:
    """'0,5,10,999' -> [0, 5, 10, 999] with a one-line error for anything else."""
    return _parse_list(text, what, int, "integers")


def parse_floats(text: str, what: str) -> list[float]:
    return _parse_list(text, what, float, "numbers")


def flag_name(f: dataclasses.Field) -> str:
    """The flag of a config field: ``--batch-size`` for ``batch_size`` (a field may name its own)."""
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def _flag_kwargs(f: dataclasses.Field, hint, default=None) -> dict[str, Any]:
    """argparse keyword arguments for one field: type and choices from its annotation, help from its doc."""
    args = get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:  # X | None
        hint = next(a for a in args if a is not type(None))
    help_text = f.metadata.get("help", "")
    if default is None:
        default = f.metadata.get("none_means")  # what leaving it unset means, e.g. "all T"
    if default is not None and default is not dataclasses.MISSING:
        help_text += f" (default: {','.join(map(str, default)) if isinstance(default, tuple) else default})"
    kwargs: dict[str, Any] = {"help": help_text, "dest": f.name, "default": None}
    flag = flag_name(f)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(hint) is Literal:
        kwargs["choices"] = list(get_args(hint))
    elif hint is int:
        kwargs["type"] = positive_int(flag) if f.metadata.get("positive") else int
    elif hint is float:
        kwargs["type"] = float
    elif get_origin(hint) is tuple:
        empty_ok = bool(f.metadata.get("empty_ok"))
        kwargs["type"], kwargs["metavar"] = int_tuple(flag, empty_ok), "N,N,...|none" if empty_ok else "N,N,..."
    elif hint is not str:
        raise TypeError(f"no flag type for field {f.name}: {hint}")
    if "metavar" in f.metadata:
        kwargs["metavar"] = f.metadata["metavar"]
    return kwargs


def add_config_flags(parser: argparse.ArgumentParser, cls, *, only: Sequence[str] | None = None,
                     skip: Sequence[str] = (), defaults: dict[str, Any] | None = None,
                     title: str | None = None, show_defaults: bool = True):
    """One flag per field of dataclass ``cls`` (``only`` those, none of ``skip``). Every flag defaults to
    None ("not given"); ``defaults`` only changes the default shown in the help, for sub-commands whose
    default differs from the field's, and ``show_defaults=False`` shows none (a preset decides them).
    Returns the argument group (``title``) or the parser, for further flags of the same kind."""
    group = parser.add_argument_group(title) if title else parser
    hints = get_type_hints(cls)
    shown = {f.name: f.default if show_defaults else None for f in dataclasses.fields(cls)} | (defaults or {})
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip or f.metadata.get("cli") is False:
            continue
        group.add_argument(flag_name(f), **_flag_kwargs(f, hints[f.name], shown[f.name]))
    return group


def config_values(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were given, as {field: value}."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.metadata.get("cli") is not False and getattr(args, f.name, None) is not None}


def add_runtime_flags(parser: argparse.ArgumentParser, *, only: Sequence[str] | None = None,
                      of_run: bool = False) -> None:
    """--device, --precision, --memory-format, --compile: the ``runtime`` section (``ddpm.runtime``);
    ``of_run``: a command on a saved run, whose own runtime settings are the defaults."""
    fields = [f.name for f in dataclasses.fields(RuntimeConfig) if f.name != "device"]
    defaults = {name: "the run's" for name in fields} if of_run else None
    add_config_flags(parser, RuntimeConfig, only=only, defaults=defaults, title="runtime (how the network runs)")


def runtime_config(args: argparse.Namespace, base: RuntimeConfig | None = None) -> RuntimeConfig:
    """``base`` (default: all auto) with the runtime flags given applied, device auto unless --device: a
    command runs where --device (default: auto) loaded the run, not where the run was saved from."""
    return update(base or RuntimeConfig(), {"device": "auto", **config_values(args, RuntimeConfig)}, "runtime")


def device_of(args: argparse.Namespace):
    """The device of --device (default: auto)."""
    return resolve_device(getattr(args, "device", None) or "auto")


def picture_path(out: str | None, default_name: str) -> Path:
    """Where a one-picture command writes: ``--out`` as given, or ``default_name`` inside it when it is a
    folder (an existing one, or a path ending in a slash), or ``default_name`` here when it is unset."""
    if out is None:
        return Path(default_name)
    if out.endswith(("/", "\\")) or Path(out).is_dir():
        return Path(out) / default_name
    if not Path(out).suffix:
        raise UserError(f"--out {out} has no file suffix; give a file like {out}.png or a folder ending in /")
    return Path(out)
