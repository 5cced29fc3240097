"""How far DPM-Solver++(2M) (``ddpm.sampling.dpm_solver``) lands from the probability-flow ODE's solution,
for its two choices: the grid (uniform t, ``even``, or uniform log-SNR, ``logsnr``) and the last step
(first-order "lower order final", the default, or second-order).

Two parts, both deterministic (no timing: the figures do not depend on the machine beyond rounding):

- ``gaussian``: data N(mu, v I) in 4 dimensions, where E[x0 | x_t] and the ODE's solution are exact
  (the problem of tests/test_samplers.py), for v in ``--variances``, the linear and cosine schedules,
  both grids and ``--gaussian-steps`` network calls: the largest error over 256 samples of each last step,
  and which of the two is closer (a tie: within ``--tie`` of each other, relative).
- ``model`` (with ``--checkpoint``): a trained run's EMA model in float32 from ``--n`` seeded noises; the
  reference is DPM-Solver++(2M) on all the run's timesteps from the same noise, and each setting's
  root-mean-square distance to it (over pixels and samples) at ``--calls`` network calls; again against
  the reference with a second-order last step, and the two references' distance to each other.

Writes ``--out``/results.json and results.md, with the command:

    .venv/bin/python benchmarks/solver_error.py --checkpoint bench_out/q3k/ours --out bench_out/solver_error  # ~4 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (provenance of result files)

from ddpm.diffusion.schedule import make_schedule  # noqa: E402
from ddpm.errors import UserError  # noqa: E402
from ddpm.pipeline import load_run  # noqa: E402
from ddpm.sampling.denoiser import Prediction  # noqa: E402
from ddpm.sampling.dpm_solver import sample_dpmpp_2m  # noqa: E402
from ddpm.sampling.grids import timestep_grid  # noqa: E402
from ddpm.sampling.noise import randn, seed_generators  # noqa: E402

MU = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=torch.float64)
# (grid, lower_order_final) of the model part's columns
SETTINGS = {"even, first-order last step": ("even", True), "logsnr, first-order last step": ("logsnr", True),
            "even, second-order last step": ("even", False)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a run folder for the model part (default: the Gaussian part alone)")
    p.add_argument("--n", type=int, default=256, help="samples of the model part")
    p.add_argument("--calls", default="10,20,50", help="network calls of the model part, comma-separated")
    p.add_argument("--variances", default="0.04,0.25,1", help="data variances of the Gaussian part")
    p.add_argument("--gaussian-steps", default="10,15,20,30,50,100", help="network calls of the Gaussian part")
    p.add_argument("--tie", type=float, default=0.05, help="relative difference counted as a tie (default 0.05)")
    p.add_argument("--out", default="bench_out/solver_error")
    args = p.parse_args(argv)
    try:
        args.calls = [int(v) for v in args.calls.split(",")]
        args.gaussian_steps = [int(v) for v in args.gaussian_steps.split(",")]
        args.variances = [float(v) for v in args.variances.split(",")]
    except ValueError as e:
        p.error(f"--calls, --gaussian-steps and --variances take comma-separated numbers ({e})")
    if args.checkpoint and not Path(args.checkpoint).exists():
        p.error(f"--checkpoint {args.checkpoint}: no such run folder")
    return args


def gaussian_denoiser(schedule, var: float):
    """Exact E[x0 | x_t] for data N(MU, var I): x0 | x_t is Gaussian."""
    a_tab = schedule.sqrt_alphas_cumprod.tolist()
    s_tab = schedule.sqrt_one_minus_alphas_cumprod.tolist()

    def denoise(x_t, t):
        a, s = a_tab[t], s_tab[t]
        x0 = MU + a * var / (a * a * var + s * s) * (x_t - a * MU)
        return Prediction(eps=(x_t - a * x0) / s, x0=x0)

    return denoise


def exact_solution(schedule, var: float, x_T: torch.Tensor) -> torch.Tensor:
    """The ODE from T-1 down to t = 0 in closed form, then E[x0 | x_0] (what a sampler's last call returns):
    z = (x_t - a_t MU) / r_t, r_t = sqrt(a_t^2 var + sigma_t^2), is constant along the ODE."""
    def radius(t):
        a, s = schedule.sqrt_alphas_cumprod[t].item(), schedule.sqrt_one_minus_alphas_cumprod[t].item()
        return a, (a * a * var + s * s) ** 0.5

    a_T, r_T = radius(schedule.num_timesteps - 1)
    a_0, r_0 = radius(0)
    return MU + a_0 * var / r_0 * (x_T - a_T * MU) / r_T


def gaussian_part(args) -> dict:
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cases, skipped = [], []
    for name in ("linear", "cosine"):
        s = make_schedule(name, 1000)
        for var in args.variances:
            denoise, ref = gaussian_denoiser(s, var), exact_solution(s, var, x_T)
            for grid_kind in ("even", "logsnr"):
                for k in args.gaussian_steps:
                    try:
                        grid = timestep_grid(1000, k, grid_kind, schedule=s)
                    except UserError as e:  # points collide on the training grid
                        skipped.append(f"{name} {grid_kind} {k}: {e}")
                        continue
                    err = {last: (sample_dpmpp_2m(denoise, x_T, s, grid, lower_order_final=lof, progress=False)
                                  - ref).abs().max().item() for last, lof in (("first", True), ("second", False))}
                    f, sec = err["first"], err["second"]
                    verdict = "tie" if abs(f - sec) <= args.tie * max(f, sec) else ("first" if f < sec else "second")
                    cases.append({"schedule": name, "variance": var, "grid": grid_kind, "calls": k,
                                  "max_error_first_order_last": f, "max_error_second_order_last": sec,
                                  "closer": verdict})
    counts = {v: sum(c["closer"] == v for c in cases) for v in ("first", "tie", "second")}
    return {"cases": cases, "skipped": skipped, "counts": counts}


def model_part(args) -> dict:
    run = load_run(args.checkpoint)
    denoise = run.denoiser(runtime={"precision": "fp32"})
    s, T = run.schedule, run.schedule.num_timesteps
    x_T = randn((args.n, *run.shape), seed_generators(list(range(args.n))), run.device)
    print(f"references: DPM-Solver++(2M) on all {T} steps, either last step, {args.n} samples...", flush=True)
    # Two references, one per last step, so that neither column is measured against its own kind of last step
    # alone; their distance to each other bounds how much the choice of reference can move the table.
    refs = {lof: sample_dpmpp_2m(denoise, x_T, s, timestep_grid(T, None), lower_order_final=lof)
            for lof in (True, False)}
    rms = {True: {}, False: {}}
    for label, (grid_kind, lof) in SETTINGS.items():
        x_by_calls = {k: sample_dpmpp_2m(denoise, x_T, s, timestep_grid(T, k, grid_kind, schedule=s),
                                         lower_order_final=lof, progress=False) for k in args.calls}
        for ref_lof, ref in refs.items():
            rms[ref_lof][label] = {k: rms_distance(x, ref) for k, x in x_by_calls.items()}
        print(f"  {label}: " + ", ".join(f"{k} calls {v:.4f}" for k, v in rms[True][label].items()), flush=True)
    d = run.config.diffusion
    return {"checkpoint": str(args.checkpoint), "trained_steps": run.step, "schedule": d.schedule,
            "clip_x0": d.clip_x0, "n": args.n, "rms": rms[True], "rms_second_order_reference": rms[False],
            "reference_distance": rms_distance(refs[True], refs[False])}


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square distance over pixels and samples."""
    return (a - b).square().mean().sqrt().item()


def model_table(rms: dict) -> list[str]:
    """One markdown table: a row per number of calls, a column per setting."""
    calls = list(next(iter(rms.values())))
    return ["| network calls | " + " | ".join(SETTINGS) + " |", "| --- |" + " --- |" * len(SETTINGS),
            *(f"| {k} | " + " | ".join(f"{rms[label][k]:.4f}" for label in SETTINGS) + " |" for k in calls), ""]


def to_markdown(r: dict) -> str:
    g = r["gaussian"]
    lines = ["# DPM-Solver++(2M): distance to the ODE's solution", "", *speed.provenance_lines(r)]
    if r.get("model"):
        m = r["model"]
        lines += [(f"## A trained model: `{m['checkpoint']}` ({m['trained_steps']} training steps, {m['schedule']} "
                   f"schedule, clip_x0 {m['clip_x0']}), {m['n']} samples, float32"), "",
                  ("Root-mean-square distance to DPM-Solver++(2M) on every timestep from the same noise, "
                   "with a first-order last step (the default)."), "",
                  *model_table(m["rms"])]
        if "reference_distance" in m:
            lines += [(f"The same with a second-order last step on every timestep as the reference; the two "
                       f"references lie {m['reference_distance']:.2g} apart."), "",
                      *model_table(m["rms_second_order_reference"])]
    c = g["counts"]
    lines += ["## The exact Gaussian problem", "",
              f"{len(g['cases'])} cases (both schedules, variances, grids and numbers of calls): the first-order last "
              f"step was closer in {c['first']}, tied in {c['tie']} (within {r['tie']:.0%}), the second-order one "
              f"closer in {c['second']}." + (f" Skipped (grid points collide): {'; '.join(g['skipped'])}."
                                              if g["skipped"] else ""), "",
              ("| schedule | data variance | grid | calls | max error, first-order last | max error, second-order last "
               "| closer |"), "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {x['schedule']} | {x['variance']:g} | {x['grid']} | {x['calls']} | "
              f"{x['max_error_first_order_last']:.4f} | {x['max_error_second_order_last']:.4f} | {x['closer']} |"
              for x in g["cases"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    r = {"tie": args.tie, "gaussian": gaussian_part(args), "model": model_part(args) if args.checkpoint else None,
         **speed.provenance("solver_error.py", argv, "cpu")}
    speed.write_results(args.out, r, to_markdown(r))
    return r


if __name__ == "__main__":
    main()
