"""The training step of a preset with our dropout (``ddpm.models.layers.Dropout``: a CPU mask from 16-bit
random integers, four units per 64-bit draw) against a mask from ``torch.rand`` compared with p (``rand``,
what ours did before) and PyTorch's ``nn.Dropout`` (``torch``, whose CPU mask is ``bernoulli_``).

Images/s of the same step as benchmarks/speed.py (bf16 where the device has it, fused AdamW, EMA),
alternating the three for ``--rounds`` rounds of ``--seconds`` each; ``--clock cpu`` times one thread's CPU
time, for a machine shared with other work. Writes the medians, each round's rates, the CPU and the
command to ``--out``/results.json and results.md:

    .venv/bin/python benchmarks/dropout_mask.py --preset mnist            # about two minutes
    .venv/bin/python benchmarks/dropout_mask.py --preset mnist --clock cpu --rounds 5
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark's training step)

from ddpm.models.layers import ResBlock  # noqa: E402
from ddpm.pipeline import build_model  # noqa: E402
from ddpm.presets import make_config  # noqa: E402


class RandDropout(torch.nn.Dropout):
    """Dropout with a mask of ``torch.rand`` numbers compared with p, one float draw per unit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand(x.shape, dtype=torch.float32) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


MASKS = {"ours": None, "rand": RandDropout, "torch": torch.nn.Dropout}


def make_step(cfg, dropout: str):
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if MASKS[dropout] is not None:
        for m in model.modules():
            if isinstance(m, ResBlock):
                m.dropout = MASKS[dropout](m.dropout.p)
    return speed.ours_train_step(cfg, model)


def main(argv=None) -> dict:
    args = speed.ab_parser(__doc__.split("\n\n")[0], seconds=6.0, rounds=3,
                           out="bench_out/dropout_mask").parse_args(argv)
    speed.set_threads(args)
    cfg = make_config(args.preset)
    steps = {name: make_step(cfg, name) for name in MASKS}
    rates = speed.alternate(steps, args, torch.device("cpu"))
    result = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {name: statistics.median(a / b for a, b in zip(rates["ours"], rates[name])) for name in MASKS}
    print(f"{args.preset}, {torch.get_num_threads()} threads, {args.clock} clock, images/s (median of "
          f"{args.rounds} rounds): ours {result['ours']:.1f}, rand {result['rand']:.1f} "
          f"(ours x{ratios['rand']:.3f}), nn.Dropout {result['torch']:.1f} (ours x{ratios['torch']:.3f}; "
          "each the median of the rounds' ratios)")
    speed.write_ab("dropout_mask.py", argv, args, {"images_per_s": result, "rounds": rates, "ours_x": ratios}, [
        "| mask | train images/s | ours x (median of the rounds' ratios) |", "| --- | --- | --- |",
        *(f"| {name} | {result[name]:.1f} | {ratios[name]:.3f} |" for name in MASKS)])
    return result


if __name__ == "__main__":
    main()
