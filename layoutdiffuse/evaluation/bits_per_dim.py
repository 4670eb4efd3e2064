"""Bits/dim: the variational bound of a trained model on real images (improved DDPM, section 3)."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..diffusion import GaussianDiffusion, calc_bpd_loop


def bits_per_dim(module: Any, images: torch.Tensor, batch_size: int = 128, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The variational bound ``L_0 + ... + L_T`` of ``images (N, C, H, W)`` (256-level grid) in bits/dim.

    Uses :func:`layoutdiffuse.diffusion.calc_bpd_loop` with the module's sampling (EMA) weights on the
    full training chain. A fixed-variance (DDPM) model is evaluated with its ``fixed_small`` reverse
    variance, the posterior variance beta~_t -- exactly a learned variance whose ``v`` channels are
    -1 (improved DDPM eq. 15), which is how it is fed to the same bound.
    Returns the mean and standard error over images and the bound's decomposition.
    """
    diffusion, model = module.diffusion, module.sampling_model
    model.eval()
    if diffusion.learn_sigma:
        chain, variance = diffusion, "learned"
        model_fn = lambda x, t: model(x, t, None)  # noqa: E731
    else:
        chain, variance = GaussianDiffusion(prediction=diffusion.prediction, learn_sigma=True, betas=diffusion.betas64).to(images.device), "fixed_small"
        model_fn = lambda x, t: (lambda out: torch.cat([out, -torch.ones_like(out)], 1))(model(x, t, None))  # noqa: E731
    g = torch.Generator(device=images.device).manual_seed(seed)
    totals, priors, decoders = [], [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out = calc_bpd_loop(chain, model_fn, images[i : i + batch_size], generator=g, progress=progress)
            totals.append(out["total_bpd"].cpu())
            priors.append(out["prior_bpd"].cpu())
            decoders.append(out["vb"][:, 0].cpu())
    total, prior, decoder = torch.cat(totals).double(), torch.cat(priors).double(), torch.cat(decoders).double()
    n = len(total)
    return {
        "bits_per_dim": round(total.mean().item(), 4),
        "bits_per_dim_stderr": round(total.std().item() / math.sqrt(n), 4) if n > 1 else None,
        "decoder_L0_bpd": round(decoder.mean().item(), 4),
        "prior_LT_bpd": round(prior.mean().item(), 6),
        "variance": variance,
        "num_timesteps": diffusion.num_timesteps,
        "n": n,
    }
