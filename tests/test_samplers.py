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
from layoutdiffuse.diffusion.samplers import Run
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


# --- step counts: every sampler takes every count in [1, T], and refuses the rest clearly ---------
SAMPLER_VARIANTS = [
    ("ancestral", {}), ("ancestral", {"variance": "fixed_large"}), ("ancestral", {"variance": "learned"}),
    ("ddim", {}), ("ddim", {"eta": 1.0}), ("plms", {}), ("dpm++", {}), ("dpm++", {"spacing": "time"}), ("dpm++sde", {}),
]


@pytest.mark.parametrize("name,options", SAMPLER_VARIANTS)
def test_every_step_count_from_1_to_T_samples(name, options):
    """Each step count 1..T on a short chain (and the extremes on T = 1000) gives finite samples of the
    right shape; one step lands on the x0 prediction at t = T-1 for the deterministic samplers."""
    learned = options.get("variance") == "learned"
    for T, schedule, counts in ((8, "cosine", range(1, 9)), (1000, "linear", (1, 2, 3, 999, 1000))):
        d = GaussianDiffusion(schedule, num_timesteps=T, learn_sigma=learned)
        eps = gaussian_eps(d)
        model_fn = (lambda x, t: torch.cat([eps(x, t), torch.zeros_like(x)], 1)) if learned else eps
        for steps in counts:
            sampler = make_sampler(name, d, steps=steps, **options)
            out = sampler.sample(model_fn, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0))
            assert out.shape == (3, 1, 2, 2) and torch.isfinite(out).all(), (name, options, T, steps)
            assert sampler.timesteps[-1] == T - 1 and sampler.timesteps[0] == (T - 1 if steps == 1 else 0)


def test_one_step_is_the_x0_prediction_at_the_last_timestep():
    """With one step every sampler returns the model's x0 estimate from pure noise at t = T-1."""
    d = GaussianDiffusion(num_timesteps=50)
    eps = gaussian_eps(d)
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((4,), 49, dtype=torch.long)
    expected = d.x0_from_eps(x_T, t, eps(x_T, t))
    for name in ("ancestral", "ddim", "plms", "dpm++", "dpm++sde"):
        out = make_sampler(name, d, steps=1).sample(eps, x_T.shape, x_T=x_T.clone(), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["ancestral", "ddim", "plms", "dpm++", "dpm++sde"])
@pytest.mark.parametrize("steps", [0, -3, 9, 2.5, "10", True])
def test_bad_step_counts_are_refused_with_the_allowed_range(name, steps):
    from layoutdiffuse.errors import UserError

    with pytest.raises(UserError, match=r"steps must be an integer in \[1, 8\]"):
        make_sampler(name, GaussianDiffusion("cosine", num_timesteps=8), steps=steps)


# --- the per-step callback and run-local history ------------------------------------------------------

EVERY_SAMPLER = [("ancestral", {}), ("ancestral", {"variance": "fixed_large"}), ("ddim", {}), ("ddim", {"eta": 1.0}),
                 ("plms", {}), ("plms", {"spacing": "ldm", "warmup": "improved_euler"}), ("dpm++", {}), ("dpm++sde", {})]


@pytest.mark.parametrize("name, options", EVERY_SAMPLER)
def test_the_callback_sees_every_step_once_with_its_x_t_and_x0_prediction(name, options):
    d = GaussianDiffusion("linear", 100)
    sampler = make_sampler(name, d, steps=10, **options)
    eps = gaussian_eps(d)
    calls = []
    x = sampler.sample(eps, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0),
                       callback=lambda step, t, x_t, x0: calls.append((step, t, x_t.clone(), x0.clone())))
    assert [c[0] for c in calls] == list(range(10))
    assert [c[1] for c in calls] == sampler.timesteps.flip(0).tolist()  # from the noisy end down, as ints
    assert all(c[2].shape == c[3].shape == (3, 1, 2, 2) for c in calls)
    # x0_pred is the model's x0 at (x_t, t), computed independently here
    for _, t, x_t, x0 in calls:
        tt = torch.full((3,), t)
        torch.testing.assert_close(x0, d.predict(eps(x_t, tt), x_t, tt)[0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(calls[0][2], calls[1][2])
    if name == "dpm++" or name == "ddim" and not options:  # deterministic samplers end on their last x0 prediction
        torch.testing.assert_close(x, calls[-1][3])


@pytest.mark.parametrize("name, options", [("plms", {}), ("plms", {"spacing": "ldm", "warmup": "improved_euler"}), ("dpm++", {}),
                                           ("dpm++sde", {})])
def test_interleaved_runs_of_one_multistep_sampler_equal_separate_runs(name, options):
    """A second draw nested inside the first (from its callback), and two trajectories stepped in
    turn, give what each gives alone: the history belongs to the run, not to the sampler."""
    d = GaussianDiffusion("linear", 100)
    sampler = make_sampler(name, d, steps=10, **options)
    eps = gaussian_eps(d)
    x_a, x_b = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1)).chunk(2)
    alone_a = sampler.sample(eps, x_a.shape, x_T=x_a, generator=torch.Generator().manual_seed(5))
    alone_b = sampler.sample(eps, x_b.shape, x_T=x_b, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(alone_a, alone_b)

    nested = {}

    def draw_b(step, t, x_t, x0):
        if step == 4:
            nested["b"] = sampler.sample(eps, x_b.shape, x_T=x_b, generator=torch.Generator().manual_seed(6))

    assert torch.equal(sampler.sample(eps, x_a.shape, x_T=x_a, generator=torch.Generator().manual_seed(5), callback=draw_b), alone_a)
    assert torch.equal(nested["b"], alone_b)

    runs, xs = [Run(), Run()], [x_a, x_b]
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    for i in range(len(sampler.timesteps) - 1, -1, -1):
        for k in (0, 1):
            xs[k] = sampler.step(eps, xs[k], i, gens[k], runs[k])
    assert torch.equal(xs[0], alone_a) and torch.equal(xs[1], alone_b)
    assert len(runs[0].history) == sampler.keep
