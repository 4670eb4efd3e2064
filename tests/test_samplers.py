"""Every sampler on Gaussian data N(MU, S^2), where the exact noise predictor is known:

    eps*(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) MU) / (abar S^2 + 1 - abar)

With it every sampler is affine in its inputs (x_T and, for ancestral, the injected noise), so the
output distribution is measured exactly, without Monte Carlo: feed unit inputs and read the
coefficients. The tolerance of each sampler scales with its order in the number of steps.
"""
from __future__ import annotations

import pytest
import torch

from layoutdiffuse.diffusion import GaussianDiffusion, make_sampler
from layoutdiffuse.diffusion.solvers import logsnr_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)

MU, S = 0.5, 0.3


def gaussian_eps(d: GaussianDiffusion):
    abar = torch.cumprod(1 - d.betas64, 0)

    def model_fn(x, t):
        a = abar[t].view(-1, *[1] * (x.ndim - 1))
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * MU) / (a * S**2 + 1 - a)).float()

    return model_fn


def learned_oracle(d: GaussianDiffusion, timesteps: torch.Tensor):
    """eps* plus the variance channel v of the TRUE reverse step of the (respaced) chain:
    Var(x_{t'} | x_t) = beta~'_t + coef1'^2 Var(x0 | x_t), mapped through improved DDPM eq. 15."""
    abar = torch.cumprod(1 - d.betas64, 0)[timesteps]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev
    tbeta = beta * (1 - abar_prev) / (1 - abar)
    coef1 = beta * abar_prev.sqrt() / (1 - abar)
    var = tbeta + coef1**2 * S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
    v = 2 * (var.log() - tbeta.log()) / (beta.log() - tbeta.log()) - 1
    v[0] = 0.0  # the last step returns the mean
    index = torch.full((d.num_timesteps,), -1, dtype=torch.long)
    index[timesteps] = torch.arange(len(timesteps))
    eps_fn = gaussian_eps(d)

    def model_fn(x, t):
        k = index[t]
        assert (k >= 0).all(), "the sampler asked for a timestep outside its chain"
        return torch.cat([eps_fn(x, t), v[k].float().view(-1, 1, 1, 1).expand_as(x)], 1)

    return model_fn, v


def affine_output(sampler, model_fn) -> tuple[float, float]:
    """(mean, std) of a deterministic sampler's output for x_T ~ N(0, 1), exactly."""
    y = sampler.sample(model_fn, (2, 1, 1, 1), x_T=torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)).flatten().double()
    return y[0].item(), (y[1] - y[0]).abs().item()


def linearized_output(sampler, model_fn) -> tuple[float, float]:
    """(mean, std) of the ancestral sampler's output, exactly: row 0 has all inputs zero, row 1 a unit
    x_T, row k + 2 a unit noise at the k-th noisy step (the sampler's noise is replaced)."""
    n = len(sampler.timesteps)
    x_T = torch.zeros(n + 1, 1, 1, 1)
    x_T[1] = 1
    calls = []

    def unit_noise(x, generator):
        z = torch.zeros_like(x)
        z[2 + len(calls)] = 1
        calls.append(1)
        return z

    sampler.noise_like = unit_noise
    y = sampler.sample(model_fn, (n + 1, 1, 1, 1), x_T=x_T).flatten().double()
    assert len(calls) == n - 1  # one noise per step but the last
    return y[0].item(), (y[1:] - y[0]).pow(2).sum().sqrt().item()


# (sampler, options, schedule, steps, tolerance on |mean - MU| and |std - S|)
# tolerances: order p in the steps, C / steps**p, with the measured errors 1.2-3x below them
CASES = [
    ("ancestral", {"variance": "fixed_small"}, "linear", 50, 0.4 / 50**0.5),
    ("ancestral", {"variance": "fixed_small"}, "linear", 1000, 0.4 / 1000**0.5),
    ("ancestral", {"variance": "fixed_small"}, "cosine", 100, 0.4 / 100**0.5),
    ("ancestral", {"variance": "fixed_large"}, "linear", 50, 0.2 / 50**0.5),
    ("ancestral", {"variance": "fixed_large"}, "cosine", 1000, 0.2 / 1000**0.5),
    ("ddim", {}, "linear", 25, 1.5 / 25),
    ("ddim", {}, "linear", 100, 1.5 / 100),
    ("ddim", {}, "cosine", 25, 1.0 / 25),
    ("plms", {}, "linear", 20, 4.0 / 20**2),
    ("plms", {}, "linear", 50, 4.0 / 50**2),
    ("plms", {}, "cosine", 20, 4.0 / 20**2),
    ("dpm++", {}, "linear", 10, 3.0 / 10**2),
    ("dpm++", {}, "linear", 20, 3.0 / 20**2),
    ("dpm++", {}, "linear", 25, 3.0 / 25**2),
    ("dpm++", {}, "cosine", 20, 3.0 / 20**2),
    ("dpm++", {"spacing": "time"}, "cosine", 25, 0.3 / 25),
    ("dpm++sde", {}, "linear", 20, 6.0 / 20**2),
    ("dpm++sde", {}, "linear", 50, 6.0 / 50**2),
    ("dpm++sde", {}, "cosine", 25, 6.0 / 25**2),
]
STOCHASTIC = ("ancestral", "dpm++sde")  # measured exactly by linearized_output


