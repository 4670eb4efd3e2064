"""Training modules by name (``diffusion.training`` in configs)."""
from __future__ import annotations

from ..registry import Registry
from .ddim import DDIMTraining
from .ddpm import DDPMTraining
from .latent import LatentDDPMTraining
from .mnist import DDIM_MNIST, DDPM_MNIST

TRAININGS: Registry = Registry("training")
TRAININGS.register("DDPMTraining")(DDPMTraining)
TRAININGS.register("DDPM_MNIST")(DDPM_MNIST)
TRAININGS.register("DDIMTraining")(DDIMTraining)
TRAININGS.register("LatentDDPMTraining")(LatentDDPMTraining)
TRAININGS.register("DDIM_MNIST")(DDIM_MNIST)
