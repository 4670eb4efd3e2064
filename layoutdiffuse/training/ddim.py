"""``DDIMTraining``: improved DDPM training (Nichol & Dhariwal 2021).

The name is the seed's (the original release keeps improved DDPM in a folder called "DDIM");
this is **not** DDIM training -- DDIM is a sampler (``make_sampler("ddim", ...)``), and any trained
model can use it. What this module changes with respect to :class:`DDPMTraining`:

* the cosine schedule by default;
* a learned variance: ``learn_sigma=True``, so the model has ``out_channel = 2 * in_channel``;
* the hybrid loss ``L_simple + lambda * L_vlb`` (:func:`layoutdiffuse.diffusion.improved.hybrid_loss`);
* importance-sampled timesteps (the loss-second-moment resampler), whose loss history is saved in
  the Lightning checkpoint, so a resumed run draws the timesteps an uninterrupted run would;
* ancestral sampling with the learned variance on a respaced chain (100 steps) by default.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..diffusion import GaussianDiffusion, conditioned
from ..diffusion.improved import hybrid_loss
from ..diffusion.resample import TimestepSampler, make_timestep_sampler
from .ddpm import DDPMTraining
from ..errors import UserError

IMPROVED_DEFAULTS = {"schedule": "cosine", "num_timesteps": 1000, "learn_sigma": True}
CHECKPOINT_KEY = "timestep_sampler"


class DDIMTraining(DDPMTraining):
    """Improved DDPM: cosine schedule, learned variance, hybrid loss, loss-aware timesteps.

    Args (besides those of :class:`DDPMTraining`):
        denoising_model: ``model(x_t, t, cond) -> (B, 2C, H, W)`` (prediction, then variance channels).
        diffusion: a :class:`GaussianDiffusion` with ``learn_sigma=True``, or keyword arguments
            merged over ``{"schedule": "cosine", "num_timesteps": 1000, "learn_sigma": True}``.
        lambda_vlb: weight of ``L_vlb`` in the hybrid loss (paper: 0.001).
        timestep_sampler: ``loss-second-moment`` (default) or ``uniform``.
        timestep_sampler_options: e.g. ``{"history_per_term": 10, "uniform_prob": 0.001}``.

    Under DDP every rank all-gathers ``(t, loss)`` before updating the resampler, so all ranks
    hold the same history (and rank 0's checkpoint is everyone's).
    """

    def __init__(
        self,
        denoising_model: nn.Module,
        diffusion: GaussianDiffusion | dict[str, Any] | None = None,
        lambda_vlb: float = 0.001,
        timestep_sampler: str = "loss-second-moment",
        timestep_sampler_options: dict[str, Any] | None = None,
        sampling: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if not isinstance(diffusion, GaussianDiffusion):
            diffusion = GaussianDiffusion(**{**IMPROVED_DEFAULTS, **(diffusion or {})})
        if not diffusion.learn_sigma:
            raise UserError("DDIMTraining (improved DDPM) needs a learned variance: GaussianDiffusion(learn_sigma=True)")
        in_ch, out_ch = getattr(denoising_model, "in_channel", None), getattr(denoising_model, "out_channel", None)
        config = getattr(denoising_model, "config", None)
        if isinstance(config, dict):
            in_ch, out_ch = config.get("in_channel", in_ch), config.get("out_channel", out_ch)
        if in_ch is not None and out_ch is not None and out_ch != 2 * in_ch:
            raise UserError(f"a learned-variance model needs out_channel = 2 * in_channel = {2 * in_ch}, got out_channel={out_ch}")
        if lambda_vlb < 0:
            raise UserError(f"lambda_vlb must be >= 0, got {lambda_vlb}")
        super().__init__(denoising_model, diffusion=diffusion, sampling={"sampler": "ancestral", "steps": 100, **(sampling or {})}, **kwargs)
        self.lambda_vlb = lambda_vlb
        self.timestep_sampler: TimestepSampler = make_timestep_sampler(timestep_sampler, self.diffusion.num_timesteps, **(timestep_sampler_options or {}))

    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``t (B,)`` from the timestep sampler and the importance weights ``1 / (T p(t))`` ``(B,)``."""
        return self.timestep_sampler.sample(batch_size, self.device, generator)

    def compute_losses(self, x0: torch.Tensor, t: torch.Tensor, cond: dict[str, Any] | None, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hybrid loss terms ``{"loss", "mse", "vb"}``, each ``(B,)``."""
        return hybrid_loss(self.diffusion, conditioned(self.model, cond), x0, t, noise, self.lambda_vlb)

    def after_losses(self, t: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """Feed the (all-gathered) per-example training losses to the timestep sampler."""
        t, loss = t.detach(), losses["loss"].detach()
        if self._trainer is not None and self.trainer.world_size > 1:
            t, loss = self.all_gather(t).reshape(-1), self.all_gather(loss).reshape(-1)
        self.timestep_sampler.update(t, loss)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = self.timestep_sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if CHECKPOINT_KEY in checkpoint:
            self.timestep_sampler.load_state_dict(checkpoint[CHECKPOINT_KEY])
