import json

import pytest
import torch
from safetensors.torch import load_file

from ddpm.checkpoint import CHECKPOINT, load_training_state
from ddpm.config import RunConfig
from ddpm.errors import UserError
from ddpm.io import atomic_write
from ddpm.pipeline import load_run
from ddpm.training.loop import train
from ddpm.training.step import lr_at
from tests.conftest import tiny_config


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    train(tiny_config(steps=6), tmp_path / "full", progress=False)
    train(tiny_config(steps=3), tmp_path / "split", progress=False)
    train(tiny_config(steps=6), tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / CHECKPOINT), load_file(tmp_path / "split" / CHECKPOINT)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert load_training_state(tmp_path / "split")["step"] == 6


def test_checkpoint_round_trip_and_config(tmp_path):
    cfg = tiny_config()
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.config == cfg
    assert run.step == cfg.train.steps
    assert RunConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == cfg
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [2, 4]


def test_same_seed_same_samples(tmp_path):
    train(tiny_config(), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    a = run.sample(3, generator=torch.Generator().manual_seed(1), progress=False)
    b = run.sample(3, generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(a, b) and a.shape == (3, 1, 8, 8)
    assert a.abs().max() <= 1.0 + 1e-6


def test_refuses_to_overwrite_a_run(tmp_path):
    train(tiny_config(), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(), tmp_path / "run", progress=False)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_warmup_then_cosine_decay():
    cfg = tiny_config(steps=100, warmup_steps=10, lr=1.0, lr_min_ratio=0.1).train
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_activation_checkpointing_computes_the_same_gradients():
    """Recomputing each block in the backward pass (dropout replayed from the saved RNG state) changes nothing."""
    from ddpm.models.unet import UNet

    cfg = tiny_config()
    torch.manual_seed(0)
    model = UNet(cfg.model).train()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 5, 9, 19])

    def grads(checkpointing: bool):
        model.checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(3)
        out = model(x, t)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    (a, ga), (b, gb) = grads(False), grads(True)
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb))


def test_fp16_with_a_loss_scaler_and_checkpointing_trains_and_resumes_exactly(tmp_path):
    """The memory savers for 256 px on one GPU, here on the CPU: fp16 autocast with a GradScaler (its scale
    saved with the checkpoint) and activation checkpointing; a resumed run ends where an uninterrupted one does."""
    def cfg(steps):
        c = tiny_config(steps=steps, activation_checkpointing=True)
        c.runtime.precision = "fp16"
        return c

    train(cfg(6), tmp_path / "full", progress=False)
    train(cfg(3), tmp_path / "split", progress=False)
    train(cfg(6), tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / CHECKPOINT), load_file(tmp_path / "split" / CHECKPOINT)
    assert a.keys() == b.keys() and "extra.grad_scaler.scale" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.isfinite(a["ema.conv_out.weight"]).all()


def test_sigterm_saves_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_does(tmp_path, tiny_config_file):
    """Preemption: SIGTERM (SLURM, Kubernetes) stops like Ctrl-C, with a checkpoint; --resume finishes the run
    with the weights an uninterrupted run has. A second SIGTERM right after the first does not cut the save."""
    import signal
    import subprocess
    import sys
    import time

    steps = 150
    args = [sys.executable, "-m", "ddpm", "train", "--config", str(tiny_config_file), "--steps", str(steps),
            "--checkpoint-every", "1000", "--log-every", "1", "--no-progress"]
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "split")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "split" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted at step" in out
    stopped = load_training_state(tmp_path / "split")["step"]
    assert 0 < stopped < steps
    assert subprocess.run([*args, "--out", str(tmp_path / "split"), "--resume"], capture_output=True).returncode == 0
    assert subprocess.run([*args, "--out", str(tmp_path / "full")], capture_output=True).returncode == 0
    a, b = load_file(tmp_path / "full" / CHECKPOINT), load_file(tmp_path / "split" / CHECKPOINT)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one byte of the tensor data flipped: the file still parses, the hash catches it
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    from ddpm.checkpoint import EMA, PREVIOUS

    train(tiny_config(steps=6, checkpoint_every=2), tmp_path / "run", progress=False)
    assert load_training_state(tmp_path / "run")["step"] == 6
    assert (tmp_path / "run" / PREVIOUS).is_file()  # the checkpoint before, kept beside the latest
    _damage(tmp_path / "run" / CHECKPOINT, how)
    with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
        assert load_training_state(tmp_path / "run")["step"] == 4
    # Resuming goes on from there and completes.
    train(tiny_config(steps=6, checkpoint_every=2), tmp_path / "run", resume=True, progress=False)
    assert load_training_state(tmp_path / "run")["step"] == 6
    # Both damaged: a one-line error naming the latest file; a damaged EMA file likewise.
    _damage(tmp_path / "run" / CHECKPOINT, how)
    _damage(tmp_path / "run" / PREVIOUS, "truncated")  # (a second flip of the same byte would mend it)
    with pytest.raises(UserError, match=CHECKPOINT):
        load_training_state(tmp_path / "run")
    _damage(tmp_path / "run" / EMA, how)
    with pytest.raises(UserError, match=EMA):
        load_run(tmp_path / "run")


