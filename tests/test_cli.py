"""End to end: train a tiny model, resume it, sample; and the one-line errors for user mistakes."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def ddpm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ddpm.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_train_resume_sample(tmp_path, tiny_config_file):
    run = tmp_path / "run"
    r = ddpm("train", "--config", tiny_config_file, "--steps", 3, "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = ddpm("train", "--config", tiny_config_file, "--steps", 5, "--out", run, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "samples"
    r = ddpm("sample", "--checkpoint", run, "--n", 5, "--seed", 3, "--batch-size", 2, "--out", out,
             "--variance", "beta_tilde")
    assert r.returncode == 0, r.stderr
    arr = np.load(out / "samples.npz")["arr_0"]
    assert arr.shape == (5, 8, 8, 1) and arr.dtype == np.uint8
    assert (out / "grid.png").is_file()
    assert np.array_equal(np.asarray(Image.open(out / "sample_00004.png")), arr[4, :, :, 0])
    # Sample i depends only on seed S + i: drawing seed 4 alone gives sample 1 again.
    r = ddpm("sample", "--checkpoint", run, "--n", 1, "--seed", 4, "--out", tmp_path / "one",
             "--variance", "beta_tilde")
    assert np.array_equal(np.load(tmp_path / "one" / "samples.npz")["arr_0"][0], arr[1])


@pytest.mark.parametrize("args, message", [
    (["sample", "--checkpoint", "/nonexistent/run"], "checkpoint not found"),
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "--steps", "0"], "--steps must be positive"),
    (["sample", "--checkpoint", ".", "--n", "-3"], "--n must be positive"),
    (["train", "--data", "nope"], "unknown data set"),
    (["train", "--config", "/nonexistent.toml"], "config file not found"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, args, message):
    r = ddpm(*args, "--out", tmp_path / "x") if args[0] == "train" else ddpm(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_impossible_image_size(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[model]\nimage_size = [10, 10]\nchannel_mult = [1, 2, 2]\n")
    r = ddpm("train", "--config", cfg, "--out", tmp_path / "x")
    assert r.returncode == 2 and "not divisible" in r.stderr and "Traceback" not in r.stderr


def test_every_command_ends_its_help_with_examples_that_parse():
    import shlex

    from ddpm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "\nexamples:\n" in text, name
        examples = [line.strip() for line in text.split("\nexamples:\n")[1].splitlines() if line.strip()]
        assert len(examples) >= 2, name
        assert text.rstrip().endswith(examples[-1]), name  # the examples are the end of the help
        for line in examples:
            argv = shlex.split(line)
            assert argv[0] == "ddpm", line
            parser.parse_args(argv[1:])  # every flag in an example exists


def test_quiet_silences_progress_messages_and_bars(tmp_path, capsys, monkeypatch):
    from ddpm.cli import main
    from ddpm.io import QUIET_ENV, progress_bar

    monkeypatch.setenv(QUIET_ENV, "")  # so that teardown removes what ddpm -q sets
    assert main(["forward", "--data", "digits", "--out", str(tmp_path / "a.png")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["forward", "--data", "digits", "--out", str(tmp_path / "b.png"), "-q"]) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "b.png").is_file()
    assert progress_bar(range(3)).disable  # quiet
    monkeypatch.delenv(QUIET_ENV)
    assert progress_bar(range(3)).disable  # stderr is not a terminal under pytest


def test_attention_resolutions_none_builds_a_network_without_attention():
    from ddpm.cli import build_parser
    from ddpm.cli.train import resolve_config
    from ddpm.models.unet import UNet

    args = build_parser().parse_args(["train", "--attention-resolutions", "none"])
    cfg = resolve_config(args)
    assert cfg.model.attention_resolutions == ()
    names = [type(m).__name__ for m in UNet(cfg.model).modules()]
    default = [type(m).__name__ for m in UNet(resolve_config(build_parser().parse_args(["train"])).model).modules()]
    # The middle block keeps its attention; the levels lose theirs.
    assert names.count("Attention") == 1 < default.count("Attention")
