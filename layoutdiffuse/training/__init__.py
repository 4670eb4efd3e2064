"""LightningModules and callbacks."""
from .ddpm import DDPMTraining
from .mnist import DDPM_MNIST

__all__ = ["DDPMTraining", "DDPM_MNIST"]
