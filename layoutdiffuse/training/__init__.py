"""LightningModules and callbacks."""
from .ddim import DDIMTraining
from .ddpm import DDPMTraining
from .mnist import DDPM_MNIST

__all__ = ["DDIMTraining", "DDPMTraining", "DDPM_MNIST"]
