"""Pictures of the processes: slerp, forward strips, trajectories, interpolation, and every picture command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.diffusion.schedule import make_schedule
from ddpm.errors import UserError
from ddpm.pipeline import SamplingOptions, load_run
from ddpm.pipeline.interpolation import grid_from, interpolate_images, interpolate_seeds, slerp
from ddpm.sampling.ancestral import sample_ancestral
from ddpm.sampling.grids import timestep_grid
from ddpm.sampling.noise import randn, seed_generators
from ddpm.training.loop import train
from ddpm.viz.figures import resolve_steps
from ddpm.viz.plots import save_loss_plot, schedule_curves
from ddpm.viz.process import TrajectoryRecorder, forward_strip, nearest_on_grid
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tiny_config(), tmp_path_factory.mktemp("viz") / "run", progress=False)


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    # Orthogonal unit vectors: every point has norm 1 and makes the angle lambda * pi/2 with a.
    e1, e2 = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    for lam in (0.1, 0.3, 0.5, 0.9):
        p = slerp(e1, e2, lam)
        assert abs(float(p.norm()) - 1.0) < 1e-6
        assert abs(float((p * e1).sum()) - math.cos(lam * math.pi / 2)) < 1e-6
    # Parallel inputs fall back to a straight line instead of dividing by sin(0).
    assert torch.allclose(slerp(e1, 2 * e1, 0.5), 1.5 * e1)


def test_resolve_steps_zero_based_with_T_alias():
    assert resolve_steps([0, 5, 1000, 999], 1000) == [0, 5, 999]
    with pytest.raises(UserError, match="0-based"):
        resolve_steps([1001], 1000)
    # Off-grid steps move to the nearest grid step; a tie goes to the noisier one.
    assert nearest_on_grid([999, 500, 450, 0], [999, 600, 400, 0]) == [999, 600, 400, 0]


def test_forward_strip_is_eq4_with_one_noise_per_image():
    s = make_schedule("cosine", 100)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    strip = forward_strip(x0, s, [0, 50, 99], torch.Generator().manual_seed(3))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    for j, t in enumerate([0, 50, 99]):
        abar = float(s.alphas_cumprod[t])
        assert torch.allclose(strip[:, j], math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps, atol=1e-6)


def test_schedule_curves_are_the_models_tables():
    s = make_schedule("linear", 1000)
    c = schedule_curves("linear", 1000)
    assert (c["beta"] == s.betas.numpy()).all()
    assert abs(c["signal"][-1] ** 2 + c["noise"][-1] ** 2 - 1) < 1e-12


def test_interpolate_images_endpoints_follow_each_sources_reverse_path(tiny_run):
    run = load_run(tiny_run)
    cfg, T = run.config, run.schedule.num_timesteps
    g = torch.Generator().manual_seed(1)
    x_a, x_b = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1, torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    out = interpolate_images(run, x_a, x_b, [0, 12], [0.0, 0.5, 1.0], seed=7)
    assert out.shape == (2, 3, 1, 8, 8)
    denoise = run.denoiser()
    eps = randn(x_a.shape, torch.Generator().manual_seed(7), "cpu")
    for row, t in enumerate([0, 12]):
        for col, x in ((0, x_a), (2, x_b)):
            x_t = run.schedule.sqrt_alphas_cumprod[t].float() * x + run.schedule.sqrt_one_minus_alphas_cumprod[t].float() * eps
            ref = sample_ancestral(denoise, x_t, run.schedule, list(range(t, -1, -1)),
                                   variance=cfg.diffusion.variance, generator=seed_generators([8]), progress=False)
            assert torch.allclose(out[row, col], ref[0], atol=1e-5)
    # From t = 0 the reverse process is one step that returns the model's x0 (z = 0 at the last step).
    x_0 = run.schedule.sqrt_alphas_cumprod[0].float() * x_a + run.schedule.sqrt_one_minus_alphas_cumprod[0].float() * eps
    with torch.no_grad():
        assert torch.allclose(out[0, 0], denoise(x_0, 0).x0[0], atol=1e-5)
    assert grid_from(12, T) == list(range(12, -1, -1)) and grid_from(12, T, 5)[0] == 12


def test_seed_interpolation_starts_at_the_seeds_sample(tiny_run):
    run = load_run(tiny_run)
    row = interpolate_seeds(run, 3, 4, [0.0, 0.5, 1.0], progress=False)
    alone = run.sample(1, generator=seed_generators([3]), progress=False)
    assert torch.allclose(row[0], alone[0], atol=1e-5)
    # Deterministic DDIM: both ends are their seeds' samples.
    ddim = SamplingOptions("ddim", steps=5)
    row = interpolate_seeds(run, 3, 4, [0.0, 1.0], sampling=ddim, progress=False)
    ends = run.sample(2, generator=seed_generators([3, 4]), sampling=ddim, progress=False)
    assert torch.allclose(row, ends, atol=1e-5)


def test_trajectory_recorder_sees_x_T_and_the_output(tiny_run):
    run = load_run(tiny_run)
    T = run.schedule.num_timesteps
    grid = timestep_grid(T)
    rec = TrajectoryRecorder([T - 1, 0], grid, k=2)
    gens = seed_generators([0, 1])
    x = run.sample(2, generator=gens, callback=rec, progress=False)
    x_T = randn((2, 1, 8, 8), seed_generators([0, 1]), "cpu")
    assert torch.equal(rec.snapshots[T - 1][0], x_T)
    # At t = 0 the last step returns the predicted x0: the output itself.
    assert torch.allclose(rec.snapshots[0][1], x, atol=1e-6)


def test_loss_plot_from_log(tmp_path):
    assert save_loss_plot(tmp_path / "log.jsonl", tmp_path / "loss.png") is None
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1 / s}) for s in range(1, 6)) + "\n{")
    assert save_loss_plot(tmp_path / "log.jsonl", tmp_path / "loss.png") == tmp_path / "loss.png"
    assert Image.open(tmp_path / "loss.png").size[0] > 300


def test_picture_commands_write_their_files(tiny_run, tmp_path, capsys):
    assert (tiny_run / "loss.png").is_file()  # written by training at each checkpoint
    assert main(["schedule", "--timesteps", "50"]) == 0
    assert "cosine" in capsys.readouterr().out
    assert main(["schedule", "--plot", "--timesteps", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["forward", "--data", "digits", "--n", "2", "--t", "0,10,1000", "--out", str(tmp_path) + "/"]) == 0
    fwd = Image.open(tmp_path / "forward.png")
    assert fwd.size[0] > 4 * 64  # 4 columns of upscaled 8x8 digits
    assert main(["sample", "--checkpoint", str(tiny_run), "--n", "2", "--trajectory", "--trajectory-steps",
                 "20,10,0", "--out", str(tmp_path / "samples")]) == 0
    gif = Image.open(tmp_path / "samples" / "trajectory.gif")
    assert gif.n_frames == 21  # each of the 20 steps, then the output
    assert (tmp_path / "samples" / "trajectory.png").is_file()
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--rows", "1", "--lambdas", "0,0.5,1",
                 "--out", str(tmp_path / "seeds.png")]) == 0
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--mode", "images", "--t", "0,19",
                 "--lambdas", "0,1", "--out", str(tmp_path / "images.png")]) == 0
    for name in ("s.png", "seeds.png", "images.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_picture_commands_one_line_errors(tiny_run, tmp_path, capsys):
    assert main(["forward", "--data", "digits", "--t", "0,5000"]) == 2
    assert main(["schedule", "--out", str(tmp_path / "x")]) == 2
    assert main(["forward", "--data", "digits", "--out", str(tmp_path / "noext")]) == 2
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--lambdas", "0,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("ddpm ") for line in err)
