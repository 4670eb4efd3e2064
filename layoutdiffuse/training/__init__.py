"""LightningModules and callbacks."""
from .ddim import DDIMTraining
from .ddpm import DDPMTraining
from .latent import LatentDDPMTraining
from .mnist import DDIM_MNIST, DDPM_MNIST

__all__ = ["DDIMTraining", "DDPMTraining", "DDPM_MNIST", "DDIM_MNIST", "LatentDDPMTraining"]
