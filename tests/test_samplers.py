"""DDIM, DDIM inversion and DPM-Solver++(2M), ODE and SDE: identities, convergence on an exact denoiser,
the grid convention, and the CLI (``ddpm sample --sampler``, ``ddpm encode``) on a tiny run."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ddpm.cli import main as ddpm_main
from ddpm.diffusion.schedule import make_schedule
from ddpm.pipeline import Run, SamplingOptions, build_model, load_run
from ddpm.sampling import SAMPLERS
from ddpm.sampling.ancestral import sample_ancestral
from ddpm.sampling.ddim import ddim_invert, sample_ddim
from ddpm.sampling.dpm_solver import sample_dpmpp_2m, sample_dpmpp_2m_sde
from ddpm.sampling.grids import timestep_grid
from ddpm.sampling.noise import seed_generators
from ddpm.training.loop import train
from tests.conftest import tiny_config
from tests.test_sampling_core import gaussian_denoiser

# The toy problem: data N(MU, S2 I) in 4 dimensions, so E[x0 | x_t] is exact (gaussian_denoiser) and the
# probability-flow ODE is known in closed form: z = (x_t - a_t MU) / r_t, r_t = sqrt(a_t^2 S2 + sigma_t^2),
# stays constant along it (d(x/a - MU)/d(sigma/a) = eps = (sigma/a) (x/a - MU) / (S2 + (sigma/a)^2)).
MU = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=torch.float64)
S2 = 0.25


def radius(schedule, t):
    a, s = schedule.sqrt_alphas_cumprod[t].item(), schedule.sqrt_one_minus_alphas_cumprod[t].item()
    return a, (a * a * S2 + s * s) ** 0.5


def exact_sample(schedule, x_T):
    """What the samplers approximate: the exact ODE from T-1 down to t = 0, then x0_hat there (the last call)."""
    a_T, r_T = radius(schedule, schedule.num_timesteps - 1)
    a_0, r_0 = radius(schedule, 0)
    z = (x_T - a_T * MU) / r_T
    return MU + a_0 * S2 / r_0 * z


def exact_latent(schedule, x0):
    """The exact ODE from clean data (sigma = 0, r = sqrt(S2)) up to T-1."""
    a_T, r_T = radius(schedule, schedule.num_timesteps - 1)
    return a_T * MU + r_T * (x0 - MU) / S2**0.5


@pytest.fixture(scope="module")
def toy():
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(256, 4, generator=g, dtype=torch.float64)
    x0 = MU + S2**0.5 * torch.randn(256, 4, generator=g, dtype=torch.float64)
    return s, gaussian_denoiser(s, MU, S2), x_T, x0


def max_err(a, b):
    return (a - b).abs().max().item()


def tiny_denoiser(prediction="eps", T=20):
    cfg = tiny_config()
    cfg.diffusion.timesteps = T
    cfg.diffusion.prediction = prediction
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    return cfg, Run.of(model, cfg).denoiser()


# --- identities --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [None, 7])
def test_ddim_eta1_equals_ancestral_with_beta_tilde(steps):
    """Song et al. Eq. 16 with eta = 1 is beta-tilde of each grid step, and the means agree (Eq. 12 vs
    Ho et al. Eq. 7), so with the same noise draws both samplers give the same images."""
    cfg, denoise = tiny_denoiser("v")
    s = denoise.schedule
    grid = timestep_grid(s.num_timesteps, steps)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    anc = sample_ancestral(denoise, x_T, s, grid, variance="beta_tilde", generator=seed_generators([4, 5, 6]),
                           progress=False)
    ddim = sample_ddim(denoise, x_T, s, grid, eta=1.0, generator=seed_generators([4, 5, 6]), progress=False)
    assert max_err(anc, ddim) < 1e-5
    assert max_err(anc, x_T) > 0.1  # the comparison is not vacuous


def test_deterministic_samplers_draw_no_noise():
    cfg, denoise = tiny_denoiser()
    s = denoise.schedule
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for sampler, opts in ((sample_ddim, {"eta": 0.0}), (sample_dpmpp_2m, {})):
        g = torch.Generator().manual_seed(3)
        state = g.get_state()
        a = sampler(denoise, x_T, s, timestep_grid(20, 6), generator=g, progress=False, **opts)
        b = sampler(denoise, x_T, s, timestep_grid(20, 6), generator=torch.Generator().manual_seed(9),
                    progress=False, **opts)
        assert torch.equal(a, b)
        assert torch.equal(g.get_state(), state)


def test_first_order_dpm_solver_pp_is_ddim(toy):
    """Lu et al. (2022): the first-order DPM-Solver++ update is DDIM. With 3 grid points (< 15) both steps are
    first-order (no history, then lower-order final), so the two samplers must agree."""
    s, denoise, x_T, _ = toy
    grid = timestep_grid(1000, 3)
    assert max_err(sample_dpmpp_2m(denoise, x_T, s, grid, progress=False),
                   sample_ddim(denoise, x_T, s, grid, progress=False)) < 1e-12


# --- convergence on the exact denoiser ----------------------------------------------------------------


def test_ddim_and_dpm_solver_converge_to_the_exact_ode_solution(toy):
    s, denoise, x_T, _ = toy
    ref = exact_sample(s, x_T)
    ks = (10, 20, 40, 80)
    ddim, dpm = [], []
    for k in ks:
        grid = timestep_grid(1000, k, "logsnr", schedule=s)
        ddim.append(max_err(sample_ddim(denoise, x_T, s, grid, progress=False), ref))
        dpm.append(max_err(sample_dpmpp_2m(denoise, x_T, s, grid, progress=False), ref))
    assert all(p < d for p, d in zip(dpm, ddim)), (dpm, ddim)
    # DDIM is first order: halving the log-SNR step halves the error.
    for e1, e2 in zip(ddim, ddim[1:]):
        assert 1.6 < e1 / e2 < 2.5, ddim
    # DPM-Solver++(2M) is second order: the error falls about 4x per halving (from 20 steps, where every
    # step but the first is second-order).
    for e1, e2 in zip(dpm[1:], dpm[2:]):
        assert e1 / e2 > 3.0, dpm
    # On the full grid what is left is the first / second order error of the training grid's own steps.
    full_ddim = max_err(sample_ddim(denoise, x_T, s, progress=False), ref)
    full_dpm = max_err(sample_dpmpp_2m(denoise, x_T, s, progress=False), ref)
    assert full_ddim < ddim[0] / 50 and full_dpm < dpm[0] / 50 and full_dpm < full_ddim


def test_both_converge_on_the_even_grid_too(toy):
    s, denoise, x_T, _ = toy
    ref = exact_sample(s, x_T)
    ddim, dpm = [], []
    for k in (80, 320, 1000):
        grid = timestep_grid(1000, k, "even")
        ddim.append(max_err(sample_ddim(denoise, x_T, s, grid, progress=False), ref))
        dpm.append(max_err(sample_dpmpp_2m(denoise, x_T, s, grid, progress=False), ref))
    assert ddim == sorted(ddim, reverse=True) and dpm == sorted(dpm, reverse=True)
    assert all(p < d for p, d in zip(dpm, ddim)), (dpm, ddim)


def test_inversion_converges_and_sampling_reconstructs_the_input(toy):
    s, denoise, _, x0 = toy
    latent_err, recon_err = [], []
    for k in (10, 40, 160, 1000):
        grid = timestep_grid(1000, k)
        x_T = ddim_invert(denoise, x0, s, grid, progress=False)
        latent_err.append(max_err(x_T, exact_latent(s, x0)))
        recon_err.append(max_err(sample_ddim(denoise, x_T, s, grid, progress=False), x0))
    assert latent_err == sorted(latent_err, reverse=True) and recon_err == sorted(recon_err, reverse=True)
    # First order in the step: 100x more steps, about 100x less error.
    assert latent_err[-1] < latent_err[0] / 30 and recon_err[-1] < recon_err[0] / 30
    assert recon_err[-1] < 0.01 * S2**0.5 * 4  # a small fraction of the data's spread (4 std)


# --- the grid convention ---------------------------------------------------------------------------


class RecordingModel(torch.nn.Module):
    """An eps-model that predicts zero noise and records every timestep it is called with."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, y=None):
        self.calls.append(t.tolist())
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("steps, grid", [(None, None), (6, "even"), (6, "quadratic"), (6, "logsnr"), (19, "logsnr")])
def test_first_network_call_sees_pure_noise_and_the_grid_ends_at_zero(sampler, steps, grid):
    cfg = tiny_config()
    T = cfg.diffusion.timesteps
    model = RecordingModel()
    Run.of(model, cfg).sample(2, sampling=SamplingOptions(sampler, steps=steps, grid=grid), progress=False,
                              generator=torch.Generator().manual_seed(0))
    seen = [c[0] for c in model.calls]
    assert all(len(set(c)) == 1 for c in model.calls)
    assert seen[0] == T - 1 and seen[-1] == 0
    assert len(seen) == (steps or T) and seen == sorted(set(seen), reverse=True)


