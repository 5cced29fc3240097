"""benchmarks/solver_error.py: its closed-form ODE solution, its Gaussian cases and its model part on a tiny
trained run."""

import json

import torch

from ddpm.diffusion.schedule import make_schedule
from ddpm.training.loop import train
from tests.conftest import load_script, tiny_config
from tests.test_samplers import MU, S2, exact_sample


def test_exact_solution_is_the_samplers_tests_closed_form():
    module = load_script("benchmarks/solver_error.py")
    s = make_schedule("linear", 1000)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(module.MU, MU)
    assert torch.allclose(module.exact_solution(s, S2, x_T), exact_sample(s, x_T), atol=1e-12)


def test_solver_error_writes_both_parts(tmp_path):
    module = load_script("benchmarks/solver_error.py")
    run_dir = train(tiny_config(), tmp_path / "run", progress=False)
    T = tiny_config().diffusion.timesteps
    r = module.main(["--checkpoint", str(run_dir), "--n", "4",
                     "--calls", f"5,{T}", "--variances", "0.25", "--gaussian-steps", "10,20",
                     "--out", str(tmp_path / "out")])
    g = r["gaussian"]
    assert len(g["cases"]) + len(g["skipped"]) == 2 * 2 * 2  # schedules x grids x calls
    assert sum(g["counts"].values()) == len(g["cases"])
    assert all(c["max_error_first_order_last"] > 0 for c in g["cases"])
    rms = r["model"]["rms"]
    # On every timestep with a first-order last step, the setting is the reference itself.
    assert rms["even, first-order last step"][T] == 0.0
    assert rms["even, first-order last step"][5] > 0 and rms["even, second-order last step"][5] > 0
    # Against the reference with a second-order last step, the second-order setting on every timestep is it,
    # and the first-order one lies exactly the references' distance away.
    rms2, apart = r["model"]["rms_second_order_reference"], r["model"]["reference_distance"]
    assert rms2["even, second-order last step"][T] == 0.0
    assert apart > 0 and abs(rms2["even, first-order last step"][T] - apart) < 1e-6
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["command"].startswith("python benchmarks/solver_error.py --checkpoint")
    page = (tmp_path / "out" / "results.md").read_text()
    assert page.count("| 5 |") == 2 and "references lie" in page
