"""Peak memory of streaming shards: does it stay flat when the set grows tenfold?

Writes the CIFAR-10 test folder of ../shared/data as uint8 WebDataset shards (``ddpm.data.shards``), makes a
set ten times larger by linking each shard ten times, and reads one epoch of each through ``ShardStream``
in a fresh process, reporting the process's peak resident memory (``ru_maxrss``). An in-memory set would
grow by the size of its images (the 10x set as uint8 alone: 293 MiB). Writes OUT/streaming_memory.json.

    .venv/bin/python benchmarks/streaming_memory.py --out benchmarks/results/streaming_memory   # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ddpm.data.shards import write_shards
from ddpm.io import write_text_atomic

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-test"
READ_EPOCH = """
import resource, sys
from ddpm.data.shards import ShardStream
s = iter(ShardStream(sys.argv[1], seed=0, buffer=1000))
for _ in range(int(sys.argv[2])):
    next(s)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kib(folder: Path, n: int) -> int:
    r = subprocess.run([sys.executable, "-c", READ_EPOCH, str(folder), str(n)], capture_output=True, text=True,
                       check=True)
    return int(r.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(CIFAR), help="an image folder (default: ../shared/data/cifar10-test)")
    ap.add_argument("--out", default="bench_out/streaming_memory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        meta = write_shards(args.data, tmp / "x1", (32, 32), 3, shard_size=1000, progress=False)
        (tmp / "x10").mkdir()
        names = [f"{k}-{name}" for k in range(10) for name in meta["shards"]]
        for name in names:
            os.symlink(tmp / "x1" / name.split("-", 1)[1], tmp / "x10" / name)
        (tmp / "x10" / "shards.json").write_text(json.dumps({**meta, "count": 10 * meta["count"], "shards": names}))
        result = {"command": "python " + " ".join(sys.argv), "data": args.data,
                  "images_1x": meta["count"], "peak_rss_mib_1x": round(peak_kib(tmp / "x1", meta["count"]) / 1024, 1),
                  "images_10x": 10 * meta["count"],
                  "peak_rss_mib_10x": round(peak_kib(tmp / "x10", 10 * meta["count"]) / 1024, 1),
                  "uint8_images_10x_mib": round(10 * meta["count"] * 3 * 32 * 32 / 2**20, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "streaming_memory.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