def test_inversion_walks_the_same_grid_upwards(toy):
    s, denoise, _, x0 = toy
    seen = []
    grid = timestep_grid(1000, 8, "logsnr", schedule=s)
    ddim_invert(denoise, x0, s, grid, callback=lambda step: seen.append(step.t), progress=False)
    assert seen == grid[::-1] and seen[-1] == 999 and seen[0] == 0


def test_trailing_grid_starts_at_T_minus_1_and_steps_by_T_over_K():
    assert timestep_grid(1000, 10, "trailing") == list(range(999, 0, -100))  # diffusers' "trailing", 999 ... 99
    assert timestep_grid(1000, 1000, "trailing") == timestep_grid(1000)
    grid = timestep_grid(1000, 3, "trailing")
    assert grid == [999, 666, 332]  # round(1000 - i * 1000 / 3) - 1


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_logsnr_grid_starts_at_T_minus_1_and_ends_at_0(schedule):
    s = make_schedule(schedule, 1000)
    for k in (2, 12, 200, 999):
        grid = timestep_grid(1000, k, "logsnr", schedule=s)
        assert grid[0] == 999 and grid[-1] == 0 and len(set(grid)) == k and grid == sorted(grid, reverse=True)


def test_logsnr_grid_is_uniform_in_log_snr():
    # (Linear schedule: the cosine one's clipped last beta makes lambda jump by 6.9 in its last step, which
    # no grid of training steps can space evenly.)
    s = make_schedule("linear", 1000)
    lam = s.log_snr().numpy()
    grid = timestep_grid(1000, 12, "logsnr", schedule=s)
    gaps = np.diff(lam[grid])
    even_gaps = np.diff(lam[timestep_grid(1000, 12, "even")])
    assert gaps.std() / gaps.mean() < 0.1 < even_gaps.std() / even_gaps.mean()


