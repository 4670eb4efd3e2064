"""The DDPM core against closed forms and direct computations."""
import math

import pytest
import torch

from layoutdiffuse.diffusion import GaussianDiffusion, make_betas
from layoutdiffuse.diffusion.schedule import cosine_alpha_bar


def test_linear_schedule_endpoints_and_scaling():
    b = make_betas("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    b100 = make_betas("linear", 100)  # scaled by 1000 / T
    assert b100[0].item() == pytest.approx(1e-3) and b100[-1].item() == pytest.approx(0.2)


def test_scaled_linear_is_square_of_sqrt_linspace():
    b = make_betas("scaled_linear", 1000)
    assert b[0].item() == pytest.approx(0.00085) and b[-1].item() == pytest.approx(0.012)
    roots = b.sqrt()
    assert torch.allclose(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(999), atol=1e-12)


def test_cosine_alpha_bar_matches_closed_form():
    d = GaussianDiffusion("cosine", 1000)
    expected = [math.cos(((i + 1) / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2 for i in range(1000)]
    expected = torch.tensor(expected, dtype=torch.float64)
    # betas are clipped at 0.999 only at the very end
    assert torch.allclose(d.alphas_cumprod[:990].double(), expected[:990], rtol=1e-5)
    assert float(cosine_alpha_bar(torch.tensor(0.0), 0.0)) == pytest.approx(1.0)


def test_derived_coefficients():
    d = GaussianDiffusion("linear", 50)
    b = d.betas64
    abar = torch.cumprod(1 - b, 0)
    for t in [0, 1, 17, 49]:
        assert d.alphas_cumprod[t].item() == pytest.approx(abar[t].item(), rel=1e-6)
        prev = abar[t - 1] if t else torch.tensor(1.0, dtype=torch.float64)
        assert d.posterior_variance[t].item() == pytest.approx((b[t] * (1 - prev) / (1 - abar[t])).item(), rel=1e-5, abs=1e-12)


def test_q_sample_statistics():
    d = GaussianDiffusion("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    for t in [0, 100, 500, 999]:
        xt = d.q_sample(x0, torch.full((len(x0),), t), torch.randn(x0.shape, generator=g))
        ab = d.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(ab**0.5 * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - ab, rel=2e-2, abs=1e-5)


def test_posterior_equals_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), computed on a grid for a scalar."""
    d = GaussianDiffusion("linear", 100)
    b = d.betas64
    abar = torch.cumprod(1 - b, 0)
    x0, xt = torch.tensor([[0.3]]), torch.tensor([[-0.4]])
    for t in [1, 10, 60]:
        grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
        log_lik = -((xt.double() - (1 - b[t]).sqrt() * grid) ** 2) / (2 * b[t])
        log_prior = -((grid - abar[t - 1].sqrt() * x0.double()) ** 2) / (2 * (1 - abar[t - 1]))
        w = torch.softmax((log_lik + log_prior).flatten(), 0)
        mean = (w * grid).sum()
        var = (w * (grid - mean) ** 2).sum()
        m, v, _ = d.q_posterior(x0, xt, torch.tensor([t]))
        assert m.item() == pytest.approx(mean.item(), abs=1e-5)
        assert v.item() == pytest.approx(var.item(), rel=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_round_trips(prediction):
    d = GaussianDiffusion("cosine", 1000, prediction=prediction)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 4, 4, generator=g)
    t = torch.randint(0, 999, (8,), generator=g)
    xt = d.q_sample(x0, t, eps)
    x0_hat, eps_hat = d.predict(d.target(x0, eps, t), xt, t)
    assert torch.allclose(x0_hat, x0, atol=2e-3) and torch.allclose(eps_hat, eps, atol=2e-3)
    assert torch.allclose(d.x0_from_eps(xt, t, d.eps_from_x0(xt, t, x0)), x0, atol=1e-3)


def test_unknown_names_are_clear():
    with pytest.raises(KeyError, match="unknown beta schedule 'quadratic'; choose one of: cosine, linear, scaled_linear"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        GaussianDiffusion(prediction="score")


def test_respaced_keeps_alpha_bar():
    d = GaussianDiffusion("linear", 1000)
    ts = torch.tensor([0, 99, 499, 999])
    r = d.respaced(ts)
    assert torch.allclose(r.alphas_cumprod, d.alphas_cumprod[ts], rtol=1e-5)


def test_exact_predictor_ancestral_and_ddim_recover_gaussian():
    """For data N(mu, s^2) the optimal eps is known; both samplers must recover mu and s."""
    from layoutdiffuse.diffusion import make_sampler

    d = GaussianDiffusion("linear", 1000)
    mu, s = 0.5, 0.3

    def eps_star(x, t):
        ab = d.alphas_cumprod[t][:, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s * s + 1 - ab)

    g = torch.Generator().manual_seed(0)
    for name, steps, tol in [("ancestral", 1000, 0.01), ("ddim", 200, 0.015)]:
        x = make_sampler(name, d, steps=steps).sample(eps_star, (20_000, 1), generator=g)
        assert x.mean().item() == pytest.approx(mu, abs=0.01)
        assert x.std().item() == pytest.approx(s, abs=tol)
