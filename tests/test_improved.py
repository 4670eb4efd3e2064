"""Improved DDPM: KL, discretised likelihood, the variational bound, the hybrid loss.

Reference values are computed here in float64 numpy/scipy, independently of the package.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr

from layoutdiffuse.diffusion import GaussianDiffusion
from layoutdiffuse.diffusion.improved import (
    approx_standard_normal_cdf,
    calc_bpd_loop,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    normal_kl,
    prior_bpd,
    vlb_terms,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)

LN2 = math.log(2)


GRID = -1 + 2 * np.arange(256) / 255


# --- independent references --------------------------------------------------------------------
def ref_kl(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) with variances (not log-variances), float64."""
    return np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


def tanh_cdf(x):
    return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def ref_bin_prob(x, mean, std, cdf=tanh_cdf):
    """P(bin of x) for a Gaussian, edge bins open, float64."""
    hi = np.where(x > 0.999, 1.0, cdf((x + 1 / 255 - mean) / std))
    lo = np.where(x < -0.999, 0.0, cdf((x - 1 / 255 - mean) / std))
    return hi - lo


def chain(betas):
    """abar, posterior variance beta~ (t >= 1) and its clipped log, float64 numpy."""
    betas = np.asarray(betas, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    tbeta = betas * (1 - abar_prev) / (1 - abar)
    return abar, tbeta


# --- KL and likelihood ---------------------------------------------------------------------------
def test_normal_kl_identical_is_zero_and_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    lv1, lv2 = 2 * torch.randn(1000, generator=g, dtype=torch.float64), 2 * torch.randn(1000, generator=g, dtype=torch.float64)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12
    expected = ref_kl(m1.numpy(), np.exp(lv1.numpy()), m2.numpy(), np.exp(lv2.numpy()))
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2).numpy(), expected, rtol=1e-10, atol=1e-12)
    assert (normal_kl(m1, lv1, m2, lv2) >= 0).all()


def test_approx_cdf_close_to_exact():
    x = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    assert (approx_standard_normal_cdf(x) - torch.from_numpy(ndtr(x.numpy()))).abs().max() < 2.5e-4


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.31, -6.0), (-0.99, -1.0), (1.7, 0.5), (-3.0, -4.5), (0.002, -8.0)])
def test_discretized_likelihood_sums_to_one_over_256_bins(mean, log_scale):
    x = torch.tensor(GRID, dtype=torch.float32)
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert abs(logp.exp().sum().item() - 1) < 1e-5
    np.testing.assert_allclose(logp.exp().numpy(), ref_bin_prob(GRID, mean, math.exp(log_scale)), atol=2e-6)
    # the exact normal CDF gives the same bins up to the approximation error (~2e-4)
    np.testing.assert_allclose(logp.exp().numpy(), ref_bin_prob(GRID, mean, math.exp(log_scale), cdf=ndtr), atol=5e-4)


def test_discretized_likelihood_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        discretized_gaussian_log_likelihood(torch.zeros(3), torch.zeros(4), torch.zeros(4))


