"""Class-conditional training and guidance: classifier-free guidance (Ho & Salimans 2022) and classifier
guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2) as denoiser wrappers, checked against direct
computations; label dropout; the noisy classifier; ``ddpm train --conditional`` / ``ddpm sample --class``."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ddpm.checkpoint import CHECKPOINT
from ddpm.cli import main as ddpm_main
from ddpm.config import derive
from ddpm.data.datasets import load_digits
from ddpm.diffusion.schedule import make_schedule
from ddpm.errors import UserError
from ddpm.models.classifier import load_noisy_classifier, save_noisy_classifier
from ddpm.pipeline import GuidanceOptions, Run, SamplingOptions, build_model, load_run
from ddpm.sampling import SAMPLERS, run
from ddpm.sampling.ancestral import grid_step_coefficients
from ddpm.sampling.denoiser import Denoiser
from ddpm.sampling.grids import timestep_grid
from ddpm.sampling.guidance import ClassifierFreeGuidance, ClassifierGuidance, classifier_log_prob_grad
from ddpm.training.loop import train
from ddpm.training.noisy_classifier import NoisyClassifierTrainConfig, train_noisy_classifier
from ddpm.training.step import drop_labels
from tests.conftest import tiny_config
from tests.test_sampling_core import gaussian_denoiser

K = 10  # digits classes


def conditional_model(prediction="eps", variance="beta", seed=0):
    cfg = tiny_config()
    cfg.model.num_classes = K
    cfg.diffusion.prediction = prediction
    cfg.diffusion.variance = variance
    if variance != "beta":
        cfg.diffusion.loss = "hybrid"
    derive(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # a random label embedding large enough that labels change the output
        model.label_emb.weight.normal_(0, 1)
    return cfg, model


def batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, K, (n,), generator=g)


# --- classifier-free guidance ----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [False, True])
def test_cfg_with_w0_is_the_conditional_model(prediction, clip):
    cfg, model = conditional_model(prediction)
    x, y = batch()
    plain = Run.of(model, cfg).denoiser(clip_x0=clip, y=y)
    guided = ClassifierFreeGuidance(Run.of(model, cfg).denoiser(clip_x0=clip, y=y), 0.0)
    for t in (19, 10, 0):
        a, b = plain(x, t), guided(x, t)
        # The conditional half of a batch of 2N: equal up to how the convolutions sum a larger batch.
        assert torch.allclose(a.eps, b.eps, atol=1e-5) and torch.allclose(a.x0, b.x0, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_cfg_combines_eps_of_two_separate_calls_and_rederives_x0(prediction):
    """One batched call equals (1 + w) eps(x, y) - w eps(x, none) from two calls, for every prediction type;
    x0 follows from the guided eps, and clipping acts on that x0 as the Denoiser's does."""
    cfg, model = conditional_model(prediction)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    x, y = batch()
    w = 2.5
    cond = Run.of(model, cfg).denoiser(clip_x0=False, y=y)
    uncond = Run.of(model, cfg).denoiser(clip_x0=False, y=None)
    calls = []
    counting = lambda *a: calls.append(a[0].shape[0]) or model(*a)  # noqa: E731
    guided = ClassifierFreeGuidance(Denoiser(counting, schedule, prediction, clip_x0=False, y=y), w,
                                    null_label=K)
    clipped = ClassifierFreeGuidance(Run.of(model, cfg).denoiser(clip_x0=True, y=y), w)
    for t in (19, 7, 0):
        a, s = schedule.sqrt_alphas_cumprod[t].item(), schedule.sqrt_one_minus_alphas_cumprod[t].item()
        eps = (1 + w) * cond(x, t).eps - w * uncond(x, t).eps
        got = guided(x, t)
        assert torch.allclose(got.eps, eps, atol=1e-4)
        assert torch.allclose(got.x0, (x - s * eps) / a, atol=1e-4 / a)
        c = clipped(x, t)
        x0 = ((x - s * eps) / a).clamp(-1, 1)
        assert torch.allclose(c.x0, x0, atol=1e-4 / a) and torch.allclose(c.eps, (x - a * x0) / s, atol=1e-3)
    assert calls == [2 * len(x)] * 3  # conditional and unconditional passes in one network call


