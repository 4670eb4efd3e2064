"""Masked sampling (inpainting) with any registered sampler, RePaint-style.

    sampler = make_sampler("ddim", diffusion, steps=50)
    x0 = masked_sample(sampler, model_fn, known, keep, generator=g, resample=2)

At every kept timestep ``t_i`` the region to keep is replaced by the forward-noised original
``q(x_t | known)`` (fresh noise each time), then the sampler takes its ordinary step
(:meth:`~layoutdiffuse.diffusion.samplers.Sampler.step`); so the generated region is sampled
*given* the kept one, and the kept pixels of the result are the original's, exactly (the last
replacement is by ``known`` itself). The loop drives the sampler's own step: there is no second
sampler implementation here.

``resample = r`` (RePaint's resampling, Lugmayr et al. 2022) repeats each step ``r`` more times:
after a step ``t_i -> t_{i-1}`` the result is diffused back to ``t_i`` with
``q(x_{t_i} | x_{t_{i-1}}) = N(sqrt(abar_i / abar_{i-1}) x, (1 - abar_i / abar_{i-1}) I)`` and the step
is taken again, which lets the generated region agree with the kept one. It costs ``r + 1`` model
evaluations per step. Multistep samplers (``plms``, ``dpm++``) start a new run (empty history) at a
repeated step (a first-order step there); ``ancestral`` and ``ddim`` are the natural choices with resampling.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .gaussian import ModelFn, extract
from .samplers import Run, Sampler


def renoise(sampler: Sampler, x: torch.Tensor, i: int, generator: torch.Generator | None) -> torch.Tensor:
    """Diffuse ``x`` at ``timesteps[i - 1]`` forward to ``timesteps[i]``: one draw of ``q(x_{t_i} | x_{t_{i-1}})``."""
    abar = sampler.diffusion.alphas_cumprod.to(x.device)
    ratio = extract(abar, sampler.t_batch(i, x), x.shape) / extract(abar, sampler.t_batch(i - 1, x), x.shape)
    return ratio.sqrt() * x + (1 - ratio).sqrt() * sampler.noise_like(x, generator)


@torch.no_grad()
def masked_sample(
    sampler: Sampler,
    model_fn: ModelFn,
    known: torch.Tensor,
    keep: torch.Tensor,
    generator: torch.Generator | None = None,
    resample: int = 0,
    x_T: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample x0 ``(B, C, H, W)`` whose ``keep`` region is ``known`` and the rest generated to match.

    Args:
        sampler: any :class:`Sampler` (its timesteps and step rule are used as they are).
        model_fn: ``model_fn(x_t, t)`` as for :meth:`Sampler.sample` (conditioning folded in).
        known: ``(B, C, H, W)`` the image whose ``keep`` region is kept (values elsewhere unused).
        keep: ``(B, 1 | C, H, W)`` bool, True where ``known`` is kept.
        resample: extra passes per step (RePaint), ``>= 0``.
        x_T: the starting noise (default: drawn from ``generator``).
    """
    if resample < 0:
        raise UserError(f"resample must be >= 0 (extra passes per step), got {resample}")
    keep = keep.to(device=known.device, dtype=torch.bool)
    x = sampler.init_noise(known.shape, generator, known.device) if x_T is None else x_T
    run = Run()
    for i in tqdm(range(len(sampler.timesteps) - 1, -1, -1), desc="masked sampling", disable=not progress, leave=False):
        passes = resample + 1 if i > 0 else 1  # the last step lands on x0: nothing to diffuse back from
        for r in range(passes):
            noised = sampler.diffusion.q_sample(known, sampler.t_batch(i, x), sampler.noise_like(known, generator))
            if r > 0:  # a repeated step starts a new trajectory
                run = Run()
            x_prev = sampler.step(model_fn, torch.where(keep, noised, x), i, generator, run)
            x = renoise(sampler, x_prev, i, generator) if r < passes - 1 else x_prev
    return torch.where(keep, known, x)