@pytest.mark.parametrize("name,options,schedule,steps,tol", CASES, ids=[f"{c[0]}{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_sampler_reproduces_gaussian_data(name, options, schedule, steps, tol):
    d = GaussianDiffusion(schedule, 1000)
    sampler = make_sampler(name, d, steps=steps, **options)
    measure = linearized_output if name in STOCHASTIC else affine_output
    mean, std = measure(sampler, gaussian_eps(d))
    # x_T ~ N(0, 1) rather than q(x_T) leaves a floor of ~1e-3 on the mean (linear schedule)
    assert abs(mean - MU) < max(tol, 2e-3), f"mean {mean:.5f} vs {MU}"
    assert abs(std - S) < tol, f"std {std:.5f} vs {S}"


@pytest.mark.parametrize("name,steps", [("ancestral", (10, 50, 200)), ("ddim", (10, 50, 200)), ("plms", (10, 15, 20)), ("dpm++", (15, 30, 50)),
                                        ("dpm++sde", (25, 50, 100))])
def test_error_shrinks_with_steps(name, steps):
    """(Above these step counts plms and dpm++ reach the float32 floor, ~2e-4.)"""
    d = GaussianDiffusion("linear", 1000)
    measure = linearized_output if name in STOCHASTIC else affine_output
    errors = [abs(measure(make_sampler(name, d, steps=n), gaussian_eps(d))[1] - S) for n in steps]
    assert errors[0] > errors[1] > errors[2], errors


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [25, 50, 1000])
def test_learned_variance_ancestral_is_exact_on_respaced_chains(schedule, steps):
    """With the true reverse variance (an oracle for the respaced chain) ancestral sampling is exact
    at any number of steps -- the respaced chain's beta and beta~ are what v interpolates."""
    d = GaussianDiffusion(schedule, 1000, learn_sigma=True)
    sampler = make_sampler("ancestral", d, steps=steps)
    assert sampler.variance == "learned"
    model_fn, v = learned_oracle(d, sampler.timesteps)
    assert v[1:].min() >= -1 and v[1:].max() <= 1  # the true variance lies in [beta~, beta]
    mean, std = linearized_output(sampler, model_fn)
    assert abs(mean - MU) < 1e-3 and abs(std - S) < 1e-3, (mean, std)


def test_ancestral_draws_its_noise_from_the_generator():
    d = GaussianDiffusion("linear", 1000)
    s = make_sampler("ancestral", d, steps=50)
    fn = gaussian_eps(d)
    a = s.sample(fn, (20000, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    b = s.sample(fn, (20000, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    c = s.sample(fn, (20000, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    exact_mean, exact_std = linearized_output(make_sampler("ancestral", d, steps=50), fn)
    assert abs(a.mean().item() - exact_mean) < 4 * S / 20000**0.5
    assert abs(a.std().item() - exact_std) < 4 * S / (2 * 20000) ** 0.5


@pytest.mark.parametrize("name,options", [("ddim", {"eta": 0.0}), ("plms", {}), ("dpm++", {}), ("dpm++", {"spacing": "time"})])
def test_deterministic_samplers(name, options):
    """Same x_T -> same output, whatever the generator; reusing the sampler starts a fresh trajectory."""
    d = GaussianDiffusion("cosine", 1000)
    s = make_sampler(name, d, steps=15, **options)
    fn = gaussian_eps(d)
    x_T = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    a = s.sample(fn, x_T.shape, x_T=x_T.clone(), generator=torch.Generator().manual_seed(1))
    b = s.sample(fn, x_T.shape, x_T=x_T.clone(), generator=torch.Generator().manual_seed(2))
    c = make_sampler(name, d, steps=15, **options).sample(fn, x_T.shape, x_T=x_T.clone())
    assert torch.equal(a, b) and torch.equal(a, c)


def test_ddim_with_eta_is_stochastic():
    d = GaussianDiffusion("linear", 1000)
    s = make_sampler("ddim", d, steps=20, eta=1.0)
    x_T = torch.zeros(4, 1, 2, 2)
    a = s.sample(gaussian_eps(d), x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = s.sample(gaussian_eps(d), x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_plms_of_order_one_is_ddim():
    d = GaussianDiffusion("linear", 1000)
    x_T = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    a = make_sampler("plms", d, steps=20, order=1).sample(gaussian_eps(d), x_T.shape, x_T=x_T)
    b = make_sampler("ddim", d, steps=20).sample(gaussian_eps(d), x_T.shape, x_T=x_T)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_first_dpm_solver_step_is_a_ddim_step():
    """DPM-Solver++ of first order (its first step) is DDIM: exact exponential integrator."""
    d = GaussianDiffusion("linear", 1000)
    dpm, ddim = make_sampler("dpm++", d, steps=20, spacing="time"), make_sampler("ddim", d, steps=20)
    assert torch.equal(dpm.timesteps, ddim.timesteps)
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    i = len(dpm.timesteps) - 1
    torch.testing.assert_close(dpm.step(gaussian_eps(d), x, i, None), ddim.step(gaussian_eps(d), x, i, None), rtol=1e-4, atol=1e-5)


def test_dpm_solver_20_steps_matches_1000_step_ancestral():
    d = GaussianDiffusion("linear", 1000)
    fn = gaussian_eps(d)
    ref_mean, ref_std = linearized_output(make_sampler("ancestral", d), fn)
    mean, std = affine_output(make_sampler("dpm++", d, steps=20), fn)
    ddim_mean, ddim_std = affine_output(make_sampler("ddim", d, steps=20), fn)
    assert abs(mean - ref_mean) < 2e-3 and abs(std - ref_std) < 1e-2
    assert abs(std - ref_std) < abs(ddim_std - ref_std) / 5  # much closer than DDIM at 20 steps


def test_logsnr_timesteps():
    d = GaussianDiffusion("cosine", 1000)
    for steps in (2, 5, 20, 100, 1000):
        ts = logsnr_timesteps(d, steps)
        assert len(ts) == steps and ts[0] == 0 and ts[-1] == 999 and (ts.diff() > 0).all()
    ts = logsnr_timesteps(d, 20)[:-1]
    abar = torch.cumprod(1 - d.betas64, 0)[ts]
    gaps = (0.5 * (abar / (1 - abar)).log()).diff().abs()
    assert gaps.max() / gaps.min() < 1.6  # even in lambda (up to rounding to integer timesteps)
    with pytest.raises(ValueError, match="spacing"):
        make_sampler("dpm++", d, spacing="karras")
    with pytest.raises(ValueError, match="order"):
        make_sampler("plms", d, order=5)


def test_samplers_use_prediction_targets():
    """The same x0 reached from an eps-, x0- or v-predicting oracle (plms and dpm++)."""
    d_eps = GaussianDiffusion("cosine", 1000)
    eps_fn = gaussian_eps(d_eps)
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for name in ("plms", "dpm++"):
        ref = make_sampler(name, d_eps, steps=10).sample(eps_fn, x_T.shape, x_T=x_T)
        for prediction in ("x0", "v"):
            d = GaussianDiffusion("cosine", 1000, prediction=prediction)

            def fn(x, t, d=d):
                eps = eps_fn(x, t)
                x0 = d_eps.x0_from_eps(x, t, eps)
                return x0 if prediction == "x0" else d.v_from(x0, eps, t)

            out = make_sampler(name, d, steps=10).sample(fn, x_T.shape, x_T=x_T)
            torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_dpm_sde_at_eta_0_is_the_ode_solver_and_draws_noise_from_the_generator():
    d = GaussianDiffusion("linear", 1000)
    fn = gaussian_eps(d)
    x_T = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    ode = make_sampler("dpm++", d, steps=12).sample(fn, x_T.shape, x_T=x_T)
    assert torch.equal(make_sampler("dpm++sde", d, steps=12, eta=0.0).sample(fn, x_T.shape, x_T=x_T), ode)
    sde = make_sampler("dpm++sde", d, steps=12)
    a, b, c = (sde.sample(fn, x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(k)) for k in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, ode)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        make_sampler("dpm++sde", d, eta=-0.5)