def test_unconditional_path_is_the_no_label_entry():
    cfg, model = conditional_model()
    x, y = batch()
    t = torch.full((len(x),), 5)
    with torch.no_grad():
        none = model(x, t)
        assert torch.equal(none, model(x, t, torch.full_like(y, K)))
        assert not torch.allclose(none, model(x, t, y))
    # w = -1 leaves only the unconditional pass: (1 - 1) eps(x, y) + eps(x, none).
    only_uncond = ClassifierFreeGuidance(Run.of(model, cfg).denoiser(clip_x0=False, y=y), -1.0)
    assert torch.allclose(only_uncond(x, 5).eps, Run.of(model, cfg).denoiser(clip_x0=False)(x, 5).eps, atol=1e-5)


def test_cfg_keeps_the_conditional_learned_variance():
    cfg, model = conditional_model(variance="learned_range")
    x, y = batch()
    a = Run.of(model, cfg).denoiser(y=y)(x, 9)
    b = ClassifierFreeGuidance(Run.of(model, cfg).denoiser(y=y), 3.0)(x, 9)
    assert b.variance is not None and torch.allclose(a.variance, b.variance, atol=1e-5)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_takes_the_guided_denoiser(sampler):
    """Run.sample with guidance = 0 reproduces the conditional model; w > 0 changes the samples."""
    cfg, model = conditional_model()
    y = torch.arange(3)
    run = Run.of(model, cfg)
    common = dict(sampling=SamplingOptions(sampler, steps=5), progress=False, y=y)
    plain = run.sample(3, generator=torch.Generator().manual_seed(0), **common)
    zero = run.sample(3, generator=torch.Generator().manual_seed(0), guidance=GuidanceOptions(0.0), **common)
    strong = run.sample(3, generator=torch.Generator().manual_seed(0), guidance=GuidanceOptions(4.0), **common)
    assert torch.allclose(plain, zero, atol=1e-4)
    assert torch.isfinite(strong).all() and not torch.allclose(plain, strong, atol=1e-3)


def test_guidance_mistakes_are_user_errors():
    cfg, model = conditional_model()
    run = Run.of(model, cfg)
    with pytest.raises(UserError, match="not one the model knows"):
        run.sample(2, y=K, progress=False, sampling=SamplingOptions("ddim", steps=2))
    with pytest.raises(UserError, match="needs the classes"):
        run.sample(2, guidance=GuidanceOptions(1.0), progress=False)
    plain = tiny_config()
    with pytest.raises(UserError, match="unconditional"):
        Run.of(build_model(plain.model), plain).sample(2, y=1, guidance=GuidanceOptions(1.0), progress=False)
    with pytest.raises(UserError, match="unconditional"):
        Run.of(build_model(plain.model), plain).sample(2, y=1, progress=False)


# --- label dropout ---------------------------------------------------------------------------------------


def test_drop_labels_rate_and_values():
    y = torch.randint(0, K, (40000,), generator=torch.Generator().manual_seed(0))
    for p in (0.1, 0.3):
        out = drop_labels(y, p, K, torch.Generator().manual_seed(1))
        dropped = out == K
        assert abs(dropped.float().mean().item() - p) < 4 * (p * (1 - p) / len(y)) ** 0.5
        assert torch.equal(out[~dropped], y[~dropped])
    assert drop_labels(y, 0.0, K, torch.Generator()) is y


