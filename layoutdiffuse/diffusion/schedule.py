"""Beta schedules (DDPM linear, LDM scaled-linear, improved-DDPM cosine)."""
from __future__ import annotations

import math

import torch

from ..registry import Registry
from ..errors import UserError

SCHEDULES: Registry = Registry("beta schedule")


@SCHEDULES.register("linear")
def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM (Ho et al. 2020): ``linspace(beta_start, beta_end, T)``, scaled by ``1000 / T``
    so a shorter chain keeps the same total noise (as in improved DDPM). float64 ``(T,)``."""
    scale = 1000 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


@SCHEDULES.register("scaled_linear")
def scaled_linear_betas(num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """LDM / Stable Diffusion: ``linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2``. float64 ``(T,)``."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM eq. 17: ``cos(((t + s) / (1 + s)) * pi / 2) ** 2`` for ``t`` in [0, 1]."""
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


@SCHEDULES.register("cosine")
def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021): ``beta_t = min(1 - abar(t+1)/abar(t), max_beta)``. float64 ``(T,)``."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = cosine_alpha_bar(t, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, num_timesteps: int, **kwargs) -> torch.Tensor:
    """Betas of a registered schedule (``linear``, ``scaled_linear``, ``cosine``). float64 ``(T,)``.

    ``num_timesteps`` must be an integer in [1, :data:`~layoutdiffuse.schema.MAX_TIMESTEPS`] (each
    schedule buffer holds T floats), and the schedule must give betas in (0, 1) for it (the linear
    schedule, stretched to 1000 steps' noise, needs at least 21). Errors name the config key."""
    from ..schema import MAX_TIMESTEPS, check_integer

    check_integer(num_timesteps, "config key 'diffusion.num_timesteps'", 1, MAX_TIMESTEPS)
    betas = SCHEDULES.get(schedule)(num_timesteps, **kwargs)
    if not betas.is_meta and not bool(((betas > 0) & (betas < 1)).all()):  # a meta-device probe is checked when really built
        raise UserError(f"config key 'diffusion.num_timesteps' = {num_timesteps} with the {schedule!r} schedule gives betas outside (0, 1) "
                        f"(they reach {betas.max().item():.3g}); use more timesteps or another schedule")
    return betas