# --- the bound term by term ----------------------------------------------------------------------
def test_vlb_terms_match_independent_kl_and_decoder():
    """Random model outputs and x_t: L_t is the Gaussian KL (t > 0) or the decoder NLL (t = 0)."""
    d = GaussianDiffusion("linear", 200, learn_sigma=True)
    betas = d.betas64.numpy()
    abar, tbeta = chain(betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    g = torch.Generator().manual_seed(1)
    b = 6
    x0 = torch.tensor(GRID[torch.randint(0, 256, (b, 2, 3, 3), generator=g).numpy()], dtype=torch.float32)
    t = torch.tensor([0, 1, 5, 50, 120, 199])
    noise = torch.randn(b, 2, 3, 3, generator=g)
    xt = d.q_sample(x0, t, noise)
    eps = noise + 0.5 * torch.randn(b, 2, 3, 3, generator=g)  # an imperfect model
    out = torch.cat([eps, torch.rand(b, 2, 3, 3, generator=g) * 2 - 1], 1)
    got = vlb_terms(d, out, x0, xt, t).numpy()
    for k, s in enumerate(t.tolist()):
        e, v = out[k, :2].double().numpy(), out[k, 2:].double().numpy()
        x, y = x0[k].double().numpy(), xt[k].double().numpy()
        c1 = betas[s] * np.sqrt(abar_prev[s]) / (1 - abar[s])
        c2 = (1 - abar_prev[s]) * np.sqrt(1 - betas[s]) / (1 - abar[s])
        x0_pred = (y - np.sqrt(1 - abar[s]) * e) / np.sqrt(abar[s])
        mean = c1 * x0_pred + c2 * y
        frac = (v + 1) / 2
        log_tbeta = np.log(tbeta[max(s, 1)])  # clipped at t = 0
        var = np.exp(frac * np.log(betas[s]) + (1 - frac) * log_tbeta)
        if s == 0:
            expected = -np.mean(np.log(ref_bin_prob(x, mean, np.sqrt(var)))) / LN2
        else:
            expected = np.mean(ref_kl(c1 * x + c2 * y, tbeta[s], mean, var)) / LN2
        assert got[k] == pytest.approx(expected, rel=2e-4, abs=1e-5), f"t={s}"


def test_prior_bpd_matches_closed_form():
    d = GaussianDiffusion("linear", 100, learn_sigma=True)
    x0 = torch.linspace(-1, 1, 16).view(2, 1, 2, 4)
    abar_t = np.cumprod(1 - d.betas64.numpy())[-1]
    expected = ref_kl(np.sqrt(abar_t) * x0.double().numpy(), 1 - abar_t, 0.0, 1.0).reshape(2, -1).mean(1) / LN2
    np.testing.assert_allclose(prior_bpd(d, x0).numpy(), expected, rtol=1e-4, atol=1e-9)


def test_vlb_needs_learned_variance():
    d = GaussianDiffusion("linear", 100)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="learn_sigma=True"):
        vlb_terms(d, x, x, x, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="2 \\* 1 channels"):
        vlb_terms(GaussianDiffusion("linear", 100, learn_sigma=True), x, x, x, torch.zeros(1, dtype=torch.long))