def test_training_drops_labels_at_p_uncond_and_resume_is_exact(tmp_path, monkeypatch):
    from ddpm.training import objective

    seen = []
    real_loss = objective.Objective.loss

    def spy(self, model, x0, t, noise, weights, y=None):
        seen.append(y.clone())
        return real_loss(self, model, x0, t, noise, weights, y=y)

    monkeypatch.setattr(objective.Objective, "loss", spy)
    cfg = tiny_config(steps=2, batch_size=64, p_uncond=0.5, checkpoint_every=100)
    cfg.model.num_classes = K
    train(cfg, tmp_path / "full", progress=False)
    labels = torch.cat(seen)
    share = (labels == K).float().mean().item()
    assert abs(share - 0.5) < 4 * (0.25 / len(labels)) ** 0.5
    assert labels.min() >= 0 and labels.max() <= K
    # The dropout draws from the loop's generator: a resumed run replays the same steps.
    half = tiny_config(steps=1, batch_size=64, p_uncond=0.5, checkpoint_every=100)
    half.model.num_classes = K
    train(half, tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / CHECKPOINT), load_file(tmp_path / "split" / CHECKPOINT)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- classifier guidance ---------------------------------------------------------------------------------

MEANS = torch.stack([torch.ones(4), -torch.ones(4)]).view(2, 1, 2, 2)  # class k is N(MEANS[k], I)


def gaussian_classifier(x, t):
    """A hand-built p(y | x): logits_k = <x, m_k> - |m_k|^2 / 2 (equal-covariance Gaussian classes), so
    grad_x log p(y | x) = m_y - sum_k p_k m_k in closed form. (It ignores t.)"""
    m = MEANS.flatten(1).to(x)
    return x.flatten(1) @ m.T - 0.5 * (m * m).sum(1)


def log_p(x, y):
    return torch.log_softmax(gaussian_classifier(x, None), 1)[torch.arange(len(y)), y]


def test_classifier_gradient_matches_the_closed_form():
    x = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    p = torch.softmax(gaussian_classifier(x, None), 1)
    expected = MEANS[y] - torch.einsum("nk,kchw->nchw", p, MEANS)
    with torch.inference_mode():  # as inside a sampler
        got = classifier_log_prob_grad(gaussian_classifier, x, 3, y)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde", "learned_range"])
def test_mean_shift_form_is_algorithm_1(variance):
    """The ancestral mean from the wrapper's x0 equals mu + s Sigma g computed directly (Algorithm 1), on a
    respaced grid, with Sigma the variance the sampler draws with."""
    schedule = make_schedule("linear", 100)
    grid = timestep_grid(100, 10)
    base = gaussian_denoiser(schedule, 0.2, 0.5)
    v_out = torch.full((5, 1, 2, 2), 0.3)  # a learned-range output: Sigma between beta' and beta-tilde'

    def denoise(x, t):
        pred = base(x, t)
        pred.variance = v_out if variance == "learned_range" else None
        return pred

    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1])
    scale = 3.0
    guided = ClassifierGuidance(denoise, gaussian_classifier, y, scale, schedule, form="mean_shift", timesteps=grid,
                                variance=variance)
    for i, t in enumerate(grid[:-1]):
        c = grid_step_coefficients(schedule, t, grid[i + 1])
        if variance == "learned_range":  # Improved DDPM Eq. 15
            sigma2 = math.exp(0.65 * math.log(c["beta"]) + 0.35 * math.log(c["beta_tilde"]))
        else:
            sigma2 = c[variance]
        g = MEANS[y] - torch.einsum("nk,kchw->nchw", torch.softmax(gaussian_classifier(x, t), 1), MEANS)
        direct = c["coef_x0"] * base(x, t).x0 + c["coef_xt"] * x + scale * sigma2 * g
        pred = guided(x, t)
        assert torch.allclose(c["coef_x0"] * pred.x0 + c["coef_xt"] * x, direct, atol=1e-5)
        a, s = schedule.sqrt_alphas_cumprod[t].item(), schedule.sqrt_one_minus_alphas_cumprod[t].item()
        assert torch.allclose(a * pred.x0 + s * pred.eps, x, atol=1e-5)  # eps stays consistent with x0


