"""Shards for sets larger than memory: written by ``ddpm prepare-data``, streamed by ``ddpm train``.

Uses the CIFAR-10 test folder of ../shared/data (skipped where it is absent).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm.cli import main
from ddpm.data.datasets import load_dataset
from ddpm.data.shards import ShardStream, read_meta, write_shards
from ddpm.data.transforms import compact
from tests.conftest import SHARED_DATA

pytest.importorskip("webdataset")
CIFAR = SHARED_DATA / "cifar10-test"
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/data/cifar10-test is absent")


def _small_folder(root: Path, per_class: int = 40, classes=("airplane", "cat", "ship")) -> Path:
    """Links to the first images of a few CIFAR-10 classes."""
    for c in classes:
        (root / c).mkdir(parents=True)
        for p in sorted((CIFAR / c).iterdir())[:per_class]:
            os.symlink(p, root / c / p.name)
    return root


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


@needs_cifar
def test_one_epoch_of_the_stream_is_the_in_memory_set(tmp_path):
    folder = _small_folder(tmp_path / "imgs")
    meta = write_shards(folder, tmp_path / "shards", (32, 32), 3, shard_size=25, progress=False)
    assert meta["count"] == 120 and len(meta["shards"]) == 5 and meta["classes"] == ["airplane", "cat", "ship"]
    data = load_dataset(str(folder), image_size=(32, 32), channels=3)
    pixels = compact(data.images)
    assert pixels.dtype == torch.uint8
    want = collections.Counter((_digest(x), int(y)) for x, y in zip(pixels, data.labels))
    stream = iter(ShardStream(tmp_path / "shards", seed=0, buffer=16))
    epoch = [next(stream) for _ in range(120)]
    assert collections.Counter((_digest(x), y) for x, y in epoch) == want
    again = [next(iter(ShardStream(tmp_path / "shards", seed=0, buffer=16))) for _ in range(1)]
    assert _digest(again[0][0]) == _digest(epoch[0][0])  # the order follows the seed
    second = [next(stream) for _ in range(120)]
    assert [_digest(x) for x, _ in second] != [_digest(x) for x, _ in epoch]  # a new order each epoch
    assert collections.Counter((_digest(x), y) for x, y in second) == want


@needs_cifar
def test_ranks_and_workers_read_disjoint_shards_that_cover_the_set(tmp_path):
    write_shards(_small_folder(tmp_path / "imgs"), tmp_path / "shards", (32, 32), 3, shard_size=10,
                 progress=False)
    seen = []
    for rank in range(2):
        s = ShardStream(tmp_path / "shards", seed=0, rank=rank, world_size=2, workers=3)
        for w in range(3):
            seen += s.my_shards(w, 3)
    assert sorted(seen) == read_meta(tmp_path / "shards")["shards"]
    with pytest.raises(Exception, match="cannot feed"):
        ShardStream(tmp_path / "shards", seed=0, world_size=4, workers=4)


@needs_cifar
def test_prepare_data_then_train_from_shards_end_to_end(tmp_path, capsys):
    folder = _small_folder(tmp_path / "imgs", per_class=20)
    assert main(["prepare-data", str(folder), "--out", str(tmp_path / "shards"), "--size", "16",
                 "--shard-size", "20", "--no-progress"]) == 0
    assert "wrote 60 images (16x16x3, 3 classes) in 3 shard(s)" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--steps", "3",
                 "--batch-size", "4", "--base-channels", "16", "--num-heads", "2", "--norm-groups", "8",
                 "--num-res-blocks", "1", "--timesteps", "20", "--sample-every", "0", "--device", "cpu",
                 "--precision", "fp32", "--no-progress", "--data-workers", "1"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["image_size"] == [16, 16] and cfg["model"]["in_channels"] == 3
    assert main(["prepare-data", str(folder), "--out", str(tmp_path / "shards"), "--size", "16"]) == 2  # exists


def test_an_unfinished_shard_folder_is_refused(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(Exception, match="no shards.json"):
        read_meta(tmp_path / "shards")


_PEAK = """
import resource, sys
from ddpm.data.shards import ShardStream
s = iter(ShardStream(sys.argv[1], seed=0, buffer=1000))
for _ in range(int(sys.argv[2])):
    next(s)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
@needs_cifar
def test_streaming_memory_stays_flat_when_the_set_grows_tenfold(tmp_path):
    meta = write_shards(CIFAR, tmp_path / "x1", (32, 32), 3, shard_size=1000, progress=False)
    (tmp_path / "x10").mkdir()
    for name in meta["shards"]:
        for k in range(10):
            os.symlink(tmp_path / "x1" / name, tmp_path / "x10" / f"{k}-{name}")
    big = {**meta, "count": 10 * meta["count"],
           "shards": [f"{k}-{name}" for k in range(10) for name in meta["shards"]]}
    (tmp_path / "x10" / "shards.json").write_text(json.dumps(big))

    def peak_kib(folder: Path, n: int) -> int:
        r = subprocess.run([sys.executable, "-c", _PEAK, str(folder), str(n)], capture_output=True, text=True,
                           check=True)
        return int(r.stdout.split()[-1])

    small, large = peak_kib(tmp_path / "x1", meta["count"]), peak_kib(tmp_path / "x10", big["count"])
    in_memory_kib = big["count"] * 3 * 32 * 32 // 1024  # the 10x set as uint8 alone: 293 MiB
    assert large - small < 32 * 1024, (small, large)
    assert large - small < in_memory_kib / 8, (small, large, in_memory_kib)
