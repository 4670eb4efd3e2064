"""Gaussian diffusion (DDPM): the forward process, the posterior, and prediction targets.

Notation (Ho et al. 2020): ``abar_t = prod_{s<=t} (1 - beta_s)``;
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Timesteps are integers in ``[0, T)``.
Every coefficient is computed once in float64 and stored as a float32 buffer, so the module moves
with the LightningModule to any device. Models never see this class: they map ``(x_t, t, cond)`` to
a raw output that :meth:`GaussianDiffusion.split` interprets.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .schedule import make_betas
from ..errors import UserError

PREDICTIONS = ("eps", "x0", "v")
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def extract(coef: torch.Tensor, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``coef[t]`` reshaped to broadcast against ``shape``: ``(B,) -> (B, 1, ..., 1)``."""
    return coef[t].reshape(t.shape[0], *([1] * (len(shape) - 1)))


class GaussianDiffusion(nn.Module):
    """Coefficients and formulas of a Gaussian diffusion.

    Args:
        schedule: ``linear``, ``scaled_linear`` or ``cosine`` (or pass ``betas``).
        num_timesteps: T.
        prediction: what the model predicts: ``eps``, ``x0`` or ``v``.
        learn_sigma: the model also outputs variance channels (improved DDPM); see
            :mod:`layoutdiffuse.diffusion.improved`.
        betas: explicit float64 ``(T,)`` betas (e.g. a respaced schedule); overrides ``schedule``.
        schedule_kwargs: passed to the schedule (``beta_start``, ``beta_end``, ``s``).
    """

    def __init__(
        self,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        prediction: str = "eps",
        learn_sigma: bool = False,
        betas: torch.Tensor | None = None,
        **schedule_kwargs,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise UserError(f"unknown prediction '{prediction}'; choose one of: {', '.join(PREDICTIONS)}")
        self.prediction = prediction
        self.learn_sigma = learn_sigma
        self.schedule = schedule
        betas = make_betas(schedule, num_timesteps, **schedule_kwargs) if betas is None else betas.to(torch.float64)
        if not ((betas > 0) & (betas < 1)).all():
            raise UserError("betas must lie in (0, 1)")
        self.num_timesteps = len(betas)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        coefs = dict(
            betas=betas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=abar.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - abar).sqrt(),
            log_one_minus_alphas_cumprod=torch.log1p(-abar),
            sqrt_recip_alphas_cumprod=(1 / abar).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1 / abar - 1).sqrt(),
            posterior_variance=post_var,
            # posterior variance is 0 at t = 0: clip the log with the value at t = 1 (a one-step chain
            # has no t = 1; its only step returns the mean, and beta_0 stands in as the clip value)
            posterior_log_variance_clipped=torch.log(torch.cat([post_var[1:2], post_var[1:]]) if len(betas) > 1 else betas),
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1 - abar),
            posterior_mean_coef2=(1 - abar_prev) * alphas.sqrt() / (1 - abar),
        )
        self.betas64 = betas
        for name, value in coefs.items():
            self.register_buffer(name, value.float(), persistent=False)

    # --- forward process ----------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``: mean, variance, log-variance."""
        mean = extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
        var = extract(1 - self.alphas_cumprod, t, x0.shape)
        return mean, var, extract(self.log_one_minus_alphas_cumprod, t, x0.shape)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)``. ``x0: (B, ...)``, ``t: (B,)``."""
        noise = torch.randn_like(x0) if noise is None else noise
        return extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(x_{t-1} | x_t, x_0)`` (DDPM eq. 6-7): mean, variance, clipped log-variance."""
        mean = extract(self.posterior_mean_coef1, t, xt.shape) * x0 + extract(self.posterior_mean_coef2, t, xt.shape) * xt
        return mean, extract(self.posterior_variance, t, xt.shape), extract(self.posterior_log_variance_clipped, t, xt.shape)

    # --- conversions between x0, eps and v ----------------------------------------------------
    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return extract(self.sqrt_recip_alphas_cumprod, t, xt.shape) * xt - extract(self.sqrt_recipm1_alphas_cumprod, t, xt.shape) * eps

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (extract(self.sqrt_recip_alphas_cumprod, t, xt.shape) * xt - x0) / extract(self.sqrt_recipm1_alphas_cumprod, t, xt.shape)

    def v_from(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022)."""
        return extract(self.sqrt_alphas_cumprod, t, x0.shape) * eps - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0

    def x0_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return extract(self.sqrt_alphas_cumprod, t, xt.shape) * xt - extract(self.sqrt_one_minus_alphas_cumprod, t, xt.shape) * v

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw model output -> (prediction channels, variance channels or None)."""
        if not self.learn_sigma:
            return out, None
        return out.chunk(2, dim=1)

    def predict(self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output -> ``(x0, eps)`` whatever the prediction target.

        With ``clip``, x0 is clamped to [-1, 1] and eps recomputed from the clamped x0.
        """
        pred, _ = self.split(out)
        if self.prediction == "eps":
            eps, x0 = pred, self.x0_from_eps(xt, t, pred)
        elif self.prediction == "x0":
            x0, eps = pred, self.eps_from_x0(xt, t, pred)
        else:
            x0 = self.x0_from_v(xt, t, pred)
            eps = extract(self.sqrt_one_minus_alphas_cumprod, t, xt.shape) * xt + extract(self.sqrt_alphas_cumprod, t, xt.shape) * pred
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = self.eps_from_x0(xt, t, x0)
        return x0, eps

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of ``prediction`` for ``x_t = q_sample(x0, t, noise)``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.v_from(x0, noise, t)

    def training_losses(self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """L_simple: per-example MSE between the model's prediction and its target.

        ``model_fn(x_t, t) -> raw output``. Returns ``{"loss": (B,), "mse": (B,), "x_t": x_t}``.
        """
        noise = torch.randn_like(x0) if noise is None else noise
        xt = self.q_sample(x0, t, noise)
        pred, _ = self.split(model_fn(xt, t))
        mse = F.mse_loss(pred, self.target(x0, noise, t), reduction="none").flatten(1).mean(1)
        return {"loss": mse, "mse": mse, "x_t": xt}

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Improved DDPM eq. 15: ``log var = f log beta_t + (1 - f) log beta~_t`` with ``f = (v + 1) / 2``.

        ``v``: the model's variance channels, roughly in [-1, 1].
        """
        frac = (v + 1) / 2
        min_log = extract(self.posterior_log_variance_clipped, t, v.shape)
        max_log = extract(torch.log(self.betas), t, v.shape)
        return frac * max_log + (1 - frac) * min_log

    def respaced(self, timesteps: torch.Tensor) -> "GaussianDiffusion":
        """The same process seen only at increasing ``timesteps`` (a subsequence of ``[0, T)``).

        New betas ``1 - abar[t_i] / abar[t_{i-1}]`` keep every ``abar`` of the kept steps
        (improved DDPM, "respace"). The returned diffusion's step ``i`` is this one's ``timesteps[i]``.
        """
        timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
        abar = torch.cumprod(1 - self.betas64, 0)[timesteps]
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        new = GaussianDiffusion(prediction=self.prediction, learn_sigma=self.learn_sigma, betas=1 - abar / prev)
        return new.to(self.betas.device)