def test_score_form_is_algorithm_2_and_differs_from_algorithm_1_by_sqrt_alpha():
    schedule = make_schedule("linear", 100)
    base = gaussian_denoiser(schedule, 0.0, 1.0)
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    score = ClassifierGuidance(base, gaussian_classifier, y, 2.0, schedule, form="score")
    mean = ClassifierGuidance(base, gaussian_classifier, y, 2.0, schedule, form="mean_shift", variance="beta")
    g = classifier_log_prob_grad(gaussian_classifier, x, 0, y)
    for t in (99, 50, 3):
        s = schedule.sqrt_one_minus_alphas_cumprod[t].item()
        assert torch.allclose(score(x, t).eps, base(x, t).eps - s * 2.0 * g, atol=1e-5)  # Algorithm 2
        # In x0, the score form shifts by (1 - abar) / sqrt(abar) s g, Algorithm 1 (Sigma = beta) by
        # (1 - abar_t) / sqrt(abar_{t-1}) s g: the ratio is 1 / sqrt(alpha_t).
        d_score, d_mean = score(x, t).x0 - base(x, t).x0, mean(x, t).x0 - base(x, t).x0
        ratio = 1 / schedule.alphas[t].sqrt().item()
        assert torch.allclose(d_score, ratio * d_mean, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_guided_samples_score_higher_log_p_than_unguided_from_the_same_noise(sampler):
    schedule = make_schedule("linear", 100)
    base = gaussian_denoiser(schedule, 0.0, 1.0)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 2
    form = "mean_shift" if sampler == "ancestral" else "score"
    guided = ClassifierGuidance(base, gaussian_classifier, y, 2.0, schedule, form=form,
                                timesteps=timestep_grid(100, 20))
    draw = lambda d: run(SAMPLERS[sampler].steps, d, x_T, schedule, timestep_grid(100, 20),  # noqa: E731
                         generator=torch.Generator().manual_seed(1), progress=False)
    before, after = log_p(draw(base), y), log_p(draw(guided), y)
    assert (after > before).all()
    assert abs(before.exp().mean() - 0.5) < 0.1  # unguided samples know no class: p(y | x) ~ 1/2 on average


# --- the noisy classifier, its files, and the CLI ---------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny conditional run, a tiny unconditional one, and a tiny noisy classifier for T = 20."""
    root = tmp_path_factory.mktemp("guidance")
    cfg = tiny_config(steps=2)
    cfg.model.num_classes = K
    train(cfg, root / "cond", progress=False)
    train(tiny_config(steps=2), root / "uncond", progress=False)
    ncfg = NoisyClassifierTrainConfig(epochs=1, batch_size=256, timesteps=20, base_channels=8, held_out=0.5)
    model, info = train_noisy_classifier(load_digits(), ncfg, progress=False)
    save_noisy_classifier(model, root / "clf", {"schedule": "linear", "timesteps": 20}, info)
    return root


def test_noisy_classifier_round_trip_and_schedule_check(runs):
    model, info = load_noisy_classifier(runs / "clf")
    assert info["timesteps"] == 20 and 0.0 <= info["held_out_accuracy"] <= 1.0
    x, _ = batch()
    logits = model(x, torch.tensor([0, 5, 10, 19]))
    assert logits.shape == (4, K)
    assert not torch.allclose(model(x, torch.zeros(4, dtype=torch.long)), logits)  # conditioned on t
    cfg = load_run(runs / "cond").config
    load_noisy_classifier(runs / "clf", diffusion=cfg.diffusion)
    cfg.diffusion.timesteps = 1000
    with pytest.raises(UserError, match="T = 20"):
        load_noisy_classifier(runs / "clf", diffusion=cfg.diffusion)


def test_noisy_classifier_guidance_raises_its_own_log_p(runs):
    """Through Run.sample and a real NoisyClassifier: guided samples score higher under it."""
    run = load_run(runs / "uncond")
    clf, _ = load_noisy_classifier(runs / "clf")
    y = torch.arange(8) % K
    t0 = torch.zeros(8, dtype=torch.long)
    for sampler in ("ancestral", "ddim"):
        kw = dict(sampling=SamplingOptions(sampler, steps=10), progress=False, y=y)
        x0 = run.sample(8, generator=torch.Generator().manual_seed(0), guidance=GuidanceOptions(classifier=clf), **kw)
        x1 = run.sample(8, generator=torch.Generator().manual_seed(0),
                        guidance=GuidanceOptions(classifier=clf, classifier_scale=20.0), **kw)
        with torch.no_grad():
            lp = [torch.log_softmax(clf(x, t0), 1)[torch.arange(8), y] for x in (x0, x1)]
        assert lp[1].mean() > lp[0].mean()


def cli(*args):
    return ddpm_main([str(a) for a in args])


def test_cli_conditional_train_and_guided_sampling(runs, tmp_path, tiny_config_file, capsys):
    assert cli("train", "--config", tiny_config_file, "--steps", 1, "--conditional", "--p-uncond", 0.2,
               "--out", tmp_path / "run", "--no-progress") == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["num_classes"] == K and saved["train"]["p_uncond"] == 0.2
    out = tmp_path / "all"
    assert cli("sample", "--checkpoint", runs / "cond", "--classes", "all", "--n", 2, "--guidance", 3,
               "--sampler", "ddim", "--steps", 4, "--out", out) == 0
    assert json.loads((out / "labels.json").read_text()) == [k for k in range(K) for _ in range(2)]
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 4 * grid.shape[1]  # ten rows of two
    assert cli("sample", "--checkpoint", runs / "cond", "--class", 7, "--n", 2, "--guidance", 1, "--sampler",
               "dpm++2m", "--steps", 3, "--classifier", runs / "clf", "--classifier-scale", 2,
               "--out", tmp_path / "seven") == 0
    assert json.loads((tmp_path / "seven" / "labels.json").read_text()) == [7, 7]
    assert cli("train-classifier", "--noisy", "--epochs", 1, "--batch-size", 512, "--timesteps", 20,
               "--base-channels", 8, "--out", tmp_path / "clf", "--no-progress") == 0
    assert "held-out accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{cond}", "--class", "12"], "class 12 is not one the model knows"),
    (["--checkpoint", "{cond}", "--classes", "3,10"], "class 10 is not one the model knows"),
    (["--checkpoint", "{uncond}", "--class", "3", "--guidance", "2"], "needs a class-conditional model"),
    (["--checkpoint", "{uncond}", "--class", "3"], "the model is unconditional"),
    (["--checkpoint", "{uncond}", "--classes", "all"], "this model is unconditional"),
    (["--checkpoint", "{cond}", "--guidance", "2"], "needs the classes"),
    (["--checkpoint", "{cond}", "--class", "1", "--classifier", "{clf}"], "go together"),
    (["--checkpoint", "{cond}", "--classifier", "{clf}", "--classifier-scale", "1"], "needs the classes"),
    (["--checkpoint", "{cond}", "--class", "1", "--guidance", "-1"], "guidance must be >= 0"),
])
def test_cli_guidance_mistakes_are_one_line_errors(runs, tmp_path, capsys, args, message):
    args = [a.format(cond=runs / "cond", uncond=runs / "uncond", clf=runs / "clf") for a in args]
    assert cli("sample", *args, "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_conditional_needs_labels(tmp_path, capsys):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    assert cli("train", "--data", folder, "--conditional", "--out", tmp_path / "run", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "--conditional needs a labelled data set" in err and len(err.strip().splitlines()) == 1
    assert cli("train", "--data", "digits", "--p-uncond", 0.2, "--out", tmp_path / "r2") == 2
    assert "add --conditional" in capsys.readouterr().err
