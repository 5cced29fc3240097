import torch

from ddpm.diffusion.schedule import make_schedule
from ddpm.sampling.ancestral import grid_step_coefficients, sample_ancestral
from ddpm.sampling.denoiser import Prediction
from ddpm.sampling.noise import randn, seed_generators


def gaussian_denoiser(schedule, mu: float, s2: float):
    """Exact E[x0 | x_t] for data N(mu, s2 I): x_t = a x0 + sigma eps, so x0 | x_t is Gaussian."""
    a_tab = schedule.sqrt_alphas_cumprod.tolist()
    sig_tab = schedule.sqrt_one_minus_alphas_cumprod.tolist()

    def denoise(x_t, t):
        a, sig = a_tab[t], sig_tab[t]
        x0 = mu + a * s2 / (a * a * s2 + sig * sig) * (x_t - a * mu)
        return Prediction(eps=(x_t - a * x0) / sig, x0=x0)

    return denoise


def test_grid_coefficients_equal_the_schedule_tables_on_the_full_grid():
    s = make_schedule("linear", 100)
    for t in (99, 50, 1):
        c = grid_step_coefficients(s, t, t - 1)
        assert abs(c["coef_x0"] - s.posterior_mean_coef1[t].item()) < 1e-12
        assert abs(c["coef_xt"] - s.posterior_mean_coef2[t].item()) < 1e-12
        assert abs(c["beta"] - s.betas[t].item()) < 1e-12
        assert abs(c["beta_tilde"] - s.posterior_variance[t].item()) < 1e-12
    assert grid_step_coefficients(s, 0, None)["coef_x0"] == 1.0  # the last step returns x0


def test_algorithm2_with_exact_denoiser_recovers_the_data_distribution():
    """With the exact denoiser for N(mu, s2), the reverse process must produce N(mu, s2) samples."""
    s = make_schedule("linear", 200)
    mu, s2 = 0.3, 0.25
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(20000, 1, generator=g)
    for variance in ("beta_tilde", "beta"):
        x = sample_ancestral(gaussian_denoiser(s, mu, s2), x_T, s, variance=variance, generator=g, progress=False)
        assert abs(x.mean().item() - mu) < 0.02
        # beta_tilde is the exact reverse variance for this data; beta (upper bound) is close at T=200.
        assert abs(x.var().item() - s2) < (0.02 if variance == "beta_tilde" else 0.05)


def test_per_sample_generators_make_images_independent_of_the_batch():
    gens = seed_generators([5, 6, 7])
    batch = randn((3, 1, 4, 4), gens, "cpu")
    alone = randn((1, 1, 4, 4), seed_generators([6]), "cpu")
    assert torch.equal(batch[1], alone[0])


def test_callback_sees_every_step_starting_from_pure_noise():
    s = make_schedule("linear", 30)
    seen = []
    sample_ancestral(gaussian_denoiser(s, 0.0, 1.0), torch.zeros(2, 1), s,
                     callback=lambda step: seen.append(step.t), progress=False)
    assert seen == list(range(29, -1, -1))
