"""Our CPU attention (``ddpm.models.layers.Attention``: softmax(q^T k / sqrt(d)) v as two batched matmuls)
against PyTorch's ``F.scaled_dot_product_attention`` (``sdpa``, what the layer runs on a GPU), on a CPU.

Two measurements per precision (bf16 where the CPU has it, and fp32): ``layer``, the forward and backward
of the preset's attention layer alone (its own channels, heads and resolution, the preset's training
batch, random input), in images/s; and ``step``, the preset's whole training step (benchmarks/speed.py's)
with every attention layer of the network in one form or the other. The two forms compute the same
function (tests/test_speed.py checks it). Alternates the forms for ``--rounds`` rounds of ``--seconds``
each; ``--clock cpu`` times one thread's CPU time. Writes the medians, each round's rates, the CPU and the
command to ``--out``/results.json and results.md:

    .venv/bin/python benchmarks/attention_cpu.py --preset cifar10 --out bench_out/attention_cpu   # ~5 min
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark's training step)

from ddpm import runtime as rt  # noqa: E402
from ddpm.models.layers import Attention  # noqa: E402
from ddpm.pipeline import build_model  # noqa: E402
from ddpm.presets import make_config  # noqa: E402


class SdpaAttention(Attention):
    """``Attention`` that takes PyTorch's fused path on every device (the layer's GPU branch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


FORMS = {"ours": Attention, "sdpa": SdpaAttention}


def with_form(model: torch.nn.Module, form: str) -> torch.nn.Module:
    """``model`` with each ``Attention`` switched, in place, to the class of ``form`` (same weights)."""
    for m in model.modules():
        if type(m) in FORMS.values():
            m.__class__ = FORMS[form]
    return model


def attention_input(cfg) -> tuple[Attention, tuple[int, ...]]:
    """The network's first attention layer and the shape of its input at the preset's training batch."""
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    layer = next(m for m in model.modules() if isinstance(m, Attention))
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        model(torch.zeros(1, cfg.model.in_channels, *cfg.model.image_size), torch.zeros(1, dtype=torch.long))
    handle.remove()
    return layer, (cfg.train.batch_size, *seen[0][1:])


def layer_step(layer: Attention, shape, form: str, precision: str):
    """Forward and backward of a copy of the layer (in ``form``) on a fixed random input; returns the images."""
    layer = with_form(copy.deepcopy(layer), form).train()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> int:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = layer(x)
        out.float().square().mean().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None
        return shape[0]

    step()
    return step


def main(argv=None) -> dict:
    p = speed.ab_parser(__doc__.split("\n\n")[0], seconds=6.0, rounds=3, out="bench_out/attention_cpu")
    p.set_defaults(preset="cifar10")
    p.add_argument("--precisions", default="bf16,fp32",
                   help="comma-separated, of bf16, fp32 (bf16 is skipped on a CPU without bf16 units)")
    args = p.parse_args(argv)
    bad = [q for q in args.precisions.split(",") if q not in ("bf16", "fp32")]
    if bad:
        p.error(f"--precisions {','.join(bad)}: choose from bf16, fp32")
    speed.set_threads(args)
    cfg = make_config(args.preset)
    precisions = [q for q in args.precisions.split(",") if q != "bf16" or rt.resolve_precision("auto", "cpu") == "bf16"]
    layer, shape = attention_input(cfg)
    rates, medians, ratios = {}, {}, {}
    for precision in precisions:
        for what in ("layer", "step"):
            key = f"{what} {precision}"
            print(f"{key}: timing ours and sdpa...", flush=True)
            if what == "layer":
                steps = {form: layer_step(layer, shape, form, precision) for form in FORMS}
            else:
                steps = {}
                for form in FORMS:
                    torch.manual_seed(0)
                    steps[form] = speed.ours_train_step(cfg, with_form(build_model(cfg.model), form),
                                                        precision=precision)
            r = speed.alternate(steps, args, torch.device("cpu"))
            rates[key] = r
            medians[key] = {form: statistics.median(v) for form, v in r.items()}
            ratios[key] = statistics.median(a / b for a, b in zip(r["ours"], r["sdpa"]))
            print(f"  ours {medians[key]['ours']:.1f}, sdpa {medians[key]['sdpa']:.1f} images/s: ours "
                  f"x{ratios[key]:.2f} (median of the rounds' ratios)", flush=True)
    n, c, h, w = shape
    heads = layer.num_heads
    speed.write_ab("attention_cpu.py", argv, args, {
        "layer_input": list(shape), "heads": heads, "images_per_s": medians, "rounds": rates, "ours_x": ratios}, [
        (f"`layer`: one attention layer ({c} channels, {heads} head{'s' if heads != 1 else ''}, {h}x{w} pixels, "
         f"batch {n}), forward and backward; `step`: the {args.preset} preset's whole training step."), "",
        "| what | precision | ours images/s | sdpa images/s | ours x (median of the rounds' ratios) |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {key.split()[0]} | {key.split()[1]} | {m['ours']:.1f} | {m['sdpa']:.1f} | {ratios[key]:.2f} |"
          for key, m in medians.items())])
    return {"images_per_s": medians, "ours_x": ratios}


if __name__ == "__main__":
    main()
