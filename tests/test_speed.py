"""The runtime options (ddpm.runtime) keep results: bf16 autocast stays within bfloat16 rounding of fp32,
channels_last and the AdamW implementations compute the same thing, and a run trained with all of them on
still resumes exactly."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from ddpm import runtime as rt
from ddpm.checkpoint import CHECKPOINT
from ddpm.config import RunConfig, RuntimeConfig
from ddpm.errors import UserError
from ddpm.pipeline import Run, SamplingOptions, build_model, load_run
from ddpm.training.loop import train
from tests.conftest import tiny_config

BF16_EPS = 2.0**-8  # spacing of bfloat16 numbers in [1, 2): 8 significant bits


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config()
    return cfg, build_model(cfg.model).eval()


def with_runtime(cfg, **runtime):
    """``cfg`` on the CPU with the runtime options ``runtime`` (precision fp32 unless given)."""
    cfg.runtime = dataclasses.replace(cfg.runtime, **{"device": "cpu", "precision": "fp32", **runtime})
    return cfg


def inputs(cfg, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.model.in_channels, *cfg.model.image_size, generator=g)
    return x, torch.randint(0, cfg.diffusion.timesteps, (n,), generator=g)


def test_bf16_output_is_fp32_within_bfloat16_rounding():
    cfg, model = tiny_model()
    x, t = inputs(cfg)
    with torch.no_grad():
        ref = rt.ModelRunner(model, precision="fp32")(x, t)
        out = rt.ModelRunner(model, precision="bf16")(x, t)
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
    rt.to_memory_format(other, "channels_last")
    assert other.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        ref = rt.ModelRunner(model)(x, t)
        out = rt.ModelRunner(other, memory_format="channels_last")(x, t)
    assert out.is_contiguous()
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_sampling_with_the_runtime_options_matches_fp32():
    cfg, model = tiny_model()
    run = Run.of(model, cfg)

    def sample(**runtime):
        return run.sample(4, generator=torch.Generator().manual_seed(0), sampling=SamplingOptions("ddim", steps=5),
                          runtime=RuntimeConfig("cpu", **runtime), progress=False)

    ref = sample(precision="fp32")
    cl = sample(precision="fp32", memory_format="channels_last")
    assert torch.allclose(cl, ref, atol=1e-4)
    bf = sample(precision="bf16", memory_format="channels_last")
    # Five deterministic steps in [-1, 1]: bf16 rounding of the network moves the images by a few eps.
    assert (bf - ref).abs().mean() < 8 * BF16_EPS


@pytest.mark.parametrize("impl", ["foreach", "for-loop"])
def test_adamw_implementations_compute_the_same_update(impl):
    params = {}
    for name in ("fused", impl):
        torch.manual_seed(0)
        p = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
        opt = rt.make_adamw(p, lr=1e-2, weight_decay=0.1, impl=name, device="cpu")
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for q in p:
                q.grad = torch.randn(q.shape, generator=g)
            opt.step()
        params[name] = p
    for a, b in zip(params["fused"], params[impl]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_training_with_every_option_resumes_exactly(tmp_path):
    def config(steps):
        return with_runtime(tiny_config(steps=steps, adamw_impl="fused"), precision="bf16",
                            memory_format="channels_last", compile="none")

    train(config(4), tmp_path / "full", progress=False)
    train(config(2), tmp_path / "split", progress=False)
    train(config(4), tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / CHECKPOINT), load_file(tmp_path / "split" / CHECKPOINT)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    run = load_run(tmp_path / "full")
    assert run.config == config(4)  # the options survive the JSON round trip
    assert (run.config.runtime.precision, run.config.runtime.memory_format) == ("bf16", "channels_last")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all(0 < v < 10 for v in losses)


def test_auto_defaults_and_old_configs():
    assert rt.resolve_precision("auto", "cpu") == ("bf16" if rt.native_bf16("cpu") else "fp32")
    assert rt.resolve_memory_format("auto", "cpu") == "contiguous"
    assert rt.resolve_compile("auto", "cpu") == "none"
    assert rt.resolve_adamw_impl("auto", "cpu") == "fused"
    assert rt.resolve("cpu", compile="auto", sampling=True) == rt.resolve("cpu")  # no compiling on a CPU
    d = with_runtime(tiny_config()).to_dict()
    del d["runtime"], d["train"]["adamw_impl"]  # a config saved before the options existed
    old = RunConfig.from_dict(d)
    assert old.runtime == RuntimeConfig() and old.train.adamw_impl == "auto"
    # A config saved while the device and the speed options were train fields: they move to its runtime.
    d["train"].update(device="cpu", precision="bf16", memory_format="channels_last", compile="none")
    assert RunConfig.from_dict(d).runtime == RuntimeConfig("cpu", "bf16", "channels_last", "none")


def test_unknown_option_names_are_user_errors(tmp_path):
    cfg, model = tiny_model()
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        Run.of(model, cfg).sample(2, runtime=RuntimeConfig(precision="fp8"), progress=False)
    with pytest.raises(UserError, match="unknown memory_format"):
        train(with_runtime(tiny_config(), memory_format="nhwc"), tmp_path / "run", progress=False)
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


def test_dropout_mask_benchmark_times_the_three_masks(tmp_path):
    from tests.conftest import load_script

    module = load_script("benchmarks/dropout_mask.py")
    result = module.main(["--preset", "digits", "--seconds", "0.05", "--rounds", "1", "--out", str(tmp_path)])
    assert set(result) == {"ours", "rand", "torch"} and all(v > 0 for v in result.values())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["result"]["images_per_s"] == result and saved["result"]["ours_x"]["ours"] == 1.0
    assert saved["command"].startswith("python benchmarks/dropout_mask.py --preset digits")
    assert "| rand |" in (tmp_path / "results.md").read_text()


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
    assert 0 < r["optimizer_step_ms"] < r["ms_per_step"]  # torch.optim's range around the AdamW step
    if onednn:  # oneDNN ran the convolutions and said so
        assert any(k.startswith("convolution") for k in r["onednn"])
    assert "| conv |" in (tmp_path / "profile.md").read_text()
    assert (tmp_path / "profile.png").stat().st_size > 0


def test_upsample_benchmark_compares_the_same_function_both_ways(tmp_path):
    from tests.conftest import load_script

    module = load_script("benchmarks/upsample_conv.py")
    cfg, model = tiny_model()
    x, t = inputs(cfg)
    with torch.no_grad():
        ours = model(x, t)
        resized = module.resize_then_conv(model)(x, t)
    assert any(isinstance(m, module.ResizeThenConv) for m in model.modules())
    assert torch.allclose(ours, resized, atol=1e-5)
    result = module.main(["--preset", "digits", "--seconds", "0.05", "--rounds", "1", "--out", str(tmp_path)])
    assert set(result) == {"train", "sample"}
    assert all(r["ours"] > 0 and r["resize+conv"] > 0 and len(r["round_ratios"]) == 1 for r in result.values())
    assert json.loads((tmp_path / "results.json").read_text())["result"] == result
    assert "| sample |" in (tmp_path / "results.md").read_text()


def test_attention_benchmark_times_the_same_function_both_ways(tmp_path):
    """benchmarks/attention_cpu.py's ``sdpa`` form computes what our CPU form does (so it times the same
    function), switches every attention layer of a network, and the script writes its result files."""
    from ddpm.models.layers import Attention
    from tests.conftest import load_script

    module = load_script("benchmarks/attention_cpu.py")
    cfg, model = tiny_model()
    x, t = inputs(cfg)
    with torch.no_grad():
        ours = model(x, t)
        sdpa = module.with_form(model, "sdpa")(x, t)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert layers and all(type(m) is module.SdpaAttention for m in layers)
    assert torch.allclose(ours, sdpa, atol=1e-5)
    result = module.main(["--preset", "digits", "--precisions", "fp32", "--seconds", "0.05", "--rounds", "1",
                          "--out", str(tmp_path)])
    assert set(result["ours_x"]) == {"layer fp32", "step fp32"} and all(v > 0 for v in result["ours_x"].values())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["result"]["layer_input"][0] == 128 and saved["command"].startswith("python benchmarks/attention_cpu.py")
    assert "| layer | fp32 |" in (tmp_path / "results.md").read_text()


def test_the_speed_benchmark_records_the_cpu_it_ran_on():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("speed_bench", REPO / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    cpu = speed.cpu_info()
    assert cpu["model"] and isinstance(cpu["flags"], list)
    page = speed.cpu_line({"model": "Test CPU", "cores": "2", "flags": ["fpu", "avx2", "avx512_bf16"]})
    assert page[0].startswith("CPU: Test CPU, 2 logical CPUs; flags: avx2 avx512_bf16")
    assert "in speed.json" in page[0]
    assert "in results.json" in speed.cpu_line({"model": "X", "cores": "1", "flags": []}, "results.json")[0]
    assert speed.cpu_line(None) == []  # result files written before the CPU was recorded


@pytest.mark.slow
def test_compile_default_trains_on_a_cpu(tmp_path):
    """``--compile default`` on a CPU trains and samples (compiled with static shapes: with symbolic sizes,
    inductor stopped on the CPU training step with "cannot determine truth value of Relational")."""
    from ddpm.pipeline import load_run
    from ddpm.training.loop import train
    from tests.conftest import tiny_config

    cfg = tiny_config(steps=2)
    cfg.runtime.compile = "default"
    run = load_run(train(cfg, tmp_path / "run", progress=False))
    assert run.step == 2
    x = run.sample(2, generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == (2, cfg.model.in_channels, *cfg.model.image_size) and torch.isfinite(x).all()
