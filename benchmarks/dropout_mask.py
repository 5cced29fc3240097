"""The training step of a preset with PyTorch's ``nn.Dropout`` against ours (``ddpm.models.layers.Dropout``,
whose CPU mask comes from ``uniform_`` on all threads rather than the one-thread ``bernoulli_``).

Wall-clock images/s of the same step as benchmarks/speed.py (bf16 where the device has it, fused AdamW,
EMA), alternating the two for ``--rounds`` rounds of ``--seconds`` each at the machine's thread count:

    .venv/bin/python benchmarks/dropout_mask.py --preset mnist            # about a minute
    .venv/bin/python benchmarks/dropout_mask.py --preset mnist --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark's training step)

from ddpm import performance as perf  # noqa: E402
from ddpm.api import build_model  # noqa: E402
from ddpm.models.layers import ResBlock  # noqa: E402
from ddpm.presets import make_config  # noqa: E402


def images_per_second(cfg, dropout: str, seconds: float) -> float:
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if dropout == "torch":
        for m in model.modules():
            if isinstance(m, ResBlock):
                m.dropout = torch.nn.Dropout(m.dropout.p)
    net = perf.Network(model, precision=perf.resolve_precision("auto", device))
    opt = perf.make_adamw(model.parameters(), lr=cfg.train.lr, weight_decay=0.0,
                          impl=perf.resolve_adamw_impl("auto", device), device=device)
    step = speed.train_step_fn(cfg, model, net, opt, cfg.train.batch_size, device)
    step()  # warm-up
    return speed.run_for(step, seconds, device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = make_config(args.preset)
    rates = {"ours": [], "torch": []}
    for _ in range(args.rounds):
        for name in rates:
            rates[name].append(images_per_second(cfg, name, args.seconds))
    result = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.preset}, {torch.get_num_threads()} threads, images/s (median of {args.rounds} rounds): "
          f"ours {result['ours']:.1f}, nn.Dropout {result['torch']:.1f}, x{result['ours'] / result['torch']:.3f}")
    return result


if __name__ == "__main__":
    main()
