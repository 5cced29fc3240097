"""Where the time of our training step goes (issue 8): torch.profiler's CPU time per step by kind of
operation, and, on a CPU, oneDNN's own account of its convolution kernels and of the layout reorders
around them.

The step is ``benchmarks/speed.py``'s (q_sample, the network, L_simple, backward, clipping, AdamW, EMA) at
the preset's batch, with ``--precision`` and each ``--memory-formats`` in turn, on one thread by default
(the ``--clock cpu`` setting of the speed table). ``conv`` sums PyTorch's convolution calls forward and
backward; the oneDNN lines split that into kernels (by implementation and direction) and ``reorder``,
the conversions between PyTorch's layout and oneDNN's blocked one. ``--adamw-impl`` picks the optimizer's
implementation, and the page gives the AdamW step's inclusive time whichever kernels it runs. Writes
OUT/profile.md, OUT/profile.json and OUT/profile.png (a bar per memory format, split by category).

    .venv/bin/python benchmarks/speed_profile.py --preset mnist --out bench_out/speed_profile   # ~1 min
    .venv/bin/python benchmarks/speed_profile.py --preset mnist --memory-formats contiguous --adamw-impl foreach
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark's training step)

from ddpm import runtime as rt  # noqa: E402
from ddpm.io import write_text_atomic  # noqa: E402
from ddpm.pipeline import build_model  # noqa: E402
from ddpm.presets import make_config  # noqa: E402

# Profiler event name -> category; the first key contained in the name wins.
CATEGORIES = [("convolution", "conv"), ("conv2d", "conv"), ("group_norm", "group norm"), ("silu", "silu"),
              ("uniform_", "random numbers"), ("random_", "random numbers"), ("bernoulli", "random numbers"),
              ("copy_", "copies and casts"), ("_to_copy", "copies and casts"), ("bmm", "attention"),
              ("softmax", "attention"), ("adam", "optimizer"), ("_foreach", "clipping and EMA")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (default: the device's choice)")
    p.add_argument("--memory-formats", default="contiguous,channels_last")
    p.add_argument("--steps", type=int, default=4, help="profiled steps, after 3 warm-up steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, help="training batch (default: the preset's)")
    p.add_argument("--adamw-impl", default="auto", choices=rt.ADAMW_IMPLS,
                   help="the optimizer step's implementation (default: auto, fused on a CPU)")
    p.add_argument("--no-onednn", action="store_true", help="skip oneDNN's account (a second process)")
    p.add_argument("--out", default="bench_out/speed_profile")
    p.add_argument("--onednn-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_step(args, memory_format: str):
    torch.set_num_threads(args.threads)
    cfg = make_config(args.preset)
    torch.manual_seed(0)
    batch = args.batch or cfg.train.batch_size
    step = speed.ours_train_step(cfg, build_model(cfg.model), precision=args.precision,
                                 memory_format=memory_format, batch=batch, warm_up_steps=3,
                                 adamw_impl=args.adamw_impl)
    return step, batch


def category(name: str) -> str:
    low = name.lower()
    return next((cat for key, cat in CATEGORIES if key in low), "other")


def profile_categories(args, memory_format: str) -> dict:
    """ms per step by category (self CPU time), and the operators inside "other"."""
    from torch.profiler import ProfilerActivity, profile

    step, batch = make_step(args, memory_format)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    per_cat, other = collections.Counter(), collections.Counter()
    # torch.optim wraps every step in a record_function "Optimizer.step#AdamW.step": its inclusive time is
    # the whole AdamW step, whichever kernels (fused, _foreach_*, per-tensor) its implementation runs.
    optimizer_ms = sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith("Optimizer.step#"))
    for event in prof.key_averages():  # the range's own self time (torch.optim's Python) counts as "optimizer"
        ms = event.self_cpu_time_total / 1000 / args.steps
        cat = category(event.key)
        per_cat[cat] += ms
        if cat == "other":
            other[event.key] += ms
    total = sum(per_cat.values())
    return {"ms_per_step": total, "images_per_s": batch / total * 1000, "categories": dict(per_cat.most_common()),
            "other_top": dict(other.most_common(6)), "optimizer_step_ms": optimizer_ms / 1000 / args.steps}


def onednn_account(args, memory_format: str) -> dict:
    """oneDNN's verbose times (ms per step) by primitive kind, implementation and direction, run in a child
    process (oneDNN prints to the C-level stdout)."""
    cmd = [sys.executable, __file__, "--onednn-child", "--preset", args.preset, "--precision", args.precision,
           "--memory-formats", memory_format, "--threads", str(args.threads), "--steps", str(args.steps),
           "--adamw-impl", args.adamw_impl]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    times = collections.Counter()
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 8 and fields[0] == "onednn_verbose" and fields[3] == "exec":
            kind, impl, direction = fields[5], fields[6], fields[7]
            key = "reorder" if kind == "reorder" else f"{kind} {impl} {direction}"
            times[key] += float(fields[-1]) / args.steps
    return dict(times.most_common())


def onednn_child(args) -> None:
    step, _ = make_step(args, args.memory_formats)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        for _ in range(args.steps):
            step()


def to_markdown(result: dict) -> str:
    lines = [f"# Where the time goes: {result['preset']} training step, {result['precision']}, "
             f"{result['threads']} thread(s), batch {result['batch']}"
             + (f", {result['adamw_impl']} AdamW" if "adamw_impl" in result else ""), "",
             *speed.provenance_lines(result, "profile.json")]
    for fmt, r in result["formats"].items():
        total = r["ms_per_step"]
        lines += [f"## {fmt}: {total:.1f} ms per step ({r['images_per_s']:.1f} images/s under the profiler)", "",
                  "| category | ms per step | share |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in r["categories"].items()]
        lines += ["", "Largest in other: " + ", ".join(f"{k} {v:.1f} ms" for k, v in r["other_top"].items()), ""]
        if "optimizer_step_ms" in r:
            lines += [f"The AdamW step ({result.get('adamw_impl', '?')}), all it runs: {r['optimizer_step_ms']:.1f} ms "
                      "per step (torch.optim's own range).", ""]
        if r.get("onednn"):
            lines += ["| oneDNN primitive | ms per step |", "|---|---|"]
            lines += [f"| {k} | {v:.1f} |" for k, v in r["onednn"].items() if v >= 0.5]
            lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """One horizontal bar per memory format, split into the categories' ms per step."""
    from matplotlib.figure import Figure

    formats = list(result["formats"])
    cats = sorted({c for r in result["formats"].values() for c in r["categories"]},
                  key=lambda c: -max(r["categories"].get(c, 0.0) for r in result["formats"].values()))
    fig = Figure(figsize=(9, max(2.8, 1.0 + 0.6 * len(formats))), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    left = [0.0] * len(formats)
    for cat in cats:
        widths = [result["formats"][f]["categories"].get(cat, 0.0) for f in formats]
        ax.barh(formats, widths, left=left, label=cat)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("ms per training step (self CPU time)")
    ax.set_title(f"{result['preset']}, {result['precision']}, {result['threads']} thread(s), batch {result['batch']}"
                 + (f", {result['adamw_impl']} AdamW" if "adamw_impl" in result else ""))
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.onednn_child:
        onednn_child(args)
        return {}
    precision = rt.resolve_precision(args.precision, "cpu")
    result = {"preset": args.preset, "precision": precision, "threads": args.threads, "steps": args.steps,
              "adamw_impl": rt.resolve_adamw_impl(args.adamw_impl, "cpu"),
              "batch": args.batch or make_config(args.preset).train.batch_size, "formats": {},
              **speed.provenance("speed_profile.py", argv, "cpu")}
    for fmt in args.memory_formats.split(","):
        rt.check_options(memory_format=fmt)
        print(f"profiling {args.steps} {fmt} steps of {args.preset}...", flush=True)
        r = profile_categories(args, fmt)
        if not args.no_onednn:
            print(f"oneDNN's account of {args.steps} {fmt} steps...", flush=True)
            r["onednn"] = onednn_account(args, fmt)
        result["formats"][fmt] = r
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "profile.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "profile.md", to_markdown(result))
    plot(result, out / "profile.png")
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
