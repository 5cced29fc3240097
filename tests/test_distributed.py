"""torchrun with two CPU processes (gloo): the global batch, per-rank randomness across resume, failures.

Each test starts ``torchrun --standalone --nproc_per_node=2`` on tests/distributed_helper.py, one thread a
process, and reads back what the ranks wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY = ["--base-channels", "16", "--num-heads", "2", "--norm-groups", "8", "--num-res-blocks", "1",
        "--timesteps", "20", "--dropout", "0", "--device", "cpu", "--precision", "fp32", "--no-progress",
        "--sample-every", "0", "--log-every", "2", "--batch-size", "8"]


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "distributed_helper.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _batches(out: Path, rank: int) -> dict[int, str]:
    lines = (out / f"batches_rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["batch"] for r in map(json.loads, lines)}


def test_ddp_gradient_over_the_global_batch_equals_one_process(tmp_path):
    r = torchrun("grads", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    g0, g1 = load_file(tmp_path / "grads_rank0.safetensors"), load_file(tmp_path / "grads_rank1.safetensors")
    names = [k[len("single."):] for k in g0 if k.startswith("single.")]
    assert names
    for k in names:
        torch.testing.assert_close(g0[f"ddp.{k}"], g0[f"single.{k}"], rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(g0[f"ddp.{k}"], g1[f"ddp.{k}"]), k  # the all-reduce gives every rank the same


def test_two_ranks_stay_identical_draw_apart_and_resume_exactly(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    r = torchrun("train", str(full), "--out", str(full / "run"), "--steps", "6", "--checkpoint-every", "2", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run saved to") == 1  # printed by rank 0 only
    r = torchrun("train", str(split), "--out", str(split / "run"), "--steps", "3", "--checkpoint-every", "2", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun("train", str(split), "--out", str(split / "run"), "--resume", "--steps", "6", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    a0, a1 = load_file(full / "rank0.safetensors"), load_file(full / "rank1.safetensors")
    for k in a0:
        assert torch.equal(a0[k], a1[k]), k  # weights and EMA bitwise identical on both ranks
    b = load_file(split / "rank0.safetensors")
    for k in a0:
        assert torch.equal(a0[k], b[k]), k  # a resumed two-rank run ends where an uninterrupted one does
    for steps in (_batches(full, 0), _batches(split, 0)):
        assert len(steps) == 6
    for run in (full, split):
        b0, b1 = _batches(run, 0), _batches(run, 1)
        assert all(b0[s] != b1[s] for s in b0), "two ranks drew the same batch"
    assert _batches(split, 0) == _batches(full, 0) and _batches(split, 1) == _batches(full, 1)


def test_the_loss_aware_sampler_learns_from_every_rank(tmp_path):
    r = torchrun("train", str(tmp_path), "--out", str(tmp_path / "run"), "--steps", "3",
                 "--timestep-sampler", "loss_aware", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    seen = "objective.timestep_sampler.seen"
    assert int(a[seen].sum()) == 3 * 8  # every step's whole global batch, not one rank's half
    assert torch.equal(a[seen], b[seen])
    assert torch.equal(a["objective.timestep_sampler.history"], b["objective.timestep_sampler.history"])


def test_a_failing_rank_ends_the_job_quickly_with_its_error(tmp_path):
    start = time.perf_counter()
    r = torchrun("fail", str(tmp_path), "--out", str(tmp_path / "run"), "--steps", "50", *TINY, timeout=120)
    took = time.perf_counter() - start
    assert r.returncode != 0
    assert "rank 1 failed on purpose" in r.stderr
    assert "error: rank 0 stopped: a collective failed, most likely because another process" in r.stderr
    assert "[rank0]: Traceback" not in r.stderr  # the survivor says so in one line
    assert took < 60, took


def test_sampling_on_two_ranks_writes_what_one_process_writes(tmp_path):
    from ddpm.cli import main
    from ddpm.training.loop import train
    from tests.conftest import tiny_config

    run = tmp_path / "run"
    train(tiny_config(), run, progress=False)
    assert main(["sample", "--checkpoint", str(run), "--n", "5", "--batch-size", "2", "--steps", "4",
                 "--device", "cpu", "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "ddpm", "sample", "--checkpoint", str(run), "--num-samples", "5", "--batch-size", "2",
                        "--steps", "4", "--device", "cpu", "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote 5 samples") == 1
    import numpy as np

    one, two = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert np.array_equal(one["arr_0"], two["arr_0"])
