"""Ho et al.'s published networks, in and out of diffusers' format.

diffusers' ``UNet2DModel`` is built from each published config (the 256 px one at reduced width for test
time), with random weights, saved as diffusers saves it (both folder layouts, and the .bin files of the
early google/ddpm-* repos with their old attention names), converted by ``ddpm convert``, and then must
compute what diffusers computes. The export must round-trip, and diffusers' own ``DDPMPipeline`` on an
export must draw what ``ddpm sample`` draws from the same noise.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ddpm.checkpoint import save_ema
from ddpm.cli import main
from ddpm.convert import OLD_ATTENTION_NAMES, model_config_from_diffusers
from ddpm.errors import UserError
from ddpm.models.unet import UNet
from ddpm.pipeline import load_run
from ddpm.presets import make_config
from tests.conftest import tiny_config

diffusers = pytest.importorskip("diffusers")

# The published configs (google/ddpm-cifar10-32; google/ddpm-{celebahq,church,bedroom,cat}-256 share one).
CIFAR10 = {
    "block_out_channels": [128, 256, 256, 256], "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                                     "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "sample_size": 32,
}
HQ256 = {
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, "sample_size": 256,
}
COMMON = {"act_fn": "silu", "attention_head_dim": None, "center_input_sample": False, "downsample_padding": 0,
          "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
          "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3,
          "time_embedding_type": "positional"}
SCHEDULER = {"beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
             "num_train_timesteps": 1000, "trained_betas": None}


def cli(*args) -> int:
    return main([str(a) for a in args])


def reduced(config: dict, divide: int) -> dict:
    """The config at 1/divide of its width (and as many fewer norm groups), for test time."""
    return {**config, "block_out_channels": [c // divide for c in config["block_out_channels"]],
            "norm_num_groups": 32 // divide}


def save_published(unet, scheduler_variance: str, folder, layout: str) -> None:
    """As diffusers saves it: a pipeline (unet/, scheduler/), the flat layout of the early repos, or that
    with a .bin of the old attention names."""
    scheduler = diffusers.DDPMScheduler(**SCHEDULER, variance_type=scheduler_variance)
    if layout == "pipeline":
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
        return
    unet.save_pretrained(folder)
    scheduler.save_pretrained(folder)
    if layout == "flat-bin":
        renamed = {v: k for k, v in OLD_ATTENTION_NAMES.items()}
        state = {}
        for key, value in unet.state_dict().items():
            parts = key.split(".")
            for new, old in renamed.items():
                n = len(new.split("."))
                if "attentions" in parts and ".".join(parts[-1 - n:-1]) == new:
                    key = ".".join([*parts[:-1 - n], old, parts[-1]])
            state[key] = value
        (folder / "diffusion_pytorch_model.safetensors").unlink()
        torch.save(state, folder / "diffusion_pytorch_model.bin")


@pytest.mark.parametrize("name, config, divide, variance, layout", [
    ("cifar10-32", CIFAR10, 1, "fixed_large", "pipeline"),
    ("256", HQ256, 8, "fixed_small", "flat"),
    ("256-bin", HQ256, 8, "fixed_small", "flat-bin"),
])
def test_published_networks_convert_and_compute_what_diffusers_computes(tmp_path, name, config, divide, variance,
                                                                        layout):
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**reduced({**COMMON, **config}, divide)).eval()
    save_published(theirs, variance, tmp_path / "hf", layout)
    assert cli("convert", "--from-diffusers", tmp_path / "hf", "--out", tmp_path / "run") == 0
    run = load_run(tmp_path / "run")
    assert run.config.diffusion.variance == {"fixed_large": "beta", "fixed_small": "beta_tilde"}[variance]
    assert run.config.diffusion.timesteps == 1000 and run.config.diffusion.schedule == "linear"
    size = config["sample_size"]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    for t in (0, 250, 999):
        tt = torch.full((1,), t)
        with torch.no_grad():
            torch.testing.assert_close(run.model(x, tt), theirs(x, tt).sample, rtol=0, atol=1e-5)

    # Out again: the same tensors under diffusers' names, and a config diffusers builds the same network from.
    assert cli("convert", "--to-diffusers", tmp_path / "run", "--out", tmp_path / "export") == 0
    back = diffusers.UNet2DModel.from_pretrained(tmp_path / "export" / "unet").eval()
    assert set(back.state_dict()) == set(theirs.state_dict())
    assert all(torch.equal(back.state_dict()[k], v) for k, v in theirs.state_dict().items())


def test_the_presets_are_the_published_networks():
    """ddpm-cifar10 and ddpm-256 are the networks of the published configs (dropout is a training setting)."""
    for preset, config in (("ddpm-cifar10", CIFAR10), ("ddpm-256", HQ256)):
        published = model_config_from_diffusers({**COMMON, **config})
        ours = make_config(preset).model
        assert dataclasses.replace(ours, dropout=0.0) == published
    assert sum(p.numel() for p in UNet(make_config("ddpm-cifar10").model).parameters()) == 35_746_307


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_pipeline_on_an_export_draws_what_ddpm_sample_draws(tmp_path, variance, capsys):
    """Our tiny digits network (scale-shift conditioning, two heads, symmetric padding) with T = 50: diffusers'
    DDPMPipeline and ``ddpm sample --seed 0`` start from the same noise and draw the same image."""
    cfg = tiny_config()
    cfg.diffusion.timesteps, cfg.diffusion.variance = 50, variance
    torch.manual_seed(0)
    save_ema(tmp_path / "run", cfg, 0, UNet(cfg.model).state_dict())
    assert cli("convert", "--to-diffusers", tmp_path / "run", "--out", tmp_path / "hf") == 0
    assert cli("sample", "--checkpoint", tmp_path / "run", "--n", 1, "--seed", 0, "--precision", "fp32",
               "--out", tmp_path / "ours") == 0
    ours = np.load(tmp_path / "ours" / "samples.npz")["arr_0"].astype(np.int32)  # uint8 (1, 8, 8, 1)

    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hf")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=50,
                  output_type="np").images  # float (1, 8, 8, 1) in [0, 1]
    theirs = np.clip(np.round(theirs * 255), 0, 255).astype(np.int32)
    assert np.abs(ours - theirs).max() <= 1  # uint8 rounding of float32 round-off
    assert ours.std() > 10  # an image, not a constant


@pytest.mark.parametrize("change, message", [
    ({"flip_sin_to_cos": True}, "flip_sin_to_cos=True has no equivalent"),
    ({"up_block_types": ["UpBlock2D"] * 4}, "does not mirror down_block_types"),
    ({"down_block_types": ["CrossAttnDownBlock2D"] * 4}, "'CrossAttnDownBlock2D' has no equivalent"),
])
def test_configs_that_do_not_map_are_one_line_errors(tmp_path, capsys, change, message):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**COMMON, **CIFAR10, **change}))
    (tmp_path / "hf" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    assert cli("convert", "--from-diffusers", tmp_path / "hf", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_weights_that_would_run_code_are_refused(tmp_path, capsys):
    """A .bin is read with torch.load(weights_only=True): a pickled object is refused, not run."""
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(reduced({**COMMON, **CIFAR10}, 8)))
    (tmp_path / "hf" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    torch.save({"conv_in.weight": Exploit()}, tmp_path / "hf" / "diffusion_pytorch_model.bin")
    assert cli("convert", "--from-diffusers", tmp_path / "hf", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "cannot read weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()


class Exploit:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def test_missing_config_keys_mean_what_they_mean_in_diffusers():
    """A key a config leaves out takes diffusers' default (UNet2DModel's signature), not Ho et al.'s value."""
    import inspect

    from ddpm.convert import UNET_DEFAULTS

    signature = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    for key, value in UNET_DEFAULTS.items():
        default = signature[key].default
        assert (tuple(default) if isinstance(default, (list, tuple)) else default) == value, key
    assert model_config_from_diffusers({**COMMON, **CIFAR10}).num_heads == 1
    without = {k: v for k, v in {**COMMON, **CIFAR10}.items() if k != "flip_sin_to_cos"}
    with pytest.raises(UserError, match="flip_sin_to_cos=True"):  # diffusers' default: a different embedding
        model_config_from_diffusers(without)


