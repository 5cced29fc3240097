import pytest
import torch

from ddpm.config import ModelConfig
from ddpm.errors import UserError
from ddpm.models.unet import (
    UNet,
    count_parameters,
    lone_channel_norm_widths,
    suggested_norm_groups,
)
from ddpm.presets import make_config


@pytest.mark.parametrize("preset", ["digits", "mnist"])
def test_presets_map_shape_to_shape(preset):
    cfg = make_config(preset).model
    cfg.base_channels, cfg.norm_groups = 16, 8
    m = UNet(cfg)
    x = torch.randn(2, cfg.in_channels, *cfg.image_size)
    assert m(x, torch.tensor([0, 999])).shape == x.shape


def test_ho_et_al_cifar10_network_has_35_7m_parameters():
    m = UNet(make_config("ddpm-cifar10").model)
    assert round(count_parameters(m) / 1e6, 1) == 35.7  # Ho et al. (2020), App. B


def test_non_square_rgb_and_extra_output_channels():
    cfg = ModelConfig(image_size=(16, 32), in_channels=3, out_channels=6, base_channels=16,
                      channel_mult=(1, 2, 2), attention_resolutions=(8,), num_heads=2, norm_groups=8)
    m = UNet(cfg)
    out = m(torch.randn(2, 3, 16, 32), torch.tensor([3, 7]))
    assert out.shape == (2, 6, 16, 32)


def test_impossible_size_is_a_user_error():
    with pytest.raises(UserError, match="not divisible by 4"):
        UNet(ModelConfig(image_size=(10, 10), channel_mult=(1, 2, 2)))


def test_time_embedding_changes_output():
    torch.manual_seed(0)
    cfg = make_config("digits").model
    cfg.base_channels, cfg.norm_groups, cfg.dropout = 16, 8, 0.0
    m = UNet(cfg).eval()
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(m(x, torch.tensor([1])), m(x, torch.tensor([500])))


def test_class_conditioning_hook_has_a_no_label_entry():
    cfg = make_config("digits").model
    cfg.base_channels, cfg.norm_groups, cfg.num_classes, cfg.dropout = 16, 8, 10, 0.0
    m = UNet(cfg).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 5])
    assert torch.allclose(m(x, t), m(x, t, torch.tensor([10, 10])))  # None is the "no label" row
    assert not torch.allclose(m(x, t, torch.tensor([3, 3])), m(x, t))


def test_dropout_keeps_each_unit_with_probability_1_minus_p_and_rescales():
    from ddpm.models.layers import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.1)
    x = torch.ones(400_000)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003  # binomial s.e. 0.0005
    for lane in range(4):  # each 16-bit quarter of a 64-bit draw, the sign bits' quarter included
        assert abs(kept[lane::4].float().mean().item() - 0.9) < 0.004
    pairs = torch.stack([kept[:-1], kept[1:]]).float()  # neighbours' masks are independent
    assert abs(torch.corrcoef(pairs)[0, 1].item()) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9), rtol=1e-4)
    assert abs(y.mean().item() - 1.0) < 0.004  # unbiased, as nn.Dropout
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # the default generator's seed fixes the mask
    assert (Dropout(0.5)(x) != 0).float().mean().item() == pytest.approx(0.5, abs=0.004)
    drop.eval()
    assert torch.equal(drop(x), x)
    xb = torch.ones(1000, dtype=torch.bfloat16, requires_grad=True)
    drop.train()
    out = drop(xb)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert torch.equal(xb.grad != 0, out.detach() != 0)  # the gradient flows through kept units only


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (3, 2, 4, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_upsample_conv_is_nearest_upsampling_then_the_3x3_convolution(shape, with_bias):
    import torch.nn.functional as F

    from ddpm.models.layers import upsample_conv

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, shape[1], 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)
    out = upsample_conv(x, w, b)
    assert out.shape == ref.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    inputs = [x, w] + ([b] if with_bias else [])
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for got, want in zip(torch.autograd.grad(out, inputs, upstream), torch.autograd.grad(ref, inputs, upstream)):
        assert torch.allclose(got, want, rtol=0, atol=1e-11)


def test_upsample_module_keeps_the_3x3_weight_and_matches_under_bf16_autocast():
    import torch.nn.functional as F

    from ddpm.models.layers import Upsample

    torch.manual_seed(0)
    up = Upsample(16)
    assert set(up.state_dict()) == {"conv.weight", "conv.bias"} and up.conv.weight.shape == (16, 16, 3, 3)
    x = torch.randn(2, 16, 7, 7)
    ref = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = up(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 2**-6 * ref.abs().max()  # bf16 inputs and kernels


@pytest.mark.parametrize("base, mult, groups, lone, suggested", [
    (32, (1, 2, 2), 32, [32], 8),        # the 32-channel level normalises each channel alone
    (16, (1, 2), 32, [16, 32], 4),       # fewer channels than groups: min(groups, width) = width
    (32, (1, 2, 2), 8, [], 8),           # the presets' small networks: four channels a group
    (128, (1, 2, 2, 2), 32, [], 32),     # Ho et al.'s CIFAR-10 network
    (12, (1, 3), 12, [12], 3),
])
def test_lone_channel_norms_are_found_and_the_suggestion_divides_every_level(base, mult, groups, lone, suggested):
    cfg = ModelConfig(base_channels=base, channel_mult=mult, norm_groups=groups)
    assert lone_channel_norm_widths(cfg) == lone
    assert suggested_norm_groups(cfg) == suggested
    fixed = ModelConfig(base_channels=base, channel_mult=mult, norm_groups=suggested)
    assert lone_channel_norm_widths(fixed) == []
    assert all(base * c % suggested == 0 and base * c // suggested >= 4 for c in mult)
