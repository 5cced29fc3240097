"""Classifier-FID against network evaluations for ancestral sampling, DDIM and DPM-Solver++(2M), as ODE
and SDE solver (issue 6), with diffusers' DDIMScheduler and DPMSolverMultistepScheduler driving the same
trained model.

For every sampler and every number of network evaluations (NFE: 10, 20, 50, 100, 1000 by default) it
draws ``--n`` images from the same starting noise (image i from seed SEED + i), embeds them with a
classifier trained on the data set (``ddpm.evaluation``; its penultimate layer is the feature space)
and computes the Frechet distance to the features of the real images. Every sampler of ours makes
exactly NFE network calls (its grid starts at T-1 and ends at 0); the diffusers loops make one call
per entry of ``scheduler.timesteps``, with their own 0-based timesteps passed straight to our network
(the same convention as ours: ``alphas_cumprod[t]``, t in 0..T-1), their betas set to ours and their
``prediction_type`` set to the run's. diffusers variants: ``ddim`` (their default "leading" spacing,
which never calls the network at t = T-1: diffusers #2585), ``ddim-trailing`` (their fix),
``dpm++2m`` (their defaults: uniform t, lower-order final, last step to sigma = 0), ``dpm++2m-lu``
(uniform log-SNR, like ``--samplers dpm++2m:logsnr``) and ``dpm++2m-sde`` (``algorithm_type=
"sde-dpmsolver++"``, like ``--samplers dpm++2m-sde``; its noise is drawn from the same per-image seeds).
Their DDIM clips x0 as the run does (``clip_sample``) but keeps the network's eps in the step, while ours
makes eps consistent with the clipped x0 (as openai/guided-diffusion does); their DPM-Solver++ has no
plain clipping, ours clips x0 when the run does.

Writes OUT/results.json (every row: sampler, NFE, FID, seconds), OUT/results.md (a table, plus the
issue's targets: DPM-Solver++, each form, at 20 NFE within 10% of 1000-step ancestral, at 10 within 25%;
each of ours at least as good as diffusers' best variant of the same method at every NFE) and
OUT/fid_vs_nfe.png. The reference statistics are those of every image of the data set; a line "real
data" is the FID of n real images (``ddpm.evaluation.reference.real_floor_images``; all of them when n
reaches the set's size, which then scores about 0) against them: the floor that n samples can reach.
FID with few samples is biased upwards; compare rows of one run only.

Full runs (not run by the tests; on a GPU they take minutes, on a 2-core CPU hours):

    .venv/bin/python benchmarks/fast_sampling.py --checkpoint runs/digits --n 2000 \\
        --out benchmarks/results/fast_sampling-digits
    # on a 2-core CPU (about 15 minutes for the 8x8 digits): 1000 NFE for the ancestral reference only
    .venv/bin/python benchmarks/fast_sampling.py --checkpoint bench_out/quality_digits/ours --n 1000 \\
        --only-ancestral-above 100 --out bench_out/fast_sampling_digits
    .venv/bin/python benchmarks/fast_sampling.py --checkpoint runs/mnist --n 10000 \\
        --out benchmarks/results/fast_sampling-mnist

The classifier is ``--classifier DIR`` (saved by ``ddpm.evaluation.classifier.save_classifier``), else
the data set's cached one from ``ddpm.evaluation.reference.cached_classifier`` (trained on first use,
``--classifier-epochs``). Tiny smoke test (tests/test_fast_sampling_benchmark.py): a tiny run,
``--n 32 --nfe 5 10 --classifier-epochs 1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.data.datasets import load_dataset
from ddpm.errors import UserError
from ddpm.io import resolve_device, write_text_atomic
from ddpm.pipeline import SamplingOptions, load_run
from ddpm.sampling import SAMPLERS
from ddpm.sampling.noise import randn, seed_generators

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import provenance, provenance_lines  # noqa: E402  (CPU model and flags, the command)

# diffusers variant -> the method (our sampler's name) it is compared with
DIFFUSERS_VARIANTS = {"ddim": "ddim", "ddim-trailing": "ddim", "dpm++2m": "dpm++2m", "dpm++2m-lu": "dpm++2m",
                      "dpm++2m-sde": "dpm++2m-sde"}


# --- the metric: ddpm.evaluation's classifier features and Frechet distance -----------------------------


def classifier_metric(args, data, device):
    """(extractor, reference statistics) of the data set's own classifier: --classifier, else
    ddpm.evaluation's cached one (trained once)."""
    from ddpm.evaluation.classifier import ClassifierTrainConfig
    from ddpm.evaluation.features import make_extractor
    from ddpm.evaluation.reference import classifier_reference, reference_stats

    if args.classifier:
        extractor = make_extractor("classifier", classifier=args.classifier, device=device)
        return extractor, reference_stats(data, extractor, device=device, batch_size=args.batch_size)
    cfg = ClassifierTrainConfig(device=str(device))
    if args.classifier_epochs:
        cfg.epochs = args.classifier_epochs
    return classifier_reference(data, cfg=cfg, device=device, batch_size=args.batch_size)


