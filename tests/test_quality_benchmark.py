"""benchmarks/quality.py (the quality tables of issues 2-4): the whole benchmark on a tiny run, and the
peers built at every data set's shape train and sample there (those need the `bench` extra)."""

import importlib.util
import json

import pytest
import torch

from tests.conftest import REPO, tiny_config


def load_benchmark():
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    from ddpm.training.loop import train

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    return train(tiny_config(), tmp_path / "run", progress=False)


def test_ours_row_and_real_floor_on_a_tiny_run(tiny_run, tmp_path):
    q = load_benchmark()
    out = tmp_path / "bench"
    result = q.main(["--models", "ours", "--ours", str(tiny_run), "--n", "16", "--out", str(out)])
    rows = result["rows"]
    assert set(rows) == {"real", "ours"}
    # n real digits against all 1,797: a small distance; 20-step samples of a 4-step model: a larger one.
    assert 0 <= rows["real"]["fid"] < rows["ours"]["fid"]
    assert rows["ours"]["steps"] == 4 and rows["ours"]["sample_images_per_s"] > 0
    assert set(result["targets"]) == {"confident_share >= 0.9", "class_entropy >= 0.97"}  # no peer row: no ratio
    # Rows of an earlier run join a later one with the same budget, n and sampler; other settings refuse.
    again = q.main(["--models", "ours", "--ours", str(tiny_run), "--n", "16", "--out", str(tmp_path / "b2"),
                    "--reuse", str(out / "results.json")])
    assert again["rows"]["ours"]["fid"] == rows["ours"]["fid"]
    with pytest.raises(SystemExit):
        q.main(["--models", "real", "--ours", str(tiny_run), "--n", "8", "--out", str(tmp_path / "b3"),
                "--reuse", str(out / "results.json")])
    assert json.loads((out / "results.json").read_text())["rows"]["ours"]["fid"] == rows["ours"]["fid"]
    assert "| ours |" in (out / "results.md").read_text() and (out / "ours.png").stat().st_size > 0
    assert rows["real"]["images"] == "16 of 1797" and "| real (16 of 1797) |" in (out / "results.md").read_text()


@pytest.mark.parametrize("data,shape", [("digits", (1, 8, 8)), ("mnist", (1, 28, 28))])
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_peers_train_and_sample_at_the_data_sets_shape(data, shape, sampler):
    """Every peer row (ours' recipe and its own defaults) trains a few steps and (DDIM, 3 steps) samples
    images in [-1, 1] of the data set's shape."""
    pytest.importorskip("diffusers")
    pytest.importorskip("denoising_diffusion_pytorch")
    from dataclasses import asdict

    from ddpm.presets import make_config, preset_for_data

    q = load_benchmark()
    args = q.parse_args(["--data", data, "--sampler", sampler, "--steps", "3"])
    preset = make_config(preset_for_data(data))
    images = torch.rand(32, *shape) * 2 - 1
    for name, (make, own) in q.PEERS.items():
        torch.manual_seed(0)
        model, params, loss_fn, sample, own_recipe = make(args, torch.device("cpu"), shape, asdict(preset.model),
                                                          own=own)
        recipe = own_recipe(model) if own else q.ours_recipe(model, asdict(preset.train))
        assert params > 0 and recipe.batch_size == (16 if own else preset.train.batch_size)
        ema, info = q.train_peer(name, model, loss_fn, images, 0.5, 0, recipe)
        assert info["steps"] >= 1 and ema is not model
        if sampler == "ddim":  # 3 steps: seconds (ancestral sampling always takes all 1,000)
            with torch.inference_mode():
                x = sample(ema, 2, seed=0)
            assert x.shape == (2, *shape) and x.abs().max() <= 1 + 1e-5, name


@pytest.mark.slow
def test_whole_benchmark_with_peers_on_a_tiny_run(tiny_run, tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("denoising_diffusion_pytorch")
    q = load_benchmark()
    result = q.main(["--ours", str(tiny_run), "--budget", "2", "--n", "8", "--sampler", "ddim", "--steps", "4",
                     "--out", str(tmp_path / "bench")])
    assert list(result["rows"]) == ["real", "ours", "lucidrains", "diffusers", "lucidrains-own", "diffusers-own"]
    assert all(r["steps"] > 0 for k, r in result["rows"].items() if k != "real")
    assert {"fid <= 0.5 x best peer (ours' recipe)", "fid <= 0.5 x best peer (their own defaults)"} <= set(
        result["targets"])
