"""Improved DDPM (Nichol & Dhariwal 2021): the bound's terms, learned variances, the hybrid and VLB
losses, loss-aware sampling of t, respaced sampling, NLL evaluation, all against closed forms or
independent computations."""

from __future__ import annotations

import json
import math
from collections import deque

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpm.checkpoint import CHECKPOINT, load_training_state
from ddpm.config import derive
from ddpm.data.datasets import load_dataset
from ddpm.diffusion.likelihood import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    p_mean_variance,
    prior_bpd,
    quantize,
    vb_terms_bpd,
)
from ddpm.diffusion.losses import VLB_WEIGHT, hybrid_loss, simple_loss, vlb_loss
from ddpm.diffusion.process import q_sample
from ddpm.diffusion.schedule import Schedule, make_schedule
from ddpm.diffusion.timestep_sampler import LossAwareSampler
from ddpm.errors import UserError
from ddpm.evaluation.nll import evaluate_nll
from ddpm.pipeline import Run, load_run
from ddpm.sampling.ancestral import sample_ancestral
from ddpm.sampling.denoiser import Denoiser
from ddpm.sampling.grids import timestep_grid
from ddpm.sampling.noise import randn
from ddpm.training.loop import train
from tests.conftest import tiny_config


class Stub(torch.nn.Module):
    """A fixed smooth 'network': mean output a*x + b*t (per channel), optional constant variance output v."""

    def __init__(self, v: float | None = None, channels: int = 1):
        super().__init__()
        self.a = torch.nn.Parameter(torch.full((channels,), 0.4))
        self.b = torch.nn.Parameter(torch.full((channels,), 0.01))
        self.v = None if v is None else torch.nn.Parameter(torch.full((channels,), float(v)))

    def forward(self, x, t, y=None):
        mean = self.a.view(1, -1, 1, 1) * x + self.b.view(1, -1, 1, 1) * t.view(-1, 1, 1, 1).float()
        if self.v is None:
            return mean
        return torch.cat([mean, self.v.view(1, -1, 1, 1).expand_as(mean)], dim=1)


# ---------------------------------------------------------------- the bound's terms


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(500, generator=g, dtype=torch.float64), torch.randn(500, generator=g, dtype=torch.float64)
    lv1, lv2 = 3 * torch.randn(500, generator=g, dtype=torch.float64), 3 * torch.randn(500, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-10, atol=1e-12)
    assert torch.all(normal_kl(m1, lv1, m1, lv1) == 0)


@pytest.mark.parametrize("mean, log_var", [(0.0, math.log(1e-4)), (0.37, math.log(0.05)), (-0.99, math.log(1e-3)),
                                           (1.8, 0.0), (-3.0, math.log(0.5)), (0.5, math.log(1e-7))])
def test_discretized_decoder_probabilities_sum_to_one(mean, log_var):
    x = torch.linspace(-1, 1, 256)  # the 256 bin centres
    logp = discretized_gaussian_log_likelihood(x, torch.tensor(mean), torch.tensor(log_var))
    assert abs(logp.exp().double().sum().item() - 1.0) < 1e-4
    # Each bin's mass against the Gaussian CDF in float64 (edges at +-inf), where it is not tiny.
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64),
                                        torch.tensor(math.exp(0.5 * log_var), dtype=torch.float64))
    edges = torch.cat([torch.tensor([-math.inf]), (x[:-1].double() + x[1:].double()) / 2, torch.tensor([math.inf])])
    ref = normal.cdf(edges[1:]) - normal.cdf(edges[:-1])
    big = ref > 1e-6
    torch.testing.assert_close(logp.double()[big], ref[big].log(), rtol=1e-4, atol=1e-4)


def test_prior_term_of_linear_schedule_is_tiny_as_its_closed_form_says():
    """L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) = 0.5 (abar_T x0^2 - abar_T - log(1 - abar_T))."""
    T = 1000
    abar = float(torch.prod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64)))  # Ho et al.'s betas
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    closed = 0.5 * (abar * x0.double() ** 2 - abar - math.log1p(-abar)) / math.log(2)
    got = prior_bpd(make_schedule("linear", T), x0)
    torch.testing.assert_close(got.double(), closed.flatten(1).mean(1), rtol=1e-5, atol=0)
    # Its size: at most -0.5 log(1 - abar_T) / ln 2 (|x0| <= 1), i.e. about abar_T / (2 ln 2).
    bound = -0.5 * math.log1p(-abar) / math.log(2)
    assert got.max() <= bound * (1 + 1e-6)
    assert bound < abar  # abar_T itself is ~4e-5: tiny next to the ~1 bit/dim of the other terms


