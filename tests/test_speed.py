"""The speed options (ddpm.performance) keep results: bf16 autocast stays within bfloat16 rounding of fp32,
channels_last and the AdamW implementations compute the same thing, and a run trained with all of them on
still resumes exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ddpm import performance as perf
from ddpm.api import build_model, load_run, sample_images
from ddpm.config import RunConfig
from ddpm.errors import UserError
from ddpm.training.checkpoint import CHECKPOINT
from ddpm.training.loop import train
from tests.conftest import tiny_config

BF16_EPS = 2.0**-8  # spacing of bfloat16 numbers in [1, 2): 8 significant bits


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config()
    return cfg, build_model(cfg.model).eval()


def inputs(cfg, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.model.in_channels, *cfg.model.image_size, generator=g)
    return x, torch.randint(0, cfg.diffusion.timesteps, (n,), generator=g)


def test_bf16_output_is_fp32_within_bfloat16_rounding():
    cfg, model = tiny_model()
    x, t = inputs(cfg)
    with torch.no_grad():
        ref = perf.Network(model, precision="fp32")(x, t)
        out = perf.Network(model, precision="bf16")(x, t)
    assert out.dtype == torch.float32 and ref.dtype == torch.float32
    assert not torch.equal(out, ref)  # the network did run in bfloat16
    rel = (out - ref).norm() / ref.norm()
    # Each layer rounds to bf16 (relative error <= eps/2); a dozen layers keep the total a few eps.
    assert rel < 4 * BF16_EPS, rel
    assert model.conv_in.weight.dtype == torch.float32  # fp32 master weights


def test_channels_last_gives_the_contiguous_output_and_the_same_weights():
    cfg, model = tiny_model()
    _, other = tiny_model()
    x, t = inputs(cfg)
    perf.to_memory_format(other, "channels_last")
    assert other.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        ref = perf.Network(model)(x, t)
        out = perf.Network(other, memory_format="channels_last")(x, t)
    assert out.is_contiguous()
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_sample_images_with_the_options_matches_fp32():
    cfg, model = tiny_model()
    kw = dict(generator=torch.Generator().manual_seed(0), sampler="ddim", steps=5, progress=False)
    ref = sample_images(model, cfg, 4, precision="fp32", **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    cl = sample_images(model, cfg, 4, precision="fp32", memory_format="channels_last", **kw)
    assert torch.allclose(cl, ref, atol=1e-4)
    kw["generator"] = torch.Generator().manual_seed(0)
    bf = sample_images(model, cfg, 4, precision="bf16", memory_format="channels_last", **kw)
    # Five deterministic steps in [-1, 1]: bf16 rounding of the network moves the images by a few eps.
    assert (bf - ref).abs().mean() < 8 * BF16_EPS


@pytest.mark.parametrize("impl", ["foreach", "for-loop"])
def test_adamw_implementations_compute_the_same_update(impl):
    params = {}
    for name in ("fused", impl):
        torch.manual_seed(0)
        p = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
        opt = perf.make_adamw(p, lr=1e-2, weight_decay=0.1, impl=name, device="cpu")
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for q in p:
                q.grad = torch.randn(q.shape, generator=g)
            opt.step()
        params[name] = p
    for a, b in zip(params["fused"], params[impl]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_training_with_every_option_resumes_exactly(tmp_path):
    opts = dict(precision="bf16", memory_format="channels_last", adamw_impl="fused", compile="none")
    train(tiny_config(steps=4, **opts), tmp_path / "full", progress=False)
    train(tiny_config(steps=2, **opts), tmp_path / "split", progress=False)
    train(tiny_config(steps=4, **opts), tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / CHECKPOINT), load_file(tmp_path / "split" / CHECKPOINT)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    run = load_run(tmp_path / "full")
    assert run.config == tiny_config(steps=4, **opts)  # the options survive the JSON round trip
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all(0 < v < 10 for v in losses)


def test_auto_defaults_and_old_configs():
    assert perf.resolve_precision("auto", "cpu") == ("bf16" if perf.native_bf16("cpu") else "fp32")
    assert perf.resolve_memory_format("auto", "cpu") == "contiguous"
    assert perf.resolve_compile("auto", "cpu") == "none"
    assert perf.resolve_adamw_impl("auto", "cpu") == "fused"
    d = tiny_config().to_dict()
    for k in ("precision", "memory_format", "compile", "adamw_impl"):
        del d["train"][k]  # a config saved before the options existed
    assert RunConfig.from_dict(d).train.precision == "auto"


def test_unknown_option_names_are_user_errors(tmp_path):
    cfg, model = tiny_model()
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        sample_images(model, cfg, 2, precision="fp8", progress=False)
    with pytest.raises(UserError, match="unknown memory_format"):
        train(tiny_config(memory_format="nhwc"), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="unknown adamw_impl"):
        train(tiny_config(adamw_impl="apex"), tmp_path / "run", progress=False)


def test_cpu_attention_is_scaled_dot_product_attention():
    """The CPU form of the U-Net's attention computes exactly what F.scaled_dot_product_attention does."""
    from ddpm.models.layers import Attention

    torch.manual_seed(0)
    layer = Attention(32, 4, 8)
    x = torch.randn(3, 32, 6, 6, requires_grad=True)
    n, c, h, w = x.shape
    q, k, v = layer.qkv(layer.norm(x)).reshape(n, 3, 4, c // 4, h * w).transpose(-1, -2).unbind(1)
    ref = x + layer.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(x.shape))
    out = layer(x)
    assert torch.allclose(out, ref, atol=1e-6)
    g_out, g_ref = torch.autograd.grad(out.square().sum(), x), torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(g_out[0], g_ref[0], atol=1e-5)


