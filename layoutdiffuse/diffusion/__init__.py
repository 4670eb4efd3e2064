"""Diffusion math: schedules, the Gaussian process, improved DDPM, samplers and guidance."""
from .gaussian import GaussianDiffusion, extract
from .guidance import classifier_free_guidance, conditioned
from .improved import calc_bpd_loop, hybrid_loss, vlb_terms
from .resample import TIMESTEP_SAMPLERS, LossSecondMomentResampler, UniformSampler, make_timestep_sampler
from .samplers import SAMPLERS, Sampler, make_sampler, spaced_timesteps
from . import solvers  # noqa: F401  (registers the plms and dpm++ samplers)
from .schedule import SCHEDULES, make_betas

__all__ = ["GaussianDiffusion", "extract", "classifier_free_guidance", "conditioned", "SAMPLERS", "Sampler", "make_sampler", "spaced_timesteps", "SCHEDULES", "make_betas",
           "calc_bpd_loop", "hybrid_loss", "vlb_terms", "TIMESTEP_SAMPLERS", "LossSecondMomentResampler", "UniformSampler", "make_timestep_sampler"]