def test_vb_term_at_zero_is_the_decoder_and_kl_elsewhere():
    s = make_schedule("linear", 20)
    g = torch.Generator().manual_seed(3)
    x0 = quantize(torch.rand(4, 1, 4, 4, generator=g) * 2 - 1)
    x_t = torch.randn(4, 1, 4, 4, generator=g)
    mean, log_var = torch.randn(4, 1, 4, 4, generator=g) * 0.1, torch.full((4, 1, 4, 4), -5.0)
    t = torch.tensor([0, 1, 7, 19])
    got = vb_terms_bpd(s, x0, x_t, t, mean, log_var)
    dec = -discretized_gaussian_log_likelihood(x0[0], mean[0], log_var[0]).mean() / math.log(2)
    assert torch.isclose(got[0], dec)
    for i in (1, 2, 3):
        ti = int(t[i])
        c1, c2 = float(s.posterior_mean_coef1[ti]), float(s.posterior_mean_coef2[ti])
        q = torch.distributions.Normal(c1 * x0[i].double() + c2 * x_t[i].double(), float(s.posterior_variance[ti]) ** 0.5)
        p = torch.distributions.Normal(mean[i].double(), math.exp(-2.5))
        ref = torch.distributions.kl_divergence(q, p).mean() / math.log(2)
        torch.testing.assert_close(got[i].double(), ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- learned variances


def test_derive_doubles_out_channels_for_learned_variances():
    cfg = tiny_config()
    assert cfg.model.out_channels == cfg.model.in_channels
    cfg.diffusion.variance = "learned_range"
    assert derive(cfg).model.out_channels == 2 * cfg.model.in_channels
    cfg.diffusion.variance, cfg.diffusion.loss = "beta", "vlb"
    d = derive(cfg)
    assert d.model.out_channels == cfg.model.in_channels and d.diffusion.timestep_sampler == "loss_aware"


def test_learned_range_endpoints_are_beta_and_beta_tilde_in_p_mean_variance():
    s = make_schedule("cosine", 50)
    x_t = torch.randn(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.arange(50)
    mean_out = torch.randn_like(x_t)
    for v, fixed in ((1.0, "beta"), (-1.0, "beta_tilde")):
        learned = p_mean_variance(torch.cat([mean_out, torch.full_like(x_t, v)], 1), x_t, t, s, variance="learned_range")
        ref = p_mean_variance(mean_out, x_t, t, s, variance=fixed)
        torch.testing.assert_close(learned["mean"], ref["mean"])
        torch.testing.assert_close(learned["log_variance"], ref["log_variance"].expand_as(x_t))
    # "learned" reads the output as the log-variance itself.
    lv = torch.randn_like(x_t)
    assert torch.equal(p_mean_variance(torch.cat([mean_out, lv], 1), x_t, t, s, variance="learned")["log_variance"], lv)


@pytest.mark.parametrize("steps", [20, 7])
def test_learned_variance_sampler_reproduces_beta_and_beta_tilde(steps):
    """v' == 1 everywhere samples as sigma^2 = beta (of the grid), v' == 0 as beta-tilde, full or respaced grid."""
    s = make_schedule("linear", 20)
    grid = timestep_grid(20, steps)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for v, fixed in ((1.0, "beta"), (-1.0, "beta_tilde")):
        a = sample_ancestral(Denoiser(Stub(v, 2), s, variance="learned_range"), x_T, s, grid, variance="learned_range",
                             generator=torch.Generator().manual_seed(5), progress=False)
        b = sample_ancestral(Denoiser(Stub(None, 2), s), x_T, s, grid, variance=fixed,
                             generator=torch.Generator().manual_seed(5), progress=False)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _reference_sampler(model, schedule: Schedule, x_T, t_model, variance, generator):
    """Algorithm 2 written on the schedule's own tables (p_mean_variance), stepping through every index.

    ``t_model[i]`` is the timestep the network sees at index i of ``schedule`` (identity, or a grid).
    """
    x = x_T
    for i in range(schedule.num_timesteps - 1, -1, -1):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        out = model(x, torch.full_like(t, t_model[i]))
        p = p_mean_variance(out, x, t, schedule, variance=variance)
        x = p["mean"] if i == 0 else p["mean"] + (0.5 * p["log_variance"]).exp() * randn(x.shape, generator, x.device)
    return x


@pytest.mark.parametrize("variance", ["beta", "beta_tilde", "learned_range"])
def test_respacing_with_all_steps_reproduces_the_unrespaced_sampler(variance):
    s = make_schedule("linear", 20)
    model = Stub(0.3 if variance == "learned_range" else None)
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert timestep_grid(20, 20) == timestep_grid(20) == list(range(19, -1, -1))
    got = sample_ancestral(Denoiser(model, s, variance=variance), x_T, s, timestep_grid(20, 20), variance=variance,
                           generator=torch.Generator().manual_seed(9), progress=False)
    with torch.no_grad():
        ref = _reference_sampler(model, s, x_T, list(range(20)), variance, torch.Generator().manual_seed(9))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["even", "quadratic"])
def test_respaced_sampler_is_the_process_with_betas_recomputed_from_alpha_bar(kind):
    """Improved DDPM §4: on a grid S, beta'_i = 1 - abar_{S_i} / abar_{S_{i-1}}; the learned variance
    interpolates between that schedule's beta' and beta-tilde'."""
    s = make_schedule("linear", 40)
    grid = timestep_grid(40, 8, kind)
    up = grid[::-1]
    abar = s.alphas_cumprod[up]
    respaced = Schedule.from_betas(1 - abar / torch.cat([abar.new_ones(1), abar[:-1]]))
    model = Stub(-0.4)
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    got = sample_ancestral(Denoiser(model, s, variance="learned_range"), x_T, s, grid, variance="learned_range",
                           generator=torch.Generator().manual_seed(8), progress=False)
    with torch.no_grad():
        ref = _reference_sampler(model, respaced, x_T, up, "learned_range", torch.Generator().manual_seed(8))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_ancestral_refuses_a_learned_variance_without_the_output():
    s = make_schedule("linear", 5)
    with pytest.raises(ValueError, match="variance output"):
        sample_ancestral(Denoiser(Stub(None), s), torch.zeros(1, 1, 4, 4), s, variance="learned_range", progress=False)


# ---------------------------------------------------------------- losses


def _batch(T=20, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = quantize(torch.rand(n, 1, 4, 4, generator=g) * 2 - 1)
    return x0, torch.randint(0, T, (n,), generator=g), torch.randn(n, 1, 4, 4, generator=g)


def test_hybrid_loss_stops_the_mean_gradient_in_the_vlb_term():
    s = make_schedule("linear", 20)
    x0, t, noise = _batch()
    model = Stub(0.2)
    out = hybrid_loss(model, s, x0, t, noise, variance="learned_range")
    torch.testing.assert_close(out["loss"], out["mse"] + VLB_WEIGHT * 20 * out["vb"])
    torch.testing.assert_close(out["mse"], simple_loss(model, s, x0, t, noise, variance="learned_range")["mse"])
    gm, gv = torch.autograd.grad(out["vb"].sum(), [model.a, model.v], allow_unused=True, retain_graph=True)
    assert (gm is None or torch.all(gm == 0)) and gv.abs().sum() > 0  # L_vlb trains only the variance
    gm, gv = torch.autograd.grad(out["mse"].sum(), [model.a, model.v], allow_unused=True)
    assert gm.abs().sum() > 0 and (gv is None or torch.all(gv == 0))  # L_simple only the mean
    # L_vlb alone trains both, and its vb is the same term.
    out2 = vlb_loss(model, s, x0, t, noise, variance="learned_range")
    torch.testing.assert_close(out2["vb"], out["vb"])
    gm, gv = torch.autograd.grad(out2["loss"].sum(), [model.a, model.v])
    assert gm.abs().sum() > 0 and gv.abs().sum() > 0


def test_vb_loss_is_the_bound_term_of_the_model():
    s = make_schedule("linear", 20)
    x0, t, noise = _batch(seed=1)
    model = Stub(-0.5)
    out = vlb_loss(model, s, x0, t, noise, variance="learned_range")
    x_t = q_sample(s, x0, t, noise)
    with torch.no_grad():
        p = p_mean_variance(model(x_t, t), x_t, t, s, variance="learned_range")
    torch.testing.assert_close(out["vb"].detach(), vb_terms_bpd(s, x0, x_t, t, p["mean"], p["log_variance"]))


# ---------------------------------------------------------------- loss-aware sampling of t


def test_loss_aware_sampler_probabilities_follow_the_last_ten_losses():
    T, H = 5, 10
    sampler = LossAwareSampler(T)
    ref = [deque(maxlen=H) for _ in range(T)]
    g = torch.Generator().manual_seed(0)
    for step in range(8):
        # Duplicates of one t in a batch (25 of t = 0) must keep only the latest 10, in batch order.
        t = torch.cat([torch.zeros(25, dtype=torch.long), torch.randint(1, T, (7,), generator=g)])
        t = t[torch.randperm(len(t), generator=g)]
        losses = torch.rand(len(t), generator=g) * (1 + t)
        full_before = all(len(r) == H for r in ref)
        p = sampler.probabilities()
        if not full_before:
            torch.testing.assert_close(p, torch.full((T,), 1 / T))
        sampler.update(t, losses)
        for ti, li in zip(t.tolist(), losses.tolist()):
            ref[ti].append(li)
    assert all(len(r) == H for r in ref)
    w = torch.tensor([math.sqrt(np.mean(np.square(r))) for r in ref])
    expected = (w / w.sum()) * (1 - sampler.uniform_prob) + sampler.uniform_prob / T
    torch.testing.assert_close(sampler.probabilities(), expected)
    # Draws follow p, and the weights 1 / (T p_t) make the weighted mean unbiased for (1/T) sum_t.
    t, weights = sampler.sample(200_000, torch.Generator().manual_seed(1))
    freq = torch.bincount(t, minlength=T) / len(t)
    torch.testing.assert_close(freq, expected, atol=5e-3, rtol=0)
    torch.testing.assert_close(weights, 1 / (T * expected[t]))
    # The state round-trips: a restored sampler draws the same t.
    restored = LossAwareSampler(T)
    restored.load_state_dict({k: v.clone() for k, v in sampler.state_dict().items()})
    a = sampler.sample(64, torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, restored.sample(64, torch.Generator().manual_seed(2))[0])


def test_loss_aware_training_resumes_exactly(tmp_path):
    def cfg(steps):
        c = tiny_config(steps=steps, batch_size=32, checkpoint_every=3, lr_decay="constant")
        c.diffusion.timesteps, c.diffusion.variance, c.diffusion.loss = 4, "learned_range", "vlb"
        return derive(c)

    train(cfg(6), tmp_path / "full", progress=False)
    train(cfg(3), tmp_path / "split", progress=False)
    mid = load_training_state(tmp_path / "split")["extra"]
    assert torch.all(mid["timestep_sampler.seen"] >= 10)  # importance sampling is on when it resumes
    train(cfg(6), tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / CHECKPOINT), load_file(tmp_path / "split" / CHECKPOINT)
    assert a.keys() == b.keys() and any(k.startswith("extra.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_objective_refuses_combinations_that_cannot_train(tmp_path):
    c = tiny_config()
    c.diffusion.variance = "learned_range"
    with pytest.raises(UserError, match="hybrid or vlb"):
        train(derive(c), tmp_path / "a", progress=False)
    c = tiny_config()
    c.diffusion.loss = "hybrid"
    with pytest.raises(UserError, match="learned"):
        train(derive(c), tmp_path / "b", progress=False)


# ---------------------------------------------------------------- NLL evaluation


def test_nll_of_an_oracle_model_is_its_decoder_term(tmp_path):
    """A model that knows x0 predicts the true eps: every KL term vanishes (variance beta-tilde) and
    the bound is L_T plus the decoder's -log mass of N(x0, beta-tilde_1) in x0's bin."""
    cfg = tiny_config()
    cfg.diffusion.variance, cfg.diffusion.clip_x0 = "beta_tilde", False
    s = make_schedule("linear", 20)
    x0 = quantize(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, y=None):
            a = s.sqrt_alphas_cumprod[t].float().view(-1, 1, 1, 1)
            return (x - a * x0) / s.sqrt_one_minus_alphas_cumprod[t].float().view(-1, 1, 1, 1)

    r = evaluate_nll(Run(cfg, Oracle(), s, 0, tmp_path), x0, batch_size=3, progress=False,
                     generator=torch.Generator().manual_seed(1))
    assert max(r["per_t"][1:]) < 1e-3
    sigma = math.sqrt(float(s.posterior_variance[1]))  # the clipped log-variance at t = 0
    half = 1 / 255
    mass = math.erf(half / sigma / math.sqrt(2))  # interior bins only: x0 in [-0.8, 0.8]
    assert r["decoder_bpd"] == pytest.approx(-math.log(mass) / math.log(2), rel=1e-4)
    assert r["bpd"] == pytest.approx(r["prior_bpd"] + r["vb_bpd"] + r["decoder_bpd"], rel=1e-6)


def test_train_hybrid_sample_and_nll_end_to_end(tmp_path, tiny_config_file):
    from ddpm.cli import main

    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config_file), "--variance", "learned_range", "--loss", "hybrid",
                 "--out", str(run), "--no-progress"]) == 0
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert {"loss_q0", "mse_q0", "vb_q0"} <= set().union(*log)
    r = load_run(run)
    assert r.config.model.out_channels == 2 and r.config.diffusion.loss == "hybrid"
    assert main(["sample", "--checkpoint", str(run), "--n", "3", "--steps", "5", "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape == (3, 8, 8, 1)
    nll = evaluate_nll(r, load_dataset("digits"), n=4, progress=False, generator=torch.Generator().manual_seed(0))
    assert len(nll["per_t"]) == 20 and nll["n"] == 4 and math.isfinite(nll["bpd"])
    assert nll["bpd"] == pytest.approx(nll["prior_bpd"] + nll["vb_bpd"] + nll["decoder_bpd"], rel=1e-6)
    from ddpm.viz.vlb import plot_loss_quartiles, plot_vlb_terms

    assert plot_loss_quartiles(run / "log.jsonl", tmp_path / "q.png").stat().st_size > 0
    assert plot_vlb_terms(nll, tmp_path / "vlb.png").stat().st_size > 0
