"""Reliability: non-finite steps are skipped, refused writes (full disk, read-only folder) lose nothing.

Kills, preemption, damaged checkpoints and the run-folder lock are in tests/test_training.py; the bad-input
catalogue is in tests/test_bad_input.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import subprocess
import sys
import uuid

import pytest
import torch
from safetensors.torch import load_file

from ddpm import checkpoint as ckpt
from ddpm.checkpoint import CHECKPOINT, PREVIOUS, load_training_state
from ddpm.data.datasets import ImageDataset, load_dataset
from ddpm.errors import UserError
from ddpm.pipeline import build_model
from ddpm.training.loop import train
from ddpm.training.step import NonFiniteError, optimizer_step
from tests.conftest import tiny_config


def _digits(poison: slice | None = None) -> ImageDataset:
    """The embedded digits, with the images in ``poison`` made NaN (a corrupt batch)."""
    data = load_dataset("digits", None, image_size=(8, 8), channels=1)
    images = data.images.clone()
    if poison is not None:
        images[poison] = float("nan")
    return ImageDataset(images, data.labels, data.num_classes, "digits")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_nan_loss_leaves_weights_optimizer_and_ema_alone():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    assert optimizer_step(model(x).square().mean(), model, opt, grad_clip=1.0, ema=ema, ema_decay=0.9)
    before, before_ema, before_opt = _state(model), _state(ema), json.dumps(str(opt.state_dict()))
    for clip in (1.0, 0.0):  # with and without clipping (the norm is computed either way)
        bad = model(x.clone().fill_(float("nan"))).square().mean()
        assert not optimizer_step(bad, model, opt, grad_clip=clip, ema=ema, ema_decay=0.9)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in ema.state_dict().items():
        assert torch.equal(v, before_ema[k]), k
    assert json.dumps(str(opt.state_dict())) == before_opt


def test_an_infinite_gradient_under_a_finite_loss_is_skipped():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    model = torch.nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    loss = w.sum()
    w.register_hook(lambda g: g + float("inf"))  # an overflow in the backward pass
    assert torch.isfinite(loss)
    assert not optimizer_step(loss, model, opt)
    assert w.item() == 1.0


def test_a_few_nan_batches_are_skipped_counted_and_logged(tmp_path, recwarn):
    cfg = tiny_config(steps=6, batch_size=4)
    data = _digits(poison=slice(0, 300))  # about a sixth of the images: some batches hit one
    train(cfg, tmp_path / "run", data=data, progress=False)
    state = load_training_state(tmp_path / "run")
    skipped = int(state["extra"]["skipped_steps"])
    assert 0 < skipped < 6
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["skipped_steps"] == skipped
    assert all(math.isfinite(r["loss"]) for r in logs)
    assert any("not finite" in str(w.message) for w in recwarn)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_k_nan_steps_in_a_row_stop_the_run_and_leave_the_weights_untouched(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(steps=2), run, progress=False)
    good = load_file(run / CHECKPOINT)
    cfg = tiny_config(steps=40, max_nonfinite_steps=5)
    with pytest.raises(NonFiniteError, match="not finite for 5 steps in a row"):
        train(cfg, run, resume=True, data=_digits(poison=slice(None)), progress=False)
    after = load_file(run / CHECKPOINT)  # checkpoints saved during the streak hold the untouched weights
    weights = [k for k in good if k.startswith(("model.", "ema."))]
    assert weights and all(torch.equal(after[k], good[k]) for k in weights)
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(steps=2)
    train(cfg, run, progress=False)
    before = (run / CHECKPOINT).read_bytes()
    saved = load_training_state(run)
    model = build_model(cfg.model)
    model.load_state_dict(saved["model"])
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(UserError, match="not finite"):
        ckpt.save_checkpoint(run, cfg, 3, model, model, opt, {})
    assert (run / CHECKPOINT).read_bytes() == before and not (run / PREVIOUS).exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_refused_checkpoint_write_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, code):
    run = tmp_path / "run"
    train(tiny_config(steps=2), run, progress=False)
    good = (run / CHECKPOINT).read_bytes()
    real_save = ckpt.save_file

    def refused(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)  # half a file is already on disk when the disk fills
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(code, f"{errno.errorcode[code]} (simulated)")

    monkeypatch.setattr(ckpt, "save_file", refused)
    with pytest.raises(UserError, match=r"cannot write .*checkpoint\.safetensors") as e:
        train(tiny_config(steps=4), run, resume=True, progress=False)
    assert "\n" not in str(e.value)
    assert (run / CHECKPOINT).read_bytes() == good
    assert load_training_state(run)["step"] == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary file, no lock


@contextlib.contextmanager
def _small_filesystem(path, size: str):
    """A tmpfs of ``size`` mounted on ``path`` (root on Linux only), or skip."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"ddpm-{uuid.uuid4().hex[:6]}", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_really_full_disk_ends_in_one_line_and_loses_nothing(tmp_path):
    """A real filesystem too small for the second checkpoint (the first fits)."""
    probe = tmp_path / "probe"
    train(tiny_config(steps=2), probe, progress=False)
    first = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    with _small_filesystem(tmp_path / "small", f"{first + (probe / CHECKPOINT).stat().st_size // 2}") as disk:
        run = disk / "run"
        train(tiny_config(steps=2), run, progress=False)
        good = (run / CHECKPOINT).read_bytes()
        r = subprocess.run([sys.executable, "-m", "ddpm", "train", "--out", str(run), "--resume", "--steps", "4"],
                           capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and "No space left on device" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
        assert (run / CHECKPOINT).read_bytes() == good
        assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_a_read_only_folder_ends_in_one_line(tmp_path):
    with _small_filesystem(tmp_path / "ro", "1m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        r = subprocess.run([sys.executable, "-m", "ddpm", "train", "--out", str(disk / "run"), "--steps", "2"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "Read-only file system" in r.stderr, r.stderr


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    from ddpm.io import write_text_atomic

    (tmp_path / "plain.txt").write_text("x")
    write_text_atomic(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    # safetensors creates its file anew, with its own mode: the mode is set after writing
    from safetensors.torch import save_file

    from ddpm.io import atomic_write

    atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
    assert (tmp_path / "w.safetensors").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_a_logger_whose_package_is_missing_is_one_line(tmp_path, kind):
    pytest.importorskip("torch")
    try:
        __import__("torch.utils.tensorboard" if kind == "tensorboard" else "wandb")
        pytest.skip(f"{kind} is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match=f"--logger {kind} needs the {kind} package"):
        train(tiny_config(logger=kind), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_skipped_steps_do_not_poison_the_loss_aware_sampler_or_the_logs(tmp_path):
    cfg = tiny_config(steps=6, batch_size=4, log_every=1)
    cfg.diffusion.timestep_sampler = "loss_aware"
    train(cfg, tmp_path / "run", data=_digits(poison=slice(0, 300)), progress=False)
    state = load_training_state(tmp_path / "run")
    assert int(state["extra"]["skipped_steps"]) > 0
    history = state["extra"]["timestep_sampler.history"]
    assert torch.isfinite(history).all()
    for record in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()):
        assert all(math.isfinite(v) for k, v in record.items() if k.startswith("loss")), record


def test_a_run_that_fails_after_logging_keeps_its_folder(tmp_path):
    with pytest.raises(NonFiniteError):
        train(tiny_config(steps=40, max_nonfinite_steps=3, log_every=1, checkpoint_every=100), tmp_path / "run",
              data=_digits(poison=slice(None)), progress=False)
    assert (tmp_path / "run" / "log.jsonl").stat().st_size > 0  # what it logged is kept for the post-mortem


def test_a_config_saved_before_flip_existed_does_not_start_flipping():
    from ddpm.config import RunConfig, flips

    d = tiny_config().to_dict()
    d["train"]["data"] = "cifar10"
    del d["train"]["flip"]
    assert not flips(RunConfig.from_dict(d).train)