def test_dropout_mask_benchmark_times_the_three_masks():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("dropout_mask", REPO / "benchmarks" / "dropout_mask.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--preset", "digits", "--seconds", "0.05", "--rounds", "1"])
    assert set(result) == {"ours", "rand", "torch"} and all(v > 0 for v in result.values())


def test_speed_profile_accounts_for_the_step_by_category(tmp_path):
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("speed_profile", REPO / "benchmarks" / "speed_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.category("aten::convolution_backward") == "conv"
    assert module.category("aten::native_group_norm_backward") == "group norm"
    assert module.category("aten::random_") == "random numbers"
    onednn = torch.backends.mkldnn.is_available()
    result = module.main(["--preset", "digits", "--precision", "fp32", "--memory-formats", "contiguous",
                          "--steps", "1", "--batch", "8", "--out", str(tmp_path)] + ([] if onednn else ["--no-onednn"]))
    r = result["formats"]["contiguous"]
    assert r["ms_per_step"] == pytest.approx(sum(r["categories"].values()))
    assert r["categories"]["conv"] > 0 and r["images_per_s"] == pytest.approx(8 / r["ms_per_step"] * 1000)
    if onednn:  # oneDNN ran the convolutions and said so
        assert any(k.startswith("convolution") for k in r["onednn"])
    assert "| conv |" in (tmp_path / "profile.md").read_text()
    assert (tmp_path / "profile.png").stat().st_size > 0


def test_upsample_benchmark_compares_the_same_function_both_ways():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("upsample_conv", REPO / "benchmarks" / "upsample_conv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg, model = tiny_model()
    x, t = inputs(cfg)
    with torch.no_grad():
        ours = model(x, t)
        resized = module.resize_then_conv(model)(x, t)
    assert any(isinstance(m, module.ResizeThenConv) for m in model.modules())
    assert torch.allclose(ours, resized, atol=1e-5)
    result = module.main(["--preset", "digits", "--seconds", "0.05", "--rounds", "1"])
    assert set(result) == {"train", "sample"}
    assert all(r["ours"] > 0 and r["resize+conv"] > 0 and len(r["round_ratios"]) == 1 for r in result.values())
