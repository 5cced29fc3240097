"""The KL autoencoder (LDM's first stage): shapes, the posterior against closed forms, diffusers' AutoencoderKL
against ours, LPIPS and the GAN terms against independent computations, the latent scale, and
``ddpm train-autoencoder`` end to end (a resumed run ends bit for bit where a straight one does)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm.cli import main
from ddpm.config import AutoencoderConfig, AutoencoderRunConfig
from ddpm.errors import UserError
from ddpm.models.autoencoder import Autoencoder, DiagonalGaussian, FirstStage
from ddpm.models.autoencoder_io import load_autoencoder, save_autoencoder
from ddpm.models.discriminator import NLayerDiscriminator, patch_side
from ddpm.models.perceptual import LPIPS, TAPS, load_lpips
from ddpm.training.autoencoder import latent_scale
from ddpm.training.autoencoder_loss import adaptive_weight, hinge_d_loss

TINY = dict(base_channels=16, norm_groups=8, num_res_blocks=1)


def tiny(factor: int = 2, size=(8, 8), channels: int = 1, **kw) -> Autoencoder:
    torch.manual_seed(0)
    levels = int(math.log2(factor)) + 1
    return Autoencoder(AutoencoderConfig(image_size=size, in_channels=channels, channel_mult=(1, 2, 2, 2)[:levels],
                                         **{**TINY, **kw}))


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_shapes_for_every_factor(factor):
    ae = tiny(factor, size=(16, 24), channels=3, latent_channels=3)
    x = torch.randn(2, 3, 16, 24)
    q = ae.encode(x)
    assert q.mean.shape == q.logvar.shape == (2, 3, 16 // factor, 24 // factor)
    assert ae.decode(q.sample()).shape == x.shape
    assert FirstStage(ae).latent_shape((3, 16, 24)) == (3, 16 // factor, 24 // factor)


def test_a_factor_the_image_size_does_not_divide_is_one_line():
    with pytest.raises(UserError, match="not divisible"):
        tiny(8, size=(12, 12))


def test_kl_against_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    q = DiagonalGaussian(mean, logvar)
    d = torch.distributions
    want = d.kl_divergence(d.Normal(mean, (0.5 * logvar).exp()), d.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), want)
    # A sample is mean + std * eps with eps from the generator.
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(q.sample(torch.Generator().manual_seed(7)), mean + (0.5 * logvar).exp() * eps)


def test_logvar_is_clamped_as_ldm():
    moments = torch.cat([torch.zeros(1, 2, 2, 2), torch.tensor([-1e3, 1e3]).repeat(4).view(1, 2, 2, 2)], 1)
    q = DiagonalGaussian.from_moments(moments)
    assert q.logvar.min() == -30 and q.logvar.max() == 20
    assert torch.isfinite(q.std).all() and (q.std > 0).all() and torch.isfinite(q.kl()).all()


def test_first_stage_scales_and_shifts_both_ways():
    ae = tiny().eval()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    stage = FirstStage(ae, scale=0.37, shift=0.25)
    with torch.no_grad():
        z = stage.encode(x)
        torch.testing.assert_close(z, (ae.encode(x).mode() - 0.25) * 0.37)
        torch.testing.assert_close(stage.decode(z), ae.decode(ae.encode(x).mode()), atol=1e-5, rtol=1e-5)
        sampled = stage.encode(x, torch.Generator().manual_seed(3))
        torch.testing.assert_close(sampled, (ae.encode(x).sample(torch.Generator().manual_seed(3)) - 0.25) * 0.37)


def test_latent_scale_gives_the_latents_unit_std():
    ae = tiny()
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    scale = latent_scale(ae, x, torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = FirstStage(ae, scale).encode(x, torch.Generator().manual_seed(5))
    assert abs(float(z.std()) - 1.0) < 1e-5


def test_our_format_round_trips(tmp_path):
    ae = tiny()
    cfg = AutoencoderRunConfig(model=ae.config, latent_scale=1.5, latent_shift=-0.1)
    save_autoencoder(tmp_path, FirstStage(ae), cfg)
    stage, loaded = load_autoencoder(tmp_path)
    assert loaded == cfg and (stage.scale, stage.shift) == (1.5, -0.1)
    for k, v in ae.state_dict().items():
        assert torch.equal(stage.autoencoder.state_dict()[k], v)
    with pytest.raises(UserError, match="not found"):
        load_autoencoder(tmp_path / "nothing")


# --- diffusers ---------------------------------------------------------------------------------------


def _diffusers_vae(tmp_path, **overrides):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    kw = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
              latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.3, shift_factor=0.1)
    vae = diffusers.AutoencoderKL(**{**kw, **overrides})
    with torch.no_grad():  # random weights large enough that every layer matters
        for p in vae.parameters():
            p.normal_(0, 0.05 if p.ndim > 1 else 0.1)
    vae.save_pretrained(tmp_path / "vae")
    return vae.eval()


def test_diffusers_autoencoder_kl_loads_exactly(tmp_path):
    vae = _diffusers_vae(tmp_path)
    stage, cfg = load_autoencoder(tmp_path / "vae")
    assert (cfg.latent_scale, cfg.latent_shift) == (0.3, 0.1) and cfg.model.factor == 2
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        theirs, ours = vae.encode(x).latent_dist, stage.autoencoder.encode(x)
        torch.testing.assert_close(ours.mean, theirs.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.logvar, theirs.logvar, atol=1e-5, rtol=0)
        torch.testing.assert_close(stage.autoencoder.decode(z), vae.decode(z).sample, atol=1e-5, rtol=0)


def test_diffusers_folder_errors_are_one_line(tmp_path):
    _diffusers_vae(tmp_path)
    folder = tmp_path / "vae"
    weights = folder / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "diffusion_pytorch_model.bin")
    weights.rename(tmp_path / "kept.safetensors")
    with pytest.raises(UserError, match="pickle") as e:
        load_autoencoder(folder)
    assert "\n" not in str(e.value)
    (folder / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(UserError, match="no diffusion_pytorch_model.safetensors"):
        load_autoencoder(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "act_fn": "gelu"}))
    with pytest.raises(UserError, match="act_fn='gelu' has no equivalent"):
        load_autoencoder(folder)


# --- LPIPS and the discriminator ---------------------------------------------------------------------


def _lpips_reference(net: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zhang et al. (2018) Eq. 1 written out with torchvision's VGG16 layers and the same weights."""
    from torchvision.models.vgg import cfgs, make_layers

    vgg = make_layers(cfgs["D"])
    vgg.load_state_dict({k.removeprefix("features."): v for k, v in net.state_dict().items()
                         if k.startswith("features.")}, strict=False)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    total = torch.zeros(len(x))
    for tap, head in zip(TAPS, range(5)):
        fx, fy = vgg[:tap + 1]((x - shift) / scale), vgg[:tap + 1]((y - shift) / scale)
        fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        w = net.state_dict()[f"lin{head}.model.1.weight"]
        total += torch.nn.functional.conv2d((fx - fy) ** 2, w).mean((1, 2, 3))
    return total


