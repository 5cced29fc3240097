"""Our upsampling (``ddpm.models.layers.upsample_conv``: one 2x2 convolution of the low-resolution input with
four output phases) against the resize-then-convolve form it replaces (``interpolate`` nearest 2x, then
the 3x3 convolution), in the training step and the sampling step of a preset.

The same weights compute the same function both ways; only the arithmetic differs. Images/s of
benchmarks/speed.py's training step and network evaluations/s of its sampling step (``Run.sample``,
Algorithm 2), the two forms alternating for ``--rounds`` rounds of ``--seconds`` each; ``--clock cpu``
times one thread's CPU time, for a machine shared with other work. Prints the median of the per-round
ratios (each round times both forms back to back, so the machine's drift cancels) and writes them, with
each round's ratio, the CPU and the command, to ``--out``/results.json and results.md:

    .venv/bin/python benchmarks/upsample_conv.py --preset mnist                 # about two minutes
    .venv/bin/python benchmarks/upsample_conv.py --preset mnist --clock cpu --rounds 7
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark's training and sampling steps)

from ddpm.models.layers import Upsample  # noqa: E402
from ddpm.pipeline import build_model  # noqa: E402
from ddpm.presets import make_config  # noqa: E402


class ResizeThenConv(nn.Module):
    """Nearest 2x resize, then the 3x3 convolution: the textbook form of ``Upsample``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def resize_then_conv(model: nn.Module) -> nn.Module:
    """``model`` with every ``Upsample`` replaced, in place, by ``ResizeThenConv`` of the same weights."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Upsample):
                setattr(parent, name, ResizeThenConv(child.conv))
    return model


def make_steps(cfg, form: str) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if form == "resize+conv":
        resize_then_conv(model)
    sample = speed.ours_sample_fn(cfg, model, cfg.train.batch_size, torch.device("cpu"), {})
    sample()  # warm-up
    return {"train": speed.ours_train_step(cfg, model), "sample": sample}


def main(argv=None) -> dict:
    args = speed.ab_parser(__doc__.split("\n\n")[0], seconds=4.0, rounds=5,
                           out="bench_out/upsample_conv").parse_args(argv)
    speed.set_threads(args)
    cfg = make_config(args.preset)
    forms = {form: make_steps(cfg, form) for form in ("ours", "resize+conv")}
    steps = {(form, kind): forms[form][kind] for kind in ("train", "sample") for form in forms}
    rates = speed.alternate(steps, args, torch.device("cpu"))
    result = {}
    for kind in ("train", "sample"):
        ratios = [a / b for a, b in zip(rates["ours", kind], rates["resize+conv", kind])]
        result[kind] = {"ours": statistics.median(rates["ours", kind]),
                        "resize+conv": statistics.median(rates["resize+conv", kind]),
                        "ratio": statistics.median(ratios), "round_ratios": ratios}
        print(f"{args.preset} {kind}, {torch.get_num_threads()} threads, {args.clock} clock (median of "
              f"{args.rounds} rounds): ours {result[kind]['ours']:.1f}, resize+conv "
              f"{result[kind]['resize+conv']:.1f}/s, ours x{result[kind]['ratio']:.3f} "
              f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})", flush=True)
    speed.write_ab("upsample_conv.py", argv, args, result, [
        "| step | ours /s | resize+conv /s | ours x (median of the rounds' ratios) | each round's ratio |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {kind} | {r['ours']:.1f} | {r['resize+conv']:.1f} | {r['ratio']:.3f} | "
          f"{', '.join(f'{x:.3f}' for x in r['round_ratios'])} |" for kind, r in result.items())])
    return result


if __name__ == "__main__":
    main()
