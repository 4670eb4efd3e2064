"""Training modules by name (``diffusion.training`` in configs) and the callback config keys."""
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

#: allowed keys (with example defaults for type checks) of each callbacks section
CALLBACK_KEYS = {
    "checkpoint": {"every_n_train_steps": 1, "every_n_epochs": 1, "save_top_k": 1, "save_last": True},
    "images": {"every_n_train_steps": 1, "n": 1, "sampler": "", "steps": 1, "guidance": 1.0, "eta": 0.0, "clip": True, "seed": 0},
    "wandb": {"enabled": False, "project": "", "mode": "", "entity": None},
}