# --- the whole bound against an exactly computable model -----------------------------------------
def point_mass_oracle(betas, c, v_of_t):
    """The true reverse process of the point-mass data ``x0 = c``: eps(x_t) = (x_t - sqrt(abar) c) / sqrt(1 - abar)
    (so the predicted x0 is c and the mean is the true posterior mean), variance channel v(t)."""
    abar = torch.from_numpy(np.cumprod(1 - np.asarray(betas, dtype=np.float64)))

    def model_fn(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        eps = (x.double() - a.sqrt() * c.double()) / (1 - a).sqrt()
        v = torch.tensor([v_of_t(s) for s in t.tolist()], dtype=torch.float64).view(-1, 1, 1, 1).expand_as(x)
        return torch.cat([eps, v], 1).float()

    return model_fn


@pytest.mark.parametrize(
    "betas,variance",
    [
        (np.linspace(1e-3, 0.2, 20), "true"),  # short chain: a visible prior mismatch
        (np.linspace(1e-3, 0.2, 20), "wrong"),  # right means, wrong variances: deterministic KL terms
        (None, "true"),  # cosine T = 1000: prior mismatch ~0, the bound is the model's exact NLL
    ],
)
def test_bound_of_the_true_reverse_process_is_the_exact_nll(betas, variance):
    """Data: a fixed image ``c`` (point mass). Model: x_T ~ N(0, I), then the reverse steps of the
    oracle, then the discretised decoder. Its decoder mean is ``c`` whatever ``x_1`` is, so

        -log p(c) = -sum_pixels log P_bin(c | N(c, sigma_0^2))            (exact model NLL)

    and the bound exceeds it by exactly KL(q(x_{1:T} | c) || p(x_{1:T})) = prior KL + the KL of
    the variances at t >= 1 (zero when the variance is the true beta~_t, v = -1)."""
    d = GaussianDiffusion("cosine", 1000, learn_sigma=True) if betas is None else GaussianDiffusion(betas=torch.tensor(betas), learn_sigma=True)
    betas = d.betas64.numpy()
    abar, tbeta = chain(betas)
    g = torch.Generator().manual_seed(2)
    c = torch.tensor(GRID[torch.randint(0, 256, (3, 1, 4, 4), generator=g).numpy()], dtype=torch.float32)
    c[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # both edge bins
    v_rng = np.random.default_rng(3).uniform(-1, 1, len(betas))
    v_t = (lambda s: 0.4 if s == 0 else -1.0) if variance == "true" else (lambda s: float(v_rng[s]))
    out = calc_bpd_loop(d, point_mass_oracle(betas, c, v_t), c, generator=torch.Generator().manual_seed(4))

    cn = c.double().numpy().reshape(3, -1)
    dims = cn.shape[1]
    frac0 = (v_t(0) + 1) / 2
    sigma0 = np.sqrt(np.exp(frac0 * np.log(betas[0]) + (1 - frac0) * np.log(tbeta[1])))
    model_nll = -np.log(ref_bin_prob(cn, cn, sigma0)).sum(1)
    prior_kl = ref_kl(np.sqrt(abar[-1]) * cn, 1 - abar[-1], 0.0, 1.0).sum(1)
    var_kl = 0.0
    for s in range(1, len(betas)):
        frac = (v_t(s) + 1) / 2
        var = np.exp(frac * np.log(betas[s]) + (1 - frac) * np.log(tbeta[s]))
        var_kl += dims * ref_kl(0.0, tbeta[s], 0.0, var)
    expected = (model_nll + prior_kl + var_kl) / (dims * LN2)

    assert out["vb"].shape == (3, len(betas)) and out["total_bpd"].shape == (3,)
    np.testing.assert_allclose(out["total_bpd"].numpy(), expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out["prior_bpd"].numpy(), prior_kl / (dims * LN2), rtol=1e-3, atol=1e-8)
    if variance == "true":
        assert out["vb"][:, 1:].abs().max() < 1e-4  # q(x_{t-1}|x_t, c) is the model's step
        assert out["xstart_mse"][:, : len(betas) // 2].max() < 1e-6
        if len(betas) == 1000:  # nothing but the decoder is left: the bound is the exact NLL
            np.testing.assert_allclose(out["total_bpd"].numpy(), model_nll / (dims * LN2), rtol=2e-4, atol=2e-4)
    else:
        assert out["vb"][:, 1:].min() > 0


# --- the hybrid loss ------------------------------------------------------------------------------
class TwoHeads(torch.nn.Module):
    """Mean head and variance head with separate parameters: ``(B, C, ...) -> (B, 2C, ...)``."""

    def __init__(self):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.tensor([0.7, -0.2]))
        self.var = torch.nn.Parameter(torch.tensor([0.1, 0.3]))

    def forward(self, x, t):
        tt = (t.float() / 100).view(-1, 1, 1, 1)
        return torch.cat([self.mean[0] * x + self.mean[1] * tt, torch.tanh(self.var[0] * x + self.var[1] * tt)], 1)


def test_hybrid_loss_routes_gradients_and_weights_the_bound():
    d = GaussianDiffusion("cosine", 100, learn_sigma=True)
    g = torch.Generator().manual_seed(5)
    x0 = torch.tensor(GRID[torch.randint(0, 256, (4, 1, 4, 4), generator=g).numpy()], dtype=torch.float32)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 3, 40, 99])
    model = TwoHeads()
    losses = hybrid_loss(d, model, x0, t, noise, lambda_vlb=0.001)
    assert all(losses[k].shape == (4,) for k in ("loss", "mse", "vb"))
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.001 * 100 * losses["vb"])
    # the vb term equals vlb_terms of the same output
    xt = d.q_sample(x0, t, noise)
    torch.testing.assert_close(losses["vb"], vlb_terms(d, model(xt, t), x0, xt, t))
    torch.testing.assert_close(losses["mse"], ((model(xt, t)[:, :1] - noise) ** 2).flatten(1).mean(1))

    grads = torch.autograd.grad(losses["loss"].sum(), [model.mean, model.var])
    g_mse = torch.autograd.grad(hybrid_loss(d, model, x0, t, noise)["mse"].sum(), [model.mean, model.var], allow_unused=True)
    g_vb = torch.autograd.grad(hybrid_loss(d, model, x0, t, noise)["vb"].sum(), [model.mean, model.var], allow_unused=True)
    assert not g_mse[1].any() and (g_vb[0] is None or not g_vb[0].any())  # mean <- L_simple only, variance <- L_vlb only
    torch.testing.assert_close(grads[0], g_mse[0])
    torch.testing.assert_close(grads[1], 0.1 * g_vb[1])
    assert grads[1].abs().sum() > 0
