"""Improved DDPM (Nichol & Dhariwal 2021): the variational bound, the hybrid loss and bits/dim.

Every function is one equation. Notation as in :mod:`layoutdiffuse.diffusion.gaussian`; the model's
raw output has ``2 C`` channels when ``diffusion.learn_sigma`` (prediction, then the variance
interpolation ``v``, eq. 15). Pixels ``x0`` are in [-1, 1] on the 256-level grid
``-1 + 2 k / 255`` (what :func:`discretized_gaussian_log_likelihood` scores).

The terms of ``L_vlb = L_0 + L_1 + ... + L_{T-1} + L_T`` (DDPM eq. 5, improved DDPM eq. 4-6),
in bits per dimension:

* ``L_T = KL(q(x_T | x_0) || N(0, I))`` -- :func:`prior_bpd`;
* ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for ``t > 0`` -- :func:`vlb_terms`;
* ``L_0 = -log p(x_0 | x_1)``, a discretised Gaussian decoder -- :func:`vlb_terms` at ``t = 0``.

(Timesteps here are 0-based, so the decoder term is the one at ``t = 0``.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .gaussian import GaussianDiffusion, ModelFn
from ..errors import UserError

LOG2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: ``(B, ...) -> (B,)``."""
    return x.flatten(1).mean(1)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` elementwise, in nats (broadcasting).

    ``0.5 (logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1)``.
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """``Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (the approximation of the
    original release, so bits/dim are comparable with published numbers; max error ~2e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """``log P(x)`` of 8-bit pixels under ``N(means, exp(log_scales)^2)`` binned into 256 bins.

    DDPM eq. 13: the bin of ``x`` is ``[x - 1/255, x + 1/255]``, except the edge bins, which extend
    to ``-inf`` (``x = -1``) and ``+inf`` (``x = 1``), so the 256 probabilities sum to 1.
    ``x, means, log_scales``: same (broadcastable) shape, ``x`` on the grid ``-1 + 2k/255``.
    Returns elementwise log-probabilities in nats.
    """
    if x.shape != means.shape:
        raise UserError(f"x and means must have the same shape, got {tuple(x.shape)} and {tuple(means.shape)}")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def p_mean_log_variance(diffusion: GaussianDiffusion, model_out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reverse step ``p(x_{t-1} | x_t) = N(mu, e^logvar)``: ``(mu, logvar, x0_pred)``.

    ``mu = mu~_t(x0_pred, x_t)`` (DDPM eq. 7 with the predicted x0); ``logvar`` from the model's
    ``v`` channels (improved DDPM eq. 15). Needs ``diffusion.learn_sigma``.
    """
    if not diffusion.learn_sigma:
        raise UserError("the variational bound needs a learned variance: build GaussianDiffusion(learn_sigma=True) "
                         "and a model with out_channel = 2 * in_channel")
    if model_out.shape[1] != 2 * xt.shape[1]:
        raise UserError(f"a learned-variance model must output 2 * {xt.shape[1]} channels, got {model_out.shape[1]}")
    model_out, xt = model_out.float(), xt.float()  # the bound in float32, even under autocast
    x0_pred, _ = diffusion.predict(model_out, xt, t)
    mean, _, _ = diffusion.q_posterior(x0_pred, xt, t)
    log_var = diffusion.learned_log_variance(diffusion.split(model_out)[1], t)
    return mean, log_var, x0_pred


def vlb_terms(diffusion: GaussianDiffusion, model_out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The term ``L_t`` of the bound at each example's ``t``, in bits per dimension: ``(B,)``.

    ``t > 0``: ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` (improved DDPM eq. 5);
    ``t = 0``: the decoder NLL ``-log p(x_0 | x_1)`` with the discretised Gaussian (eq. 6).
    ``model_out: (B, 2C, H, W)`` at ``(xt, t)``; ``x0, xt: (B, C, H, W)``; ``t: (B,)``.
    """
    x0, xt = x0.float(), xt.float()
    true_mean, _, true_log_var = diffusion.q_posterior(x0, xt, t)
    mean, log_var, _ = p_mean_log_variance(diffusion, model_out, xt, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / LOG2
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / LOG2
    return torch.where(t == 0, decoder_nll, kl)


def prior_bpd(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """``L_T = KL(q(x_T | x_0) || N(0, I))`` in bits per dimension: ``(B, C, H, W) -> (B,)``.

    Not trained (the schedule fixes it), but part of the bound reported as NLL.
    """
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean, _, log_var = diffusion.q_mean_variance(x0, t)
    return mean_flat(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var))) / LOG2


def hybrid_loss(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    lambda_vlb: float = 0.001,
) -> dict[str, torch.Tensor]:
    """``L_hybrid = L_simple + lambda L_vlb`` (improved DDPM eq. 16), per example.

    ``L_vlb`` is estimated from the single sampled term as ``T * L_t`` (so ``lambda = 0.001``
    means what the paper means). Inside ``L_vlb`` the predicted mean is stop-gradiented: the mean
    learns from ``L_simple`` only and the variance channels from ``L_vlb`` only.

    ``model_fn(x_t, t) -> (B, 2C, H, W)``; ``x0: (B, C, H, W)`` on the 256-level grid; ``t: (B,)``.
    Returns ``{"loss", "mse", "vb"}`` each ``(B,)`` (``vb`` = ``L_t`` in bits/dim) and ``"x_t"``.
    """
    noise = torch.randn_like(x0) if noise is None else noise
    xt = diffusion.q_sample(x0, t, noise)
    out = model_fn(xt, t)
    pred, v = diffusion.split(out)
    if v is None:
        raise UserError("hybrid_loss needs a learned variance: GaussianDiffusion(learn_sigma=True) and a model "
                         "with out_channel = 2 * in_channel")
    mse = mean_flat(F.mse_loss(pred.float(), diffusion.target(x0, noise, t).float(), reduction="none"))
    vb = vlb_terms(diffusion, torch.cat([pred.detach(), v], dim=1), x0, xt, t)
    return {"loss": mse + lambda_vlb * diffusion.num_timesteps * vb, "mse": mse, "vb": vb, "x_t": xt}


@torch.no_grad()
def calc_bpd_loop(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The whole bound ``L_0 + ... + L_T`` per example, in bits per dimension (NLL evaluation).

    One model call per timestep, all examples together; each ``L_t`` uses one draw of
    ``x_t ~ q(x_t | x_0)``. ``model_fn(x_t, t) -> (B, 2C, H, W)`` with ``t`` indexing this
    ``diffusion`` (evaluate on the full training chain). ``x0: (B, C, H, W)`` on the 256-level grid.

    Returns ``{"total_bpd": (B,), "prior_bpd": (B,), "vb": (B, T), "xstart_mse": (B, T), "mse": (B, T)}``
    (``mse`` of the eps prediction, as in the original release).
    """
    b, num_t = x0.shape[0], diffusion.num_timesteps
    vb, xstart_mse, eps_mse = (x0.new_zeros(b, num_t) for _ in range(3))
    for step in tqdm(range(num_t - 1, -1, -1), desc="bits/dim", disable=not progress, leave=False):
        t = torch.full((b,), step, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xt = diffusion.q_sample(x0, t, noise)
        out = model_fn(xt, t)
        vb[:, step] = vlb_terms(diffusion, out, x0, xt, t)
        x0_pred, eps_pred = diffusion.predict(out, xt, t)
        xstart_mse[:, step] = mean_flat((x0_pred - x0) ** 2)
        eps_mse[:, step] = mean_flat((eps_pred - noise) ** 2)
    prior = prior_bpd(diffusion, x0)
    return {"total_bpd": vb.sum(1) + prior, "prior_bpd": prior, "vb": vb, "xstart_mse": xstart_mse, "mse": eps_mse}