# --- the CLI on a tiny run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tiny_config(), tmp_path_factory.mktemp("samplers") / "run", progress=False)


@pytest.mark.parametrize("args", [["--sampler", "ddim", "--steps", "5"],
                                  ["--sampler", "ddim", "--steps", "5", "--eta", "1"],
                                  ["--sampler", "dpm++2m", "--steps", "5", "--grid", "logsnr"],
                                  ["--sampler", "dpm++2m-sde", "--steps", "5"]])
def test_cli_sample_with_fast_samplers(tiny_run, tmp_path, args, capsys):
    out = tmp_path / "s"
    assert ddpm_main(["sample", "--checkpoint", str(tiny_run), "--n", "3", "--out", str(out), *args]) == 0
    arr = np.load(out / "samples.npz")["arr_0"]
    assert arr.shape == (3, 8, 8, 1) and (out / "grid.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--sampler", "dpm++2m", "--eta", "0.5"], "eta applies to sampler ddim"),
    (["--sampler", "ddim", "--eta", "2"], "eta must be between 0 and 1"),
    (["--sampler", "ddim", "--variance", "beta"], "variance applies to sampler ancestral"),
    (["--sampler", "ddim", "--steps", "50"], "steps must be between 1 and 20"),
])
def test_cli_sample_refuses_meaningless_options(tiny_run, tmp_path, args, message, capsys):
    assert ddpm_main(["sample", "--checkpoint", str(tiny_run), "--n", "1", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_encode_data_and_image(tiny_run, tmp_path):
    out = tmp_path / "enc"
    assert ddpm_main(["encode", "--checkpoint", str(tiny_run), "--data", "digits", "--n", "4", "--steps", "5",
                      "--out", str(out)]) == 0
    assert (out / "encode.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    saved = load_file(str(out / "latents.safetensors"))
    assert saved["x_T"].shape == (4, 1, 8, 8) and metrics["timesteps"][0] == 19 and metrics["timesteps"][-1] == 0
    # The reported MSE is that of decoding the saved latents again with DDIM (eta = 0) on the same grid.
    run = load_run(tiny_run)
    recon = sample_ddim(run.denoiser(), saved["x_T"], run.schedule, metrics["timesteps"],
                        progress=False)
    assert math.isclose(metrics["mse"], (recon - saved["x0"]).pow(2).mean().item(), rel_tol=1e-4)

    png = tmp_path / "digit.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(png)
    assert ddpm_main(["encode", "--checkpoint", str(tiny_run), "--image", str(png), "--steps", "4",
                      "--out", str(tmp_path / "one")]) == 0
    assert load_file(str(tmp_path / "one" / "latents.safetensors"))["x0"].shape == (1, 1, 8, 8)


# --- SDE-DPM-Solver++(2M) ---------------------------------------------------------------------------


def test_first_order_sde_dpm_solver_pp_is_ddim_with_eta_1(toy):
    """Its first-order step is the posterior step between the two grid points, i.e. DDIM with eta = 1: on
    3 grid points both steps are first-order, so with the same noise draws the samplers agree."""
    s, denoise, x_T, _ = toy
    grid = timestep_grid(1000, 3)
    sde = sample_dpmpp_2m_sde(denoise, x_T, s, grid, generator=torch.Generator().manual_seed(2), progress=False)
    ddim = sample_ddim(denoise, x_T, s, grid, eta=1.0, generator=torch.Generator().manual_seed(2), progress=False)
    assert max_err(sde, ddim) < 1e-12
    assert max_err(sde, sample_dpmpp_2m(denoise, x_T, s, grid, progress=False)) > 0.1  # it did draw noise


def test_sde_dpm_solver_pp_samples_the_data_distribution(toy):
    """On the exact Gaussian problem the output distribution approaches N(MU, S2 I) as steps grow: its
    moments over 20,000 draws, against the closed form (the standard error of the variance is ~0.003)."""
    s, denoise, _, _ = toy
    x_T = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errors = []
    for k in (10, 200):
        x = sample_dpmpp_2m_sde(denoise, x_T, s, timestep_grid(1000, k), progress=False,
                                generator=torch.Generator().manual_seed(6))
        errors.append(max((x.mean(0) - MU).abs().max().item(), (x.var(0) - S2).abs().max().item()))
    assert errors[1] < 0.01 and errors[0] > 0.05  # 10 steps: variance off by ~0.12; 200: ~0.003


def test_sde_dpm_solver_pp_is_seeded():
    cfg, denoise = tiny_denoiser()
    s = denoise.schedule
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    run = lambda seed: sample_dpmpp_2m_sde(denoise, x_T, s, timestep_grid(20, 6), progress=False,  # noqa: E731
                                           generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