def test_a_second_trainer_on_the_same_run_folder_is_refused(tmp_path):
    """A lock file with the owner's pid: a live owner refuses, one that is gone is taken over with a warning."""
    import os
    import socket
    import subprocess
    import sys

    from ddpm.training.loop import LOCK

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(f"{os.getpid()} {socket.gethostname()}")  # this live process holds it
    with pytest.raises(UserError, match="in use by another ddpm process"):
        train(tiny_config(), run, progress=False)
    assert not (run / CHECKPOINT).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK).write_text(f"{gone.stdout.strip()} {socket.gethostname()}")
    with pytest.warns(UserWarning, match="taking over the lock"):
        train(tiny_config(), run, progress=False)
    assert (run / CHECKPOINT).exists() and not (run / LOCK).exists()


def test_kill_9_at_random_moments_loses_nothing(tmp_path):
    """benchmarks/chaos.py at a small N: SIGKILL twice during a tiny run (start-up, steps or checkpoint
    writes), resume each time; no checkpoint is ever unreadable and the final weights are the uninterrupted
    run's, bit for bit; nothing half-written is left behind. 120 steps, so that on a fast machine the run is
    still going when the second kill comes (at 40, CI's run finished before it)."""
    from benchmarks.chaos import main as chaos

    r = chaos(["--kills", "2", "--steps", "120", "--checkpoint-every", "4", "--tiny", "--min-seconds", "3",
               "--max-seconds", "6", "--out", str(tmp_path)])
    assert r["kills"] == 2 and r["unreadable_checkpoints"] == 0 and r["failed_resumes"] == 0
    assert r["final_weights_equal"]
    assert not list((tmp_path / "killed").glob(".*.tmp")) and not (tmp_path / "killed" / ".lock").exists()


def test_previews_use_20_calls_of_dpm_solver_and_say_so(tmp_path, monkeypatch):
    from ddpm.pipeline import Run

    calls = []
    real = Run.sample

    def counting(self, n, **kw):
        calls.append(kw.get("sampling"))
        return real(self, n, **kw)

    monkeypatch.setattr(Run, "sample", counting)
    cfg = tiny_config(steps=2, sample_every=2)
    cfg.diffusion.timesteps = 50
    train(cfg, tmp_path / "run", progress=False)
    assert [p.name for p in (tmp_path / "run" / "samples").iterdir()] == ["step_0000002_dpmpp2m-20.png"]
    assert calls and calls[0].sampler == "dpm++2m" and calls[0].steps == 20


def test_a_new_run_whose_norms_hold_single_channels_is_warned_and_a_resumed_one_is_not(tmp_path, recwarn):
    cfg = tiny_config(steps=2)
    cfg.model.norm_groups = 16   # the 16-channel level: one channel per group
    with pytest.warns(UserWarning, match="--norm-groups 16 leaves one channel per group at the 16-channel.*"
                                         "pass --norm-groups 4"):
        train(cfg, tmp_path / "run", progress=False)
    recwarn.clear()
    cfg.train.steps = 3
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert not [w for w in recwarn if "norm-groups" in str(w.message)]
    train(tiny_config(steps=1), tmp_path / "fine", progress=False)   # 8 groups of 16 and 32 channels
    assert not [w for w in recwarn if "norm-groups" in str(w.message)]
