"""Kill -9 at random moments: does every resume succeed, is every checkpoint readable, and do the final
weights equal an uninterrupted run's bit for bit?

Trains a run without interruption, then the same run again while killing its process with SIGKILL after a
random time (so kills land in start-up, in training steps and in checkpoint writes), resuming after each
kill, ``--kills`` times, then letting it finish. After every kill it reads the checkpoint the way
``--resume`` does (falling back to the previous one if the latest is damaged) and counts unreadable ones.
Writes OUT/chaos.json.

    .venv/bin/python benchmarks/chaos.py --kills 20 --out bench_out/chaos             # digits, about 10 minutes
    .venv/bin/python benchmarks/chaos.py --kills 3 --steps 120 --tiny --out /tmp/chaos   # the test's size
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from ddpm.checkpoint import CHECKPOINT, PREVIOUS, load_training_state
from ddpm.errors import UserError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run may finish (default: 20)")
    p.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints (default: 10)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="earliest kill after a start (default: 1)")
    p.add_argument("--max-seconds", type=float, default=8.0, help="latest kill after a start (default: 8)")
    p.add_argument("--tiny", action="store_true", help="a tiny network (16 channels, T = 20), as the tests use")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times (default: 0)")
    p.add_argument("--out", default="bench_out/chaos")
    return p.parse_args(argv)


def train_command(args, run: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "ddpm", "train", "--steps", str(args.steps), "--checkpoint-every",
           str(args.checkpoint_every), "--sample-every", "0", "--log-every", "5", "--no-progress", "--device", "cpu",
           "--precision", "fp32", "--out", str(run)]
    if args.tiny:
        cmd += ["--base-channels", "16", "--num-heads", "2", "--norm-groups", "8", "--num-res-blocks", "1",
                "--timesteps", "20", "--batch-size", "8"]
    return cmd + (["--resume"] if resume else [])


def readable(run: Path) -> bool | None:
    """Whether --resume can read a checkpoint of ``run`` (None: none written yet)."""
    if not (run / CHECKPOINT).exists() and not (run / PREVIOUS).exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_training_state(run)
        return True
    except UserError as e:
        return None if "no checkpoint" in str(e) and not (run / CHECKPOINT).exists() else False


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    subprocess.run(train_command(args, out / "uninterrupted", False), check=True, capture_output=True)
    uninterrupted_s = time.perf_counter() - t0
    run, kills, unreadable, failed_resumes, steps_at_kill = out / "killed", 0, 0, 0, []
    while True:
        resume = (run / CHECKPOINT).exists() or (run / PREVIOUS).exists()  # killed before the first save: anew
        proc = subprocess.Popen(train_command(args, run, resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if kills < args.kills:
            try:
                proc.wait(timeout=rng.uniform(args.min_seconds, args.max_seconds))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                state = readable(run)
                unreadable += state is False
                steps_at_kill.append(load_training_state(run)["step"] if state else None)
                print(f"kill {kills}: step {steps_at_kill[-1]}, checkpoint "
                      f"{'readable' if state else 'none yet' if state is None else 'UNREADABLE'}", flush=True)
                continue
        else:
            proc.wait()
        if proc.returncode != 0:
            failed_resumes += 1
            print(f"run failed: {proc.stderr.read().strip()[-300:]}", flush=True)
            if failed_resumes > 3:
                break
            continue
        break
    a, b = load_file(out / "uninterrupted" / CHECKPOINT), load_file(run / CHECKPOINT)
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = {"kills": kills, "unreadable_checkpoints": unreadable, "failed_resumes": failed_resumes,
              "steps_at_kill": steps_at_kill, "final_weights_equal": equal, "steps": args.steps,
              "checkpoint_every": args.checkpoint_every, "uninterrupted_seconds": uninterrupted_s,
              "command": " ".join(sys.argv)}
    (out / "chaos.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "steps_at_kill"}))
    return result


if __name__ == "__main__":
    main()