@pytest.mark.parametrize("change, message", [
    ({"variance_type": "learned"}, "variance_type='learned' has no equivalent"),
    ({"_class_name": "ScoreSdeVeScheduler"}, "not DDPM's"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"num_train_timesteps": "many"}, "cannot read the DDPMScheduler config"),
])
def test_schedulers_that_do_not_map_are_one_line_errors(tmp_path, capsys, change, message):
    torch.manual_seed(0)
    diffusers.UNet2DModel(**reduced({**COMMON, **CIFAR10}, 8)).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "scheduler_config.json").write_text(json.dumps({**SCHEDULER, **change}))
    assert cli("convert", "--from-diffusers", tmp_path / "hf", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_conditional_run_round_trips_with_its_no_label_row(tmp_path):
    cfg = tiny_config()
    cfg.model.num_classes = 10
    torch.manual_seed(0)
    model = UNet(cfg.model)
    save_ema(tmp_path / "run", cfg, 0, model.state_dict())
    assert cli("convert", "--to-diffusers", tmp_path / "run", "--out", tmp_path / "hf") == 0
    assert cli("convert", "--from-diffusers", tmp_path / "hf", "--out", tmp_path / "back") == 0
    back = load_run(tmp_path / "back")
    assert back.config.model.num_classes == 10
    assert all(torch.equal(back.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert cli("convert", "--from-diffusers", tmp_path / "hf", "--out", tmp_path / "back") == 2  # not over a run
