"""Guidance as wrappers of the denoiser: ``guided(x_t, t) -> Prediction``, so every sampler takes it.

Classifier-free guidance (Ho & Salimans 2022, Eq. 6 with w the guidance strength):

    eps~(x_t, y) = (1 + w) eps(x_t, y) - w eps(x_t, none),

with "none" the U-Net's learned "no label" entry (index ``num_classes``), or for a text model the empty
caption's tokens (``ddpm.models.text.null_tokens``, LDM's unconditional input). Both passes go through the
network as one batch of 2N. The combination is taken on the raw network output and the ``Denoiser`` then
derives (eps, x0) from it (``ddpm.diffusion.parametrization``) and clips x0 as it always does. For every
prediction type eps is affine in the output at fixed x_t (eps = A out + B x_t), and the weights
(1 + w) and -w sum to 1, so combining outputs *is* combining eps, and x0 is rederived from the guided
eps; with w = 0 the wrapper computes exactly what the plain conditional ``Denoiser`` does. A learned
variance is taken from the conditional pass.

Classifier guidance (Dhariwal & Nichol 2021) with a noise-aware classifier p(y | x_t, t) and scale s,
g = grad_{x_t} log p(y | x_t, t), in two forms:

- ``"score"`` (Algorithm 2, for DDIM and any sampler): eps' = eps - sqrt(1 - abar_t) s g, and
  x0' = (x_t - sqrt(1 - abar_t) eps') / sqrt(abar_t) = x0 + (1 - abar_t) / sqrt(abar_t) s g.
- ``"mean_shift"`` (Algorithm 1, for ancestral sampling): x_{t'} ~ N(mu + s Sigma g, Sigma). The
  ancestral mean is mu = c_x0 x0 + c_xt x_t (Ho et al. Eq. 7 with the grid step's coefficients,
  ``ancestral.grid_step_coefficients``), linear in x0, so

      mu + s Sigma g = c_x0 (x0 + s Sigma g / c_x0) + c_xt x_t:

  the wrapper returns x0' = x0 + (s Sigma / c_x0) g (and the eps consistent with it) and the unchanged
  ancestral sampler takes Algorithm 1's step exactly. Sigma is the variance that sampler uses at that
  step (beta', beta-tilde' or the learned one); so the wrapper needs the grid and the variance choice.
  On the full grid with Sigma = beta_t, s Sigma / c_x0 = s (1 - abar_t) / sqrt(abar_{t-1}).

The score form used in ancestral sampling shifts the mean by c_x0 (1 - abar_t) / sqrt(abar_t) s g =
s beta_t / sqrt(alpha_t) g on the full grid: Algorithm 1 with Sigma = beta_t / sqrt(alpha_t) ~ beta_t
(1 + beta_t / 2). As in openai/guided-diffusion both forms shift the (clipped) x0 of the wrapped
denoiser and do not clip again.
"""

from __future__ import annotations

import math

import torch

from ddpm.diffusion.likelihood import model_log_variance, split_output
from ddpm.diffusion.parametrization import eps_from_x0, to_eps_x0
from ddpm.diffusion.schedule import Schedule
from ddpm.errors import UserError
from ddpm.models.text import null_tokens
from ddpm.sampling.ancestral import grid_step_coefficients
from ddpm.sampling.denoiser import Denoiser, Prediction
from ddpm.sampling.steps import grid_or_full

FORMS = ("score", "mean_shift")


def as_labels(y, n: int, device) -> torch.Tensor | None:
    """Class labels as a (n,) int64 tensor on ``device``: an int means n copies of it; None stays None."""
    if y is None:
        return None
    y = torch.as_tensor(y, dtype=torch.long, device=device)
    if y.ndim == 0:
        return y.expand(n).clone()
    if y.shape != (n,):
        raise ValueError(f"labels of shape {tuple(y.shape)} for a batch of {n}")
    return y


