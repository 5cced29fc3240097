"""The pipeline's seams: flags come from the configs and registries, steps can be consumed one by one,
the option objects refuse what makes no sense, and old run folders still load."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from ddpm.cli import build_parser
from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, RuntimeConfig, TrainConfig
from ddpm.errors import UserError
from ddpm.pipeline import Run, SamplingOptions, build_model
from ddpm.sampling import SAMPLERS
from ddpm.sampling.grids import GRIDS
from tests.conftest import tiny_config


def subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", ["sample", "interpolate", "evaluate"])
def test_every_registered_sampler_and_grid_is_offered(command):
    p = subparser(command)
    assert option(p, "--sampler").choices == list(SAMPLERS)
    assert option(p, "--grid").choices == list(GRIDS)
    assert option(p, "--precision") and option(p, "--device")


def test_train_has_a_flag_for_every_config_field():
    p = subparser("train")
    for cls in (ModelConfig, DiffusionConfig, TrainConfig, RuntimeConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") is False:
                continue
            action = option(p, "--" + f.name.replace("_", "-"))
            assert action.dest == f.name and action.default is None
    assert option(p, "--schedule").choices == ["linear", "cosine"]


def test_steps_yield_every_call_and_end_with_the_sample():
    cfg = tiny_config()
    torch.manual_seed(0)
    run = Run.of(build_model(cfg.model), cfg)
    steps = run.steps(2, generator=torch.Generator().manual_seed(3), sampling=SamplingOptions("ddim", steps=4))
    assert len(steps) == 4
    seen = list(steps)
    assert [s.t for s in seen] == [19, 14, 9, 4] and [s.i for s in seen] == [0, 1, 2, 3]
    assert all(torch.equal(a.x_next, b.x_t) for a, b in zip(seen, seen[1:]))
    final = run.sample(2, generator=torch.Generator().manual_seed(3), sampling=SamplingOptions("ddim", steps=4))
    assert torch.equal(seen[-1].x_next, final) and torch.equal(seen[-1].x0, final)


def test_a_stopped_iteration_gives_the_model_its_mode_back():
    cfg = tiny_config()
    model = build_model(cfg.model).train()
    steps = Run.of(model, cfg).steps(1, sampling=SamplingOptions("ddim", steps=3))
    next(steps)
    assert not model.training  # dropout is off while sampling
    steps.close()
    assert model.training


@pytest.mark.parametrize("values, message", [
    (dict(sampler="euler"), "unknown sampler 'euler'"),
    (dict(sampler="ancestral", eta=0.5), "eta applies to sampler ddim"),
    (dict(sampler="ddim", eta=1.5), "eta must be between 0 and 1"),
    (dict(sampler="ddim", variance="beta"), "variance applies to sampler ancestral"),
    (dict(sampler="ancestral", variance="learned_range"), "variance must be one of beta, beta_tilde"),
    (dict(grid="cubic"), "unknown timestep grid 'cubic'"),
    (dict(steps=0), "steps must be positive"),
])
def test_sampling_options_refuse_what_makes_no_sense(values, message):
    with pytest.raises(UserError, match=message):
        SamplingOptions(**values)


def test_a_runtime_on_another_device_is_refused():
    """A CPU model asked to sample on CUDA: a one-line error (no GPU here, or the model is elsewhere)."""
    cfg = tiny_config()
    run = Run.of(build_model(cfg.model), cfg)
    with pytest.raises(UserError, match="cuda"):
        run.sample(1, runtime=RuntimeConfig(device="cuda"))


def test_configs_refuse_unknown_names_and_misspelt_fields():
    d = RunConfig().to_dict()
    d["diffusion"]["prediction"] = "score"
    with pytest.raises(UserError, match="unknown config.diffusion.prediction 'score'; choose one of eps, x0, v"):
        RunConfig.from_dict(d)
    with pytest.raises(AttributeError):
        RunConfig().train.precision = "fp32"  # a runtime option now: slots catch the old spelling


def test_a_config_file_from_before_the_runtime_section_still_reads(tmp_path):
    """[train] device / precision (where they lived before) land in [runtime]."""
    from ddpm.config import read_config_file

    path = tmp_path / "old.toml"
    path.write_text('[train]\nsteps = 3\ndevice = "cpu"\nprecision = "fp32"\n')
    values = read_config_file(path)
    assert values["train"] == {"steps": 3} and values["runtime"] == {"device": "cpu", "precision": "fp32"}


def test_cli_one_line_errors_for_a_bad_image_size_and_a_bad_device(tmp_path, capsys):
    from ddpm.cli import main

    assert main(["train", "--image-size", "28", "--steps", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "image_size (--image-size) must be a list of 2 numbers" in capsys.readouterr().err
    assert main(["train-classifier", "--device", "tpu", "--out", str(tmp_path / "c")]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_train_classifier_resolves_the_device_flag():
    from ddpm.cli.train_classifier import resolve_config

    args = subparser("train-classifier").parse_args(["--out", "x", "--device", "auto", "--epochs", "2"])
    cfg = resolve_config(args)
    assert cfg.device in ("cpu", "cuda:0") and cfg.epochs == 2