def fid_of(images: torch.Tensor, extractor, ref, args, device) -> tuple[float, float]:
    """(FID, its bootstrap standard error over the draw of the images), as ``ddpm evaluate`` computes them."""
    from ddpm.evaluation.report import score_images

    m = score_images(["fid"], images, extractor, ref, batch_size=args.batch_size, device=device, seed=args.seed)
    return m["fid"], m["fid_se"]


# --- the samplers -------------------------------------------------------------------------------------


def ours(run, name: str, grid: str | None, nfe: int, args) -> torch.Tensor:
    from ddpm.evaluation.samples import generate_samples

    return generate_samples(run, args.n, seed=args.seed, batch_size=args.batch_size, progress=False,
                            sampling=SamplingOptions(name, steps=nfe, grid=grid))


def make_scheduler(run, variant: str):
    """A diffusers scheduler over our schedule's betas and the run's prediction type."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    d = run.config.diffusion
    common = dict(num_train_timesteps=run.schedule.num_timesteps,
                  trained_betas=run.schedule.betas.numpy().astype(np.float32),
                  prediction_type={"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[d.prediction])
    if variant == "ddim":
        return DDIMScheduler(**common, clip_sample=d.clip_x0)
    if variant == "ddim-trailing":
        return DDIMScheduler(**common, clip_sample=d.clip_x0, timestep_spacing="trailing")
    if variant == "dpm++2m":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    if variant == "dpm++2m-lu":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           use_lu_lambdas=True)
    if variant == "dpm++2m-sde":
        return DPMSolverMultistepScheduler(**common, algorithm_type="sde-dpmsolver++", solver_order=2)
    raise UserError(f"unknown diffusers variant {variant!r}; choose from {', '.join(DIFFUSERS_VARIANTS)}")


@torch.no_grad()
def theirs(run, variant: str, nfe: int, args, device) -> tuple[torch.Tensor, list[int]]:
    """diffusers' own loop (set_timesteps, then model(x, t) and step per timestep) around our U-Net;
    image i starts from the x_T of seed SEED + i, as ours do, and draws its step noise from that seed's
    generator after x_T, as ours do."""
    cfg = run.config
    out, calls = [], []
    for start in range(0, args.n, args.batch_size):
        gens = seed_generators(range(args.seed + start, args.seed + min(args.n, start + args.batch_size)))
        scheduler = make_scheduler(run, variant)  # a fresh one per batch: the multistep solver keeps history
        scheduler.set_timesteps(nfe, device=device)
        shape = (len(gens), cfg.model.in_channels, *cfg.model.image_size)
        x = randn(shape, gens, device) * scheduler.init_noise_sigma  # the x_T Run.sample draws
        calls = []
        for t in scheduler.timesteps:
            tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
            model_out = run.model(scheduler.scale_model_input(x, t), tt)
            noise = {"variance_noise": randn(shape, gens, device)} if variant.endswith("-sde") else {}
            x = scheduler.step(model_out[:, : cfg.model.in_channels], t, x, **noise).prev_sample  # mean channels
            calls.append(int(t))
        out.append(x.float().cpu())
    return torch.cat(out), calls


# --- the benchmark --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="trained run folder")
    p.add_argument("--data", help="reference data set (default: the run's)")
    p.add_argument("--data-dir")
    p.add_argument("--n", type=int, default=2000, help="samples per (sampler, NFE) (default: 2000)")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    p.add_argument("--samplers", nargs="+",
                   default=["ancestral", "ddim", "dpm++2m", "dpm++2m:logsnr", "dpm++2m-sde", "dpm++2m-sde:logsnr"],
                   help="ours, as NAME or NAME:GRID (e.g. dpm++2m:even)")
    p.add_argument("--diffusers", nargs="*", default=list(DIFFUSERS_VARIANTS),
                   help=f"diffusers variants ({', '.join(DIFFUSERS_VARIANTS)}); none with an empty list")
    p.add_argument("--classifier", help="a saved classifier folder (default: train one on the data)")
    p.add_argument("--classifier-epochs", type=int, help="train the classifier this long (default: ddpm "
                   "evaluate's setting, so the cached one is shared with it and benchmarks/quality.py)")
    p.add_argument("--only-ancestral-above", type=int, metavar="K",
                   help="NFE above K only for ours' ancestral sampler (the 1000-step reference), to save time")
    p.add_argument("--ancestral-from", metavar="RESULTS_JSON",
                   help="take the T-step ancestral row from benchmarks/improved_ddpm.py's results for this "
                   "checkpoint (same --n, --seed and classifier) instead of sampling it again")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from ddpm.evaluation.reference import real_floor_images

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, device)
    T = run.schedule.num_timesteps
    data = load_dataset(args.data or run.config.train.data, args.data_dir or run.config.train.data_dir)
    extractor, ref = classifier_metric(args, data, device)
    real, real_label = real_floor_images(data, args.n, args.seed)
    floor, _ = fid_of(real, extractor, ref, args, device)

    nfes = sorted({k for k in args.nfe if 1 <= k <= T})
    if set(args.nfe) - set(nfes):
        print(f"skipping NFE {sorted(set(args.nfe) - set(nfes))}: the run has T = {T} steps")
    jobs = []
    for spec in args.samplers:
        name, _, grid = spec.partition(":")
        if name not in SAMPLERS:
            raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        jobs.append(("ours", name, grid or None, f"{name} ({grid or SAMPLERS[name].default_grid})"))
    for variant in args.diffusers:
        make_scheduler(run, variant)  # fail early on a bad name or a missing diffusers
        jobs.append(("diffusers", variant, None, f"diffusers {variant}"))
    families = {label: DIFFUSERS_VARIANTS[name] if kind == "diffusers" else name for kind, name, _, label in jobs}

    rows = [ancestral_row_from(args.ancestral_from, args, T, extractor.info)] if args.ancestral_from else []
    bar = tqdm(total=len(jobs) * len(nfes), desc="fast sampling benchmark")
    cap = args.only_ancestral_above
    for kind, name, grid, label in jobs:
        for nfe in nfes:
            if cap is not None and nfe > cap and not (kind == "ours" and name == "ancestral"):
                bar.update(1)
                continue
            t0 = time.perf_counter()
            row = {"sampler": label, "kind": kind, "method": families[label], "nfe": nfe}
            if kind == "ours":
                x = ours(run, name, grid, nfe, args)
            else:
                try:
                    x, calls = theirs(run, name, nfe, args, device)
                    row.update(network_calls=len(calls), first_timestep=calls[0], last_timestep=calls[-1])
                except Exception as e:  # noqa: BLE001 - a peer's scheduler failing here is a result to report
                    x = None
                    row["error"] = f"{type(e).__name__}: {e}"
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["seconds"] = time.perf_counter() - t0
            row["fid"], row["fid_se"] = (None, None) if x is None else fid_of(x, extractor, ref, args, device)
            rows.append(row)
            bar.update(1)
            bar.set_postfix(sampler=label, nfe=nfe, fid="error" if x is None else f"{row['fid']:.3f}")
    bar.close()

    result = {"checkpoint": str(args.checkpoint), "data": data.name, "n": args.n, "ref_n": ref.num_images,
              "timesteps": T, "device": str(device), "real_data_fid": floor,
              "real_data_images": real_label, "classifier": extractor.info,
              "rows": rows, "targets": targets(rows), **provenance("fast_sampling.py", argv, device)}
    write_text_atomic(out / "results.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(out / "results.md", markdown(result))
    plot(result, out / "fid_vs_nfe.png")
    print((out / "results.md").read_text())
    return result


def ancestral_row_from(path: str, args, T: int, classifier_info: dict) -> dict:
    """The T-step ancestral row of ``args.checkpoint`` as benchmarks/improved_ddpm.py measured it, after
    checking that it scored the same number of samples from the same seeds with the same classifier."""
    try:
        r = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--ancestral-from {path}: cannot read it ({e})") from None
    me = Path(args.checkpoint).resolve()
    model = next((m for m in r.get("models", {}).values() if Path(m.get("checkpoint", "")).resolve() == me), None)
    if model is None or str(T) not in model.get("fid", {}):
        raise UserError(f"--ancestral-from {path}: no {T}-step FID of {args.checkpoint} in it")
    if (r.get("n_fid"), r.get("seed")) != (args.n, args.seed):
        raise UserError(f"--ancestral-from {path}: it scored n={r.get('n_fid')} seed={r.get('seed')}, "
                        f"this run n={args.n} seed={args.seed}")
    if r.get("classifier") != json.loads(json.dumps(classifier_info, default=str)):  # as it was saved
        raise UserError(f"--ancestral-from {path}: it used another classifier")
    row = model["fid"][str(T)]
    return {"sampler": "ancestral (even)", "kind": "ours", "method": "ancestral", "nfe": T, "fid": row["fid"],
            "fid_se": row["fid_se"], "seconds": row["seconds"], "source": str(path)}


def targets(rows) -> dict:
    """Issue 6: DPM-Solver++ (ODE and SDE form, each on its first grid) at 20 NFE within 10% of the
    1000-step (here: most-step) ancestral FID, at 10 within 25%; and each of ours at least as good as the
    best diffusers variant of the same method at each NFE ("met"), or worse by less than one standard error
    of the difference ("met_within_se": the two do not differ measurably)."""
    fid = {(r["sampler"], r["nfe"]): r["fid"] for r in rows if r["fid"] is not None}
    se = {(r["sampler"], r["nfe"]): r["fid_se"] for r in rows if r["fid"] is not None}
    ours_rows = [r for r in rows if r["kind"] == "ours" and r["fid"] is not None]
    first = {}  # method -> our first row label of it (its first grid)
    for r in ours_rows:
        first.setdefault(r["method"], r["sampler"])
    out = {}
    anc = [r for r in ours_rows if r["method"] == "ancestral"]
    for method in ("dpm++2m", "dpm++2m-sde"):
        dpm = first.get(method)
        if not (anc and dpm):
            continue
        base = max(anc, key=lambda r: r["nfe"])
        for nfe, tol in ((20, 0.10), (10, 0.25)):
            if (dpm, nfe) in fid:
                out[f"{dpm} @ {nfe} NFE within {tol:.0%} of ancestral @ {base['nfe']}"] = {
                    "fid": fid[(dpm, nfe)], "reference": base["fid"], "ratio": fid[(dpm, nfe)] / base["fid"],
                    "met": fid[(dpm, nfe)] <= (1 + tol) * base["fid"]}
    for method, mine in first.items():
        for nfe in sorted({r["nfe"] for r in rows}):
            peers = [r for r in rows if r["kind"] == "diffusers" and r["method"] == method and r["nfe"] == nfe
                     and r["fid"] is not None]
            if (mine, nfe) in fid and peers:
                best = min(peers, key=lambda r: r["fid"])
                noise = (se[(mine, nfe)] ** 2 + best["fid_se"] ** 2) ** 0.5  # SE of the difference
                out[f"{mine} @ {nfe} NFE at least as good as {best['sampler']}"] = {
                    "fid": fid[(mine, nfe)], "reference": best["fid"], "ratio": fid[(mine, nfe)] / best["fid"],
                    "met": fid[(mine, nfe)] <= best["fid"], "difference_se": noise,
                    "met_within_se": fid[(mine, nfe)] <= best["fid"] + noise}
    return out


def markdown(result) -> str:
    rows = result["rows"]
    nfes = sorted({r["nfe"] for r in rows})
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    by = {(r["sampler"], r["nfe"]): r for r in rows}

    def cell(r):
        return "error" if r["fid"] is None else f"{r['fid']:.3f} ± {r['fid_se']:.3f} ({r['seconds']:.0f} s)"

    lines = [f"# Classifier-FID vs network evaluations: {result['data']}, {result['n']} samples, "
             f"T = {result['timesteps']}, {result['device']}", "",
             f"Real data ({result['real_data_images']} images vs all {result['ref_n']}): FID {result['real_data_fid']:.3f}", "",
             "Each cell: FID ± its bootstrap standard error over the draw of the samples (time to sample).", "",
             "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
             "|---|" + "---:|" * len(nfes)]
    for s in samplers:
        lines.append(f"| {s} | " + " | ".join(cell(by[(s, k)]) if (s, k) in by else "-" for k in nfes) + " |")
    lines.append("")
    for name, t in result["targets"].items():
        within = "" if "met_within_se" not in t else (
            f"; within one SE of the difference ({t['difference_se']:.3f}): {'yes' if t['met_within_se'] else 'no'}")
        lines.append(f"- {name}: {t['fid']:.3f} vs {t['reference']:.3f} (x{t['ratio']:.2f}): "
                     f"{'met' if t['met'] else 'NOT met'}{within}")
    errors = [r for r in rows if r.get("error")]
    for r in errors:
        lines.append(f"- {r['sampler']} @ {r['nfe']} NFE failed: {r['error']}")
    lines += ["", *provenance_lines(result)]
    return "\n".join(lines).rstrip() + "\n"


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in dict.fromkeys(r["sampler"] for r in result["rows"]):
        pts = sorted((r["nfe"], r["fid"], r["fid_se"]) for r in result["rows"]
                     if r["sampler"] == s and r["fid"] is not None)
        if not pts:
            continue
        ours_ = not s.startswith("diffusers")
        nfe, fid, se = zip(*pts)  # error bars: the FID's bootstrap standard error
        ax.errorbar(nfe, fid, yerr=se, marker="o" if ours_ else "x", linestyle="-" if ours_ else "--", capsize=2,
                    label=s)
    ax.axhline(result["real_data_fid"], color="gray", linestyle=":", label="real data")
    ax.set_xscale("log")
    if min((r["fid"] for r in result["rows"] if r["fid"] is not None), default=0) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("network evaluations")
    ax.set_ylabel("classifier-FID")
    ax.set_title(f"{result['data']}: {result['n']} samples per point (bars: ± standard error)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