def check_labels(num_classes: int | None, y: torch.Tensor | None, *, guidance: float | None = None,
                 classifier_classes: int | None = None) -> None:
    """One-line errors: labels or guidance for a model (and classifier) that cannot take them.

    An unconditional model can be steered to a class by a classifier alone; without one, labels and
    classifier-free guidance need a model trained with ``--conditional``.
    """
    if guidance is not None and not num_classes:
        raise UserError("classifier-free guidance needs a class-conditional model (train with --conditional); "
                        "this one is unconditional")
    if guidance is not None and y is None:
        raise UserError("classifier-free guidance needs the classes to draw (--class K or --classes all)")
    if y is None:
        return
    if not num_classes and classifier_classes is None:
        raise UserError("the model is unconditional (trained without --conditional): a class needs a conditional "
                        "model or a noisy classifier (--classifier PATH --classifier-scale S)")
    for what, k in (("model", num_classes), ("classifier", classifier_classes)):
        if k and (y.min() < 0 or y.max() >= k):
            bad = int(y[(y < 0) | (y >= k)][0])
            raise UserError(f"class {bad} is not one the {what} knows: it has {k} classes, 0 to {k - 1}")


def null_condition(model, n: int, device) -> torch.Tensor:
    """The "no condition" input of classifier-free guidance for ``n`` examples: the (n,) "no label" index
    ``num_classes`` of a class model, the (n, max_tokens) tokens of the empty caption of a text model."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "text_encoder", "none") != "none":
        return null_tokens(cfg, n).to(device)
    if getattr(cfg, "num_classes", None):
        return torch.full((n,), cfg.num_classes, dtype=torch.long, device=device)
    raise UserError("classifier-free guidance needs a class-conditional or text model; this one is unconditional")


class ClassifierFreeGuidance:
    """Classifier-free guidance of strength ``scale`` (w) around a conditional ``Denoiser`` with labels set.

    The unconditional pass uses label ``null_label`` (default: the model's ``num_classes``, the U-Net's
    "no label" entry); a text model's (``denoiser.y`` holds (N, L) token ids) uses the empty caption
    (``null_condition``). Both passes are one batched network call; the outputs are combined (see the
    module docstring) and converted by the wrapped denoiser, so clipping and the prediction type are its.
    """

    def __init__(self, denoiser: Denoiser, scale: float, *, null_label: int | None = None):
        if denoiser.y is None:
            raise ValueError("classifier-free guidance needs a denoiser with labels (y)")
        cfg = getattr(denoiser.model, "config", None)
        self.text = getattr(cfg, "text_encoder", "none") != "none"
        if null_label is None and not self.text:
            null_label = getattr(cfg, "num_classes", None)
            if not null_label:
                raise UserError("classifier-free guidance needs a class-conditional model")
        self.denoiser, self.scale, self.null_label = denoiser, float(scale), null_label

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction:
        d = self.denoiser
        tt = d.timestep_batch(x_t, t)
        if self.null_label is None:  # a text model: the empty caption
            null = null_condition(d.model, d.y.shape[0], d.y.device)
        else:
            null = torch.full_like(d.y, self.null_label)
        out = d.model(torch.cat([x_t, x_t]), torch.cat([tt, tt]), torch.cat([d.y, null])).float()
        cond, uncond = out.chunk(2)
        mean_c, var_c = split_output(cond, d.variance)
        mean_u, _ = split_output(uncond, d.variance)
        w = self.scale
        mean = (1 + w) * mean_c - w * mean_u  # Ho & Salimans Eq. 6, on the output (see the module docstring)
        return d.convert(mean if var_c is None else torch.cat([mean, var_c], dim=1), x_t, t)


def classifier_log_prob_grad(classifier, x_t: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
    """grad_{x_t} log p(y | x_t, t) per example (N, C, H, W), in float32; works inside inference mode.

    The classifier treats examples independently (GroupNorm, no batch statistics), so the gradient of
    the summed log-probabilities is each example's own.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.detach().float().clone().requires_grad_(True)  # a clone: inference tensors take no grad
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        log_p = torch.log_softmax(classifier(x, tt).float(), dim=1)
        selected = log_p[torch.arange(x.shape[0], device=x.device), y.to(x.device)].sum()
        (grad,) = torch.autograd.grad(selected, x)
    return grad


