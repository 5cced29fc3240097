"""Sets larger than memory: uint8 WebDataset tar shards, written once, streamed while training.

``write_shards`` (``ddpm prepare-data``) fits every image to the model's size and channels once and writes
it as a PNG in tar shards of ``shard_size`` images (the WebDataset layout: ``KEY.png`` and, for a labelled
folder, ``KEY.cls``), then ``shards.json`` last: a folder without it is an unfinished write. ``ShardStream``
reads them in DataLoader workers: every rank and every worker reads its own shards (the shard list split
by rank, then by worker), shuffles them and a buffer of images with a seed of (seed, epoch, rank, worker),
and memory stays that of one buffer, however large the set.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm.data.folder import _BAD_IMAGE, find_images
from ddpm.data.transforms import check_target, fit_image
from ddpm.errors import UserError
from ddpm.io import progress_bar, write_text_atomic

META = "shards.json"


def _wds():
    try:
        import webdataset
    except ImportError:
        raise UserError("shards need the webdataset package: pip install 'ddpm[shards]'") from None
    return webdataset


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def write_shards(source: str | Path, out: str | Path, image_size: tuple[int, int], channels: int, *,
                 shard_size: int = 1000, progress: bool = True) -> dict:
    """Fit each image of the folder ``source`` (read one at a time) and write it to ``out``; returns the
    metadata written to ``out``/shards.json. Unreadable images stop it with their name; a failed write
    leaves no ``out`` folder behind."""
    wds = _wds()
    check_target(image_size, channels)
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UserError(f"{source} is not a folder of images")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out")
    paths = find_images(source)
    if not paths:
        raise UserError(f"no images in {source}")
    tops = [p.relative_to(source).parts for p in paths]
    classes = sorted({t[0] for t in tops}) if all(len(t) >= 2 for t in tops) else None
    out.mkdir(parents=True)
    try:
        names = _write(wds, paths, tops, classes, out, tuple(image_size), channels, shard_size, progress)
        meta = {"format": "ddpm-shards-1", "count": len(paths), "image_size": list(image_size),
                "channels": channels, "classes": classes, "shards": names, "source": str(source)}
        write_text_atomic(out / META, json.dumps(meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return meta


def _write(wds, paths, tops, classes, out: Path, image_size, channels: int, shard_size: int, progress: bool):
    index = {c: i for i, c in enumerate(classes or [])}
    names, writer = [], None
    for i, p in enumerate(progress_bar(paths, desc="writing shards", unit="img", disable=not progress)):
        if i % shard_size == 0:
            if writer is not None:
                writer.close()
            names.append(f"shard-{len(names):06d}.tar")
            writer = wds.TarWriter(str(out / names[-1]))
        try:
            with Image.open(p) as img:
                a = fit_image(img, image_size, channels)
        except _BAD_IMAGE as e:
            raise UserError(f"cannot read image {p}: {e}") from None
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if channels == 1 else a).save(buf, format="PNG")
        sample = {"__key__": f"{i:09d}", "png": buf.getvalue()}
        if classes:
            sample["cls"] = str(index[tops[i][0]]).encode()
        writer.write(sample)
    writer.close()
    return names


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not is_shard_folder(path):
        raise UserError(f"{path} holds no {META}: not a shard folder, or its writing did not finish")
    try:
        meta = json.loads((path / META).read_text())
    except ValueError as e:
        raise UserError(f"cannot read {path / META}: {e}") from None
    missing = [s for s in meta.get("shards", []) if not (path / s).is_file()]
    if missing:
        raise UserError(f"shard folder {path} lacks {', '.join(missing[:3])}")
    return meta


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


class ShardStream(torch.utils.data.IterableDataset):
    """Endless (uint8 (C, H, W) image, label) pairs from a shard folder: this rank's and worker's shards,
    epoch after epoch, each epoch in a new order, shuffled through a buffer of ``buffer`` images."""

    def __init__(self, path: str | Path, *, seed: int, rank: int = 0, world_size: int = 1, start_epoch: int = 0,
                 buffer: int = 1000, workers: int = 1):
        self.path, self.meta = Path(path), read_meta(path)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_epoch, self.buffer = start_epoch, buffer
        readers = world_size * max(1, workers)
        if len(self.meta["shards"]) < readers:
            raise UserError(f"{len(self.meta['shards'])} shard(s) in {path} cannot feed {world_size} process(es) x "
                            f"{max(1, workers)} worker(s); write smaller shards (--shard-size)")

    def my_shards(self, worker: int, workers: int) -> list[str]:
        return self.meta["shards"][self.rank::self.world_size][worker::workers]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        wds = _wds()
        epoch = self.start_epoch
        while True:
            rng = random.Random(_seed(self.seed, epoch, self.rank, worker))
            shards = self.my_shards(worker, workers)
            rng.shuffle(shards)
            urls = [{"url": str(self.path / s)} for s in shards]
            pool = []
            for sample in wds.tarfile_samples(urls):
                pool.append(sample)
                if len(pool) >= self.buffer:
                    yield _decode(pool.pop(rng.randrange(len(pool))))
            rng.shuffle(pool)
            yield from map(_decode, pool)
            epoch += 1


def _decode(sample: dict) -> tuple[torch.Tensor, int]:
    a = np.array(Image.open(io.BytesIO(sample["png"])), dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a)), int(sample["cls"]) if "cls" in sample else -1
