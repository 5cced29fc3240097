"""Text-to-image end to end on tiny settings: a captioned folder, a text run, prompts; a latent run that keeps
its autoencoder and decodes its samples.

The captioned folder is made here from scikit-learn's digits (captions such as "a three"), so these tests
need nothing from ../shared/data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ddpm.cli import main
from ddpm.pipeline import load_run
from ddpm.sampling.noise import seed_generators

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TINY = ["--preset", "digits", "--image-size", "8,8", "--base-channels", "16", "--num-heads", "2",
        "--norm-groups", "8", "--num-res-blocks", "1", "--timesteps", "20", "--batch-size", "8",
        "--warmup-steps", "2", "--sample-every", "0", "--checkpoint-every", "2", "--log-every", "2",
        "--device", "cpu", "--precision", "fp32", "--text-width", "16", "--text-layers", "1", "-q"]


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> Path:
    """64 digits as PNGs with a metadata.jsonl captioning each ("a three")."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("captioned")
    d = load_digits()
    lines = []
    for i in range(64):
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(root / f"{i:03d}.png")
        lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": f"a {WORDS[d.target[i]]}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def text_run(captioned, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("text") / "run"
    assert main(["train", "--data", str(captioned), "--text-encoder", "trained", "--steps", "4", "--out", str(run),
                 *TINY]) == 0
    return run


def test_a_text_run_builds_its_vocabulary_and_draws_prompts(text_run, tmp_path):
    cfg = json.loads((text_run / "config.json").read_text())
    assert set(cfg["model"]["vocabulary"]) == {"a", *WORDS}  # from the captions, saved with the run
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(text_run), "--prompt", "a three", "--n", "3", "--steps", "4",
                 "--guidance", "2", "--out", str(out), "-q"]) == 0
    assert json.loads((out / "prompts.json").read_text()) == ["a three"] * 3
    assert np.load(out / "samples.npz")["arr_0"].shape == (3, 8, 8, 1)


def test_a_prompts_file_gives_one_grid_row_per_prompt(text_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a one\n\na seven\n")
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(text_run), "--prompts-file", str(prompts), "--n", "3", "--steps", "4",
                 "--out", str(out), "-q"]) == 0
    assert json.loads((out / "prompts.json").read_text()) == ["a one"] * 3 + ["a seven"] * 3
    with Image.open(out / "grid.png") as grid:
        cols, rows = grid.size
    assert rows < cols  # two rows of three


def test_a_sample_depends_on_its_prompt_and_seed_only(text_run):
    run = load_run(text_run)
    one = run.sample(1, generator=seed_generators([5]), progress=False, y=["a three"], timesteps=[19, 10, 0])
    two = run.sample(3, generator=seed_generators([4, 5, 6]), progress=False, y=["a one", "a three", "a two"],
                     timesteps=[19, 10, 0])
    torch.testing.assert_close(one[0], two[1], rtol=1e-5, atol=1e-5)
    other = run.sample(1, generator=seed_generators([5]), progress=False, y=["a nine"], timesteps=[19, 10, 0])
    assert not torch.allclose(one, other)


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a zebra"], "word 'zebra'"),
    (["--guidance", "2"], "needs a prompt"),
    (["--class", "3"], "conditioned on text"),
    (["--prompts-file", "missing.txt"], "cannot read prompts file"),
])
def test_prompt_mistakes_are_one_line_errors(text_run, tmp_path, capsys, args, message):
    assert main(["sample", "--checkpoint", str(text_run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s"),
                 *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_text_run_resumes_to_the_weights_of_an_uninterrupted_one(captioned, tmp_path):
    base = ["train", "--data", str(captioned), "--text-encoder", "trained", *TINY]
    assert main([*base, "--steps", "4", "--out", str(tmp_path / "full")]) == 0
    assert main([*base, "--steps", "2", "--out", str(tmp_path / "cut")]) == 0
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--steps", "4", "-q"]) == 0
    a, b = load_file(tmp_path / "full" / "ema.safetensors"), load_file(tmp_path / "cut" / "ema.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_text_model_on_uncaptioned_data_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--text-encoder", "trained", "--steps", "2",
                 "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs captions" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> Path:
    ae = tmp_path_factory.mktemp("ae") / "ae"
    assert main(["train-autoencoder", "--data", "digits", "--image-size", "8,8", "--factor", "2", "--latent-channels",
                 "2", "--base-channels", "16", "--norm-groups", "8", "--steps", "4", "--batch-size", "8",
                 "--holdout", "16", "--sample-every", "0", "--device", "cpu", "--out", str(ae), "-q"]) == 0
    return ae


def test_a_latent_run_keeps_its_autoencoder_and_samples_decoded_images(autoencoder, tmp_path, capsys):
    src = tmp_path / "ae"
    shutil.copytree(autoencoder, src)
    run = tmp_path / "latent"
    assert main(["train", "--data", "digits", "--autoencoder", str(src), "--steps", "4", "--out", str(run),
                 *TINY[:2], *TINY[4:]]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["image_size"] == [4, 4] and cfg["model"]["in_channels"] == 2
    assert cfg["model"]["attention_resolutions"] == [2]  # the preset's 4, divided by the factor 2
    assert cfg["diffusion"]["clip_x0"] is False
    shutil.rmtree(src)  # the run is self-contained
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(run), "--n", "3", "--steps", "4", "--sampler", "ddim",
                 "--out", str(out), "-q"]) == 0
    assert np.load(out / "samples.npz")["arr_0"].shape == (3, 8, 8, 1)  # decoded: the images' size
    r = load_run(run)
    assert r.shape == (2, 4, 4) and r.image_shape == (1, 8, 8)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--metrics", "nll", "--n", "4", "--out",
                 str(tmp_path / "e.json")]) == 2
    assert "latent bits/dim" in capsys.readouterr().err


def test_a_latent_run_resumes_exactly(autoencoder, tmp_path):
    base = ["train", "--data", "digits", "--autoencoder", str(autoencoder), "--flip", *TINY[:2], *TINY[4:]]
    assert main([*base, "--steps", "4", "--out", str(tmp_path / "full")]) == 0
    assert main([*base, "--steps", "2", "--out", str(tmp_path / "cut")]) == 0
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--steps", "4", "-q"]) == 0
    a, b = load_file(tmp_path / "full" / "ema.safetensors"), load_file(tmp_path / "cut" / "ema.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