class ClassifierGuidance:
    """Classifier guidance of scale ``scale`` around any denoiser (Dhariwal & Nichol Algorithms 1 and 2).

    ``form="score"`` works for every sampler; ``form="mean_shift"`` is Algorithm 1 for
    ``sample_ancestral`` run on ``timesteps`` (default: all T) with the given ``variance``. See the module
    docstring for both derivations.
    """

    def __init__(self, denoise, classifier, y: torch.Tensor, scale: float, schedule: Schedule, *,
                 form: str = "score", timesteps: list[int] | None = None, variance: str = "beta"):
        if form not in FORMS:
            raise ValueError(f"unknown classifier-guidance form {form!r}; choose one of {', '.join(FORMS)}")
        self.denoise, self.classifier, self.y, self.scale = denoise, classifier, y, float(scale)
        self.form, self.variance = form, variance
        self._a = schedule.host.sqrt_alphas_cumprod
        self._s = schedule.host.sqrt_one_minus_alphas_cumprod
        if form == "mean_shift":
            grid = grid_or_full(schedule, timesteps)
            nxt = {t: (grid[i + 1] if i + 1 < len(grid) else None) for i, t in enumerate(grid)}
            self._steps = {t: grid_step_coefficients(schedule, t, t_prev) for t, t_prev in nxt.items()}

    def step_variance(self, t: int, pred: Prediction):
        """Sigma of Algorithm 1 at step t: the variance ``sample_ancestral`` draws with (float or tensor).

        At the end of the grid (no noise is drawn) beta-tilde' = 0 and a learned variance, whose lower
        end is beta-tilde', is taken as 0 too; sigma^2 = beta keeps beta'.
        """
        c = self._steps[t]
        if self.variance in ("beta", "beta_tilde"):
            return c[self.variance]
        if c["beta_tilde"] <= 0:
            return 0.0
        return torch.exp(model_log_variance(pred.variance, self.variance, math.log(c["beta"]),
                                            math.log(c["beta_tilde"])))

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction:
        pred = self.denoise(x_t, t)
        if self.scale == 0:
            return pred
        grad = classifier_log_prob_grad(self.classifier, x_t, t, self.y)
        a, s = self._a[t], self._s[t]
        if self.form == "score":
            eps = pred.eps - s * self.scale * grad  # Algorithm 2
            x0 = to_eps_x0(eps, x_t, a, s, "eps")[1]
        else:
            x0 = pred.x0 + (self.scale * self.step_variance(t, pred) / self._steps[t]["coef_x0"]) * grad
            eps = eps_from_x0(x0, x_t, a, s)
        return Prediction(eps=eps, x0=x0, variance=pred.variance)


def guide(denoiser: Denoiser, *, y: torch.Tensor | None, guidance: float | None = None, classifier=None,
          classifier_scale: float = 0.0, sampler: str = "ancestral", timesteps: list[int] | None = None,
          variance: str = "beta"):
    """The denoiser the pipeline runs: ``denoiser`` with classifier-free guidance of strength
    ``guidance`` (None: off) and then classifier guidance of scale ``classifier_scale`` (Algorithm 1 for
    ancestral sampling, Algorithm 2 for the others)."""
    denoise = denoiser
    if guidance is not None:
        denoise = ClassifierFreeGuidance(denoiser, guidance)
    if classifier is not None and classifier_scale:
        if y is None:
            raise UserError("classifier guidance needs the classes to draw (--class K or --classes all)")
        form = "mean_shift" if sampler == "ancestral" else "score"
        denoise = ClassifierGuidance(denoise, classifier, y, classifier_scale, denoiser.schedule, form=form,
                                     timesteps=timesteps, variance=variance)
    return denoise
