"""The variational bound on the negative log-likelihood in bits per dimension (Ho et al. 2020, Eq. 5;
reported as in Nichol & Dhariwal 2021, Table 1-2), with its per-term breakdown.

For each image the bound is L_T + sum_{t=1}^{T-1} L_{t} + L_0 (0-based t, see
``ddpm.diffusion.likelihood``): every term at every t is evaluated once, at one draw of x_t ~ q(x_t | x0),
so the total is an unbiased single-sample estimate per image and exact in expectation.
"""

from __future__ import annotations

import math

import torch

from ddpm.diffusion.likelihood import p_mean_variance, prior_bpd, quantize, vb_terms_bpd
from ddpm.diffusion.process import q_sample
from ddpm.errors import UserError
from ddpm.io import progress_bar
from ddpm.sampling.noise import randn


@torch.inference_mode()
def evaluate_nll(run, dataset, n: int | None = None, batch_size: int = 256, generator: torch.Generator | None = None,
                 progress: bool = True, *, device=None, seed: int | None = None) -> dict:
    """The NLL bound of ``run`` (a ``ddpm.pipeline.Run``) on the first ``n`` images of ``dataset`` (all by default).

    The noise comes from ``generator`` (or a CPU generator seeded with ``seed``); ``device`` moves the
    run's model there (default: where it is). This is what ``ddpm evaluate --metrics nll`` calls.

    ``dataset`` is an ``ImageDataset`` or an (N, C, H, W) tensor in [-1, 1]; images are snapped to the
    256-level grid the decoder L_0 is defined on (8-bit data is unchanged). Returns bits/dim:
    ``{"bpd", "bpd_stderr", "prior_bpd" (L_T), "vb_bpd" (sum of L_{t-1}), "decoder_bpd" (L_0),
    "per_t" (T values, per_t[t] = mean term at 0-based t, per_t[0] = L_0), "per_image" (each image's
    bound, for paired comparisons of two models on the same images), "n"}``.
    """
    if getattr(run, "first_stage", None) is not None:
        # The bound of a latent run is one of latents under a continuous prior, not of 8-bit images: a
        # number in "bits/dim" would be compared with image bits/dim and mean nothing there.
        raise UserError("the NLL bound of a latent run would be in latent bits/dim, not comparable with image "
                        "bits/dim; it is not computed (score its decoded samples with fid, kid, ...)")
    images = dataset.images if hasattr(dataset, "images") else dataset
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise UserError("evaluate_nll needs an image data set or an (N, C, H, W) tensor")
    if n is not None:
        if n <= 0:
            raise UserError(f"--n must be positive, got {n}")
        images = images[:n]
    if len(images) == 0:
        raise UserError("no images to evaluate the NLL on")
    cfg = run.config
    want = (cfg.model.in_channels, *cfg.model.image_size)
    if tuple(images.shape[1:]) != want:
        raise UserError(f"images of shape {tuple(images.shape[1:])} do not fit the model's {want}")

    model = run.model if device is None else run.model.to(device)
    device = next(model.parameters()).device
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    schedule = run.schedule.to(device)
    T, d = schedule.num_timesteps, cfg.diffusion
    per_t = torch.zeros(T, dtype=torch.float64, device=device)  # summed over images
    totals = []  # per-image bound, for the standard error
    prior_sum = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    batches = range(0, len(images), batch_size)
    bar = progress_bar(total=len(batches) * T, desc="nll", unit="step", disable=not progress, leave=False)
    for start in batches:
        x0 = quantize(images[start:start + batch_size].to(device).float())
        b = len(x0)
        prior = prior_bpd(schedule, x0).double()
        total = prior.clone()
        for t_int in range(T - 1, -1, -1):
            t = torch.full((b,), t_int, device=device, dtype=torch.long)
            x_t = q_sample(schedule, x0, t, randn(x0.shape, generator, device))
            out = model(x_t, t).float()
            p = p_mean_variance(out, x_t, t, schedule, prediction=d.prediction, variance=d.variance,
                                clip_x0=d.clip_x0)
            term = vb_terms_bpd(schedule, x0, x_t, t, p["mean"], p["log_variance"]).double()
            per_t[t_int] += term.sum()
            total += term
            bar.update(1)
        prior_sum += prior.sum()
        totals.append(total)
    bar.close()
    model.train(was_training)

    count = len(images)
    totals = torch.cat(totals)
    per_t = (per_t / count).tolist()  # CPU-GPU sync point, once at the end
    std = totals.std().item() if count > 1 else float("nan")
    return {
        "bpd": totals.mean().item(),
        "bpd_stderr": std / math.sqrt(count),
        "prior_bpd": prior_sum.item() / count,
        "vb_bpd": sum(per_t[1:]),
        "decoder_bpd": per_t[0],
        "per_t": per_t,
        "per_image": totals.tolist(),
        "n": count,
        "timesteps": T,
    }
