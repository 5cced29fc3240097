"""Captioned image folders: images and their captions listed in ``metadata.jsonl``.

The layout is Hugging Face ``imagefolder``'s, so a folder prepared for diffusers' text-to-image
scripts loads unchanged::

    folder/metadata.jsonl     {"file_name": "0001.png", "text": "a red car"}  (one JSON object a line)
    folder/0001.png
    folder/sub/0002.jpg       file_name "sub/0002.jpg": paths are relative to the folder

The images listed are the data set, in the file's order, each with its caption (the ``caption_column``
key, ``text`` by default; ``--caption-column``). A folder with a ``metadata.jsonl`` is captioned:
images it does not list are left out and class sub-folders give no labels, since a text model is
conditioned on the caption. Latent diffusion (Rombach et al. 2022) trains on such (image, caption)
pairs.

Every mistake in the metadata is a one-line ``UserError`` naming the file and the line, before any
image is decoded; unreadable images follow ``skip_bad_images`` like any other folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ddpm.data.folder import decode_images, first_image_shape
from ddpm.errors import UserError

METADATA = "metadata.jsonl"


def has_metadata(root: str | Path) -> bool:
    """Whether ``root`` is a captioned folder (holds a ``metadata.jsonl``)."""
    return (Path(root) / METADATA).is_file()


def _image_path(root: Path, base: Path, name, where: str) -> Path:
    """The image a ``file_name`` names, which must lie inside the folder.

    Absolute paths and ``..`` are refused outright; a symbolic link is followed and must land inside
    the folder too, so a metadata file cannot make training read files its author did not share.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: file_name must be a non-empty string, got {name!r}")
    if os.path.isabs(name):
        raise UserError(f"{where}: file_name {name!r} is absolute; name images relative to {root}")
    if ".." in Path(name).parts:
        raise UserError(f"{where}: file_name {name!r} points outside {root} (..)")
    path = root / name
    if not path.resolve().is_relative_to(base):
        raise UserError(f"{where}: file_name {name!r} is a link to {path.resolve()}, outside {root}")
    if not path.is_file():
        raise UserError(f"{where}: file_name {name!r}: no such image in {root}")
    return path


def read_metadata(root: str | Path, caption_column: str = "text") -> list[tuple[Path, str]]:
    """(image path, caption) for each line of ``root/metadata.jsonl``, in order; blank lines are skipped."""
    root = Path(root)
    meta = root / METADATA
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {meta}: {e}") from None
    base = root.resolve()
    entries = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{meta} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object like "
                            f'{{"file_name": ..., "{caption_column}": ...}}, got {type(row).__name__}')
        for key in ("file_name", caption_column):
            if key not in row:
                hint = " (the caption column; see --caption-column)" if key == caption_column else ""
                raise UserError(f"{where}: no {key!r} key{hint}; keys: {', '.join(map(str, row)) or 'none'}")
        text = row[caption_column]
        if not isinstance(text, str):
            raise UserError(f"{where}: caption {caption_column!r} must be a string, got {type(text).__name__}")
        entries.append((_image_path(root, base, row["file_name"], where), text))
    if not entries:
        raise UserError(f"{meta} is empty: list one image a line as "
                        f'{{"file_name": "0001.png", "{caption_column}": "a caption"}}')
    return entries


def load_captioned_folder(root: str | Path, image_size: tuple[int, int] | None, channels: int | None,
                          skip_bad_images: bool = False, caption_column: str = "text"):
    """(uint8 (N, H, W, C), captions (N,), skipped files) for a folder with a ``metadata.jsonl``.

    Unset ``image_size`` / ``channels`` come from the first image listed, as for a plain folder.
    Captions of skipped images are dropped with them, so ``captions[i]`` describes ``images[i]``.
    """
    root = Path(root)
    entries = read_metadata(root, caption_column)
    paths = [p for p, _ in entries]
    if image_size is None or channels is None:
        size0, ch0 = first_image_shape(paths[0])
        image_size, channels = image_size or size0, channels or ch0
    images, keep, skipped = decode_images(paths, tuple(image_size), channels, skip_bad_images, root)
    if not keep:
        raise UserError(f"none of the {len(paths)} images listed in {root / METADATA} could be read")
    captions = tuple(entries[i][1] for i in keep)
    return np.ascontiguousarray(images), captions, skipped


def metadata_fingerprint(root: str | Path) -> tuple | None:
    """Size and modification time of ``metadata.jsonl`` (None without one), for the data set cache."""
    meta = Path(root) / METADATA
    try:
        st = meta.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)