def test_lpips_on_self_made_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    made = LPIPS()
    with torch.no_grad():
        for i in range(5):  # heads are non-negative in LPIPS
            getattr(made, f"lin{i}").model[1].weight.uniform_(0, 1)
    save_file(made.state_dict(), tmp_path / "lpips.safetensors")
    net = load_lpips(tmp_path / "lpips.safetensors")
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    d = net(x, y)
    assert d.shape == (2,) and (d > 0).all() and torch.equal(net(x, x), torch.zeros(2))
    torch.testing.assert_close(d, _lpips_reference(made, x, y), rtol=1e-4, atol=1e-6)
    # The heads alone (lpips' vgg.pth) complete with torchvision's VGG16 from the torch hub cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    hub = tmp_path / "home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    state = made.state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, hub / "vgg16-397923af.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "vgg.pth")
    torch.testing.assert_close(load_lpips(tmp_path / "vgg.pth")(x, y), d)


def test_training_with_the_perceptual_loss(tmp_path):
    torch.manual_seed(0)
    save_file(LPIPS().state_dict(), tmp_path / "lpips.safetensors")
    assert main([*RUN, "--image-size", "16,16", "--perceptual-weight", "1", "--perceptual-weights",
                 str(tmp_path / "lpips.safetensors"), "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    assert "lpips" in json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])


def test_missing_lpips_weights_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    code = main(["train-autoencoder", "--data", "digits", "--image-size", "16,16", "--perceptual-weight", "1",
                 "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "vgg.pth" in err and "--perceptual-weights" in err
    assert not (tmp_path / "run").exists()


def test_hinge_loss_and_adaptive_weight_against_independent_computations():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.5])
    want = 0.5 * (sum(max(0.0, 1 - r) for r in real.tolist()) / 3 + sum(max(0.0, 1 + f) for f in fake.tolist()) / 3)
    assert math.isclose(float(hinge_d_loss(real, fake)), want, rel_tol=1e-6)
    # A linear "decoder" y = W x: d/dW sum((y - t)^2) = 2 (y - t) x^T and d/dW (-v . y) = -v x^T.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g, requires_grad=True)
    x, t, v = torch.randn(4, generator=g), torch.randn(3, generator=g), torch.randn(3, generator=g)
    y = w @ x
    lam = adaptive_weight(((y - t) ** 2).sum(), -(v * y).sum(), w)
    want = torch.outer(2 * (y - t), x).norm() / (torch.outer(-v, x).norm() + 1e-4)
    torch.testing.assert_close(lam, want.detach())
    assert float(adaptive_weight(((y - t) ** 2).sum(), 0 * y.sum(), w)) == 1e4  # clamped
    assert float(adaptive_weight(0 * y.sum(), -(v * y).sum(), w)) == 0.0


@pytest.mark.parametrize("layers,side", [(1, 8), (2, 32), (3, 32), (3, 70)])
def test_patch_side_is_the_discriminators(layers, side):
    d = NLayerDiscriminator(1, 4, layers)
    assert d(torch.randn(2, 1, side, side)).shape == (2, 1, patch_side(side, layers), patch_side(side, layers))


# --- the command -------------------------------------------------------------------------------------

RUN = ["train-autoencoder", "--data", "digits", "--base-channels", "8", "--norm-groups", "8", "--batch-size", "8",
       "--holdout", "16", "--scale-images", "64", "--num-sample-images", "4", "--disc-start", "2", "--disc-layers", "1",
       "--disc-channels", "4", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "0", "--no-progress"]


def _tensors(run):
    return {**load_file(run / "autoencoder.safetensors"),
            **{k: v for k, v in load_file(run / "checkpoint.safetensors").items() if k.startswith("disc.")}}


def test_train_autoencoder_end_to_end_and_resume_is_bitwise(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*RUN, "--steps", "5", "--out", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "SSIM" in out
    assert main([*RUN, "--steps", "3", "--out", str(resumed)]) == 0
    assert main(["train-autoencoder", "--resume", "--steps", "5", "--out", str(resumed), "--no-progress"]) == 0
    a, b = _tensors(straight), _tensors(resumed)
    assert a.keys() == b.keys() and any(k.startswith("disc.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["psnr"] > 0 and 0 < metrics["ssim"] <= 1 and metrics["holdout_images"] == 16
    stage, cfg = load_autoencoder(straight)
    assert cfg.latent_scale == metrics["latent_scale"] == json.loads((resumed / "metrics.json").read_text())[
        "latent_scale"]
    assert stage.latent_shape((1, 8, 8)) == (4, 4, 4)
    assert (straight / "loss.png").is_file() and list((straight / "reconstructions").glob("step_*.png"))
    assert main([*RUN, "--steps", "5", "--out", str(straight)]) == 2  # a run is there: --resume or another --out


@pytest.mark.parametrize("flags,match", [(["--kl-weight", "-1"], "kl_weight"),
                                         (["--factor", "2", "--channel-mult", "1,2,4"], "--factor 2"),
                                         (["--disc-start", "0", "--disc-layers", "3"], "disc-layers 1")])
def test_bad_values_are_one_line_exit_2(tmp_path, capsys, flags, match):
    assert main(["train-autoencoder", "--out", str(tmp_path / "r"), "--steps", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err and not (tmp_path / "r").exists()


def test_an_impossible_factor_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train-autoencoder", "--factor", "3"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
