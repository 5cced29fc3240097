import math

import pytest
import torch

from ddpm.diffusion.schedule import cosine_alphas_cumprod, extract, make_schedule
from ddpm.errors import UserError


def test_linear_endpoints_follow_ho_et_al():
    s = make_schedule("linear", 1000)
    assert s.num_timesteps == 1000
    assert s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert torch.all(s.betas[1:] > s.betas[:-1])


def test_zero_based_convention():
    """Index t is the paper's step t+1: alpha-bar[0] = alpha_1, alpha-bar_prev[0] = alpha-bar_0 = 1."""
    s = make_schedule("linear", 1000)
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert torch.allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    # beta-tilde_1 = 0 and its log is clipped to the value at the second step.
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert s.alphas_cumprod[-1].item() < 1e-4  # x_T is nearly pure noise


def test_tables_are_consistent():
    s = make_schedule("cosine", 100)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    assert torch.allclose(s.sqrt_alphas_cumprod ** 2, s.alphas_cumprod)
    assert torch.allclose(s.sqrt_one_minus_alphas_cumprod ** 2, 1 - s.alphas_cumprod)
    assert torch.allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, torch.ones(100, dtype=torch.float64))


def test_cosine_alpha_bar_matches_closed_form():
    T, s_off = 1000, 0.008
    s = make_schedule("cosine", T)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = lambda u: torch.cos((u / T + s_off) / (1 + s_off) * math.pi / 2) ** 2
    closed = f(t) / f(torch.zeros(1, dtype=torch.float64))
    unclipped = s.betas < 0.999
    # Where no beta was clipped (all but the very end), alpha-bar is exactly the closed form.
    first_clipped = int((~unclipped).nonzero()[0]) if (~unclipped).any() else T
    assert torch.allclose(s.alphas_cumprod[:first_clipped], closed[:first_clipped], rtol=1e-10)
    assert s.betas.max().item() <= 0.999
    assert torch.allclose(cosine_alphas_cumprod(torch.zeros(1, dtype=torch.float64)), torch.ones(1, dtype=torch.float64))


def test_any_T_keeps_total_noise():
    for T in (10, 100, 4000):
        s = make_schedule("linear", T)
        assert s.num_timesteps == T
        assert s.alphas_cumprod[-1].item() < 1e-3


def test_extract_shape_and_dtype():
    s = make_schedule("linear", 10)
    t = torch.tensor([0, 9, 3])
    out = extract(s.betas, t, 4)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten(), s.betas[t].float())


def test_bad_names_are_user_errors():
    with pytest.raises(UserError, match="unknown schedule"):
        make_schedule("quadratic", 10)
    with pytest.raises(UserError, match="positive"):
        make_schedule("linear", 0)
