"""Page faults and kernel time of our training step under each CPU allocator (``ddpm.runtime``'s
``cpu_allocator``: ``system``, glibc's malloc as it is; ``keep``, freed memory kept in the heap).

glibc serves every block above its mmap threshold (at most 32 MiB) with fresh pages from the kernel and
returns them when PyTorch frees the block, so a step whose activations are that large faults in and
zeroes all of them again every step; ``keep`` turns that off. Each allocator runs in a process of its
own (the setting is process-wide and not undone): one warm-up step, then ``--steps`` steps measured with
``getrusage`` (minor and major page faults, user and system CPU seconds) and the elapsed time. Writes
``--out``/results.json and results.md, with the CPU and the command:

    .venv/bin/python benchmarks/page_faults.py --preset cifar10 --precision fp32 --out bench_out/page_faults  # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark's training step)

from ddpm import runtime as rt  # noqa: E402
from ddpm.pipeline import build_model  # noqa: E402
from ddpm.presets import make_config  # noqa: E402

FIELDS = ("minor_faults", "major_faults", "user_s", "system_s", "elapsed_s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--precision", default="fp32", help="auto | fp32 | bf16 (default: fp32)")
    p.add_argument("--batch", type=int, help="training batch (default: the preset's)")
    p.add_argument("--steps", type=int, default=2, help="measured steps, after one warm-up step")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    p.add_argument("--allocators", default="system,keep", help=f"comma-separated, of {', '.join(rt.CPU_ALLOCATORS)}")
    p.add_argument("--out", default="bench_out/page_faults")
    p.add_argument("--child", help=argparse.SUPPRESS)  # the allocator this process measures
    args = p.parse_args(argv)
    if args.precision not in rt.PRECISIONS:
        p.error(f"--precision {args.precision}: choose one of {', '.join(rt.PRECISIONS)}")
    unknown = [a for a in args.allocators.split(",") if a not in rt.CPU_ALLOCATORS]
    if unknown:
        p.error(f"--allocators {','.join(unknown)}: choose from {', '.join(rt.CPU_ALLOCATORS)}")
    return args


def usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"minor_faults": r.ru_minflt, "major_faults": r.ru_majflt, "user_s": r.ru_utime, "system_s": r.ru_stime,
            "elapsed_s": time.perf_counter()}


def measure(args) -> dict:
    """One allocator's figures per step, in this process."""
    resolved = rt.configure_cpu_allocator(args.child, "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = make_config(args.preset)
    torch.manual_seed(0)
    batch = args.batch or cfg.train.batch_size
    step = speed.ours_train_step(cfg, build_model(cfg.model), precision=args.precision, batch=batch)
    before = usage()
    for _ in range(args.steps):
        step()
    after = usage()
    per_step = {k: (after[k] - before[k]) / args.steps for k in FIELDS}
    return {"allocator": resolved, "pid": os.getpid(), "batch": batch, "threads": torch.get_num_threads(), **per_step,
            "images_per_s": batch / per_step["elapsed_s"]}


def child_command(args, allocator: str) -> list[str]:
    cmd = [sys.executable, __file__, "--child", allocator, "--preset", args.preset, "--precision", args.precision,
           "--steps", str(args.steps)]
    for flag, value in (("--batch", args.batch), ("--threads", args.threads)):
        if value:
            cmd += [flag, str(value)]
    return cmd


def to_markdown(r: dict) -> str:
    rows = r["allocators"]
    first = rows[0]
    lines = [(f"# Page faults of the {r['preset']} training step, {r['precision']}, batch {first['batch']}, "
              f"{speed.threads_text(first['threads'])}, per step (mean of {r['steps']} after one warm-up step)"), "",
             *speed.provenance_lines(r),
             "| allocator | minor page faults | major page faults | user CPU s | system CPU s | elapsed s | images/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {a['allocator']} | {a['minor_faults']:,.0f} | {a['major_faults']:,.0f} | {a['user_s']:.2f} | "
              f"{a['system_s']:.2f} | {a['elapsed_s']:.2f} | {a['images_per_s']:.1f} |" for a in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)), flush=True)
        return {}
    rows = []
    for a in args.allocators.split(","):
        print(f"{a}: one warm-up step and {args.steps} measured steps of {args.preset}...", flush=True)
        child = subprocess.run(child_command(args, a), capture_output=True, text=True)
        if child.returncode:
            tail = child.stderr.strip().splitlines()[-1:] or ["no output"]
            raise SystemExit(f"page_faults.py: the {a} process failed: {tail[0]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    r = {"preset": args.preset, "precision": rt.resolve_precision(args.precision, "cpu"), "steps": args.steps,
         "allocators": rows, **speed.provenance("page_faults.py", argv, "cpu")}
    speed.write_results(args.out, r, to_markdown(r))
    return r


if __name__ == "__main__":
    main()
