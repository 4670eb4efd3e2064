"""A trained module loaded only to sample, without Lightning: :class:`SamplingModule`.

``sample`` and ``edit`` (the command line, :func:`layoutdiffuse.sample`, :func:`layoutdiffuse.sampling.load_model`)
load a checkpoint only to draw from it, and importing Lightning is most of a command's start-up on a
small machine. For the training classes whose sampling set-up is :class:`~layoutdiffuse.training.ddpm.DDPMTraining`'s
own (:data:`SAMPLING_TRAININGS`), :func:`layoutdiffuse.factory.load_checkpoint` with ``sampling_only=True``
builds this module instead: the sampling (EMA) denoiser, the diffusion and the sampling options that
the training module would hold, behind the same :class:`~layoutdiffuse.training.inference.SamplingInterface`.
Other classes (improved DDPM, latent models, a class of your own) load as their training module.

Shared with ``DDPMTraining``: how a config's ``diffusion`` section splits (:data:`PROCESS_KEYS`,
:func:`split_diffusion`) and the sampling options a module starts from (:data:`SAMPLING_DEFAULTS`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from .inference import SamplingInterface

#: keys of the diffusion process in a config's ``diffusion`` section (with example values for type
#: checks); the other keys configure the training module
PROCESS_KEYS = {"training": "", "schedule": "", "num_timesteps": 1, "prediction": "", "learn_sigma": False, "beta_start": 0.0, "beta_end": 0.0, "s": 0.0}

#: the sampling options a module starts from; the config's ``diffusion.sampling`` overrides them
SAMPLING_DEFAULTS = {"sampler": "ddim", "steps": 50, "clip": True, "guidance": 1.0}

#: the training class a config without ``diffusion.training`` gets
DEFAULT_TRAINING = "DDPMTraining"

#: the training classes (``diffusion.training``) whose sampling :class:`SamplingModule` reproduces:
#: those that keep ``DDPMTraining``'s diffusion and sampling defaults (``DDPM_MNIST`` changes only its batches)
SAMPLING_TRAININGS = ("DDPMTraining", "DDPM_MNIST")


def split_diffusion(section: Mapping[str, Any], process_keys: Mapping[str, Any] = PROCESS_KEYS) -> tuple[dict[str, Any], dict[str, Any]]:
    """A config's ``diffusion`` section -> (``GaussianDiffusion`` keyword arguments, training module keyword arguments)."""
    process = {k: v for k, v in section.items() if k in process_keys and k != "training"}
    return process, {k: v for k, v in section.items() if k not in process_keys}


def training_name(config: Mapping[str, Any]) -> str:
    """The training class a config names (``diffusion.training``)."""
    return config["diffusion"].get("training", DEFAULT_TRAINING)


class SamplingModule(SamplingInterface, nn.Module):
    """The sampling half of a trained ``DDPMTraining``, without Lightning (and without training state).

    Args:
        denoising_model: the sampling weights, ``model(x_t, t, cond) -> raw output`` (e.g. a :class:`~layoutdiffuse.nn.UNet`).
        diffusion: ``GaussianDiffusion`` keyword arguments.
        image_shape: ``(C, H, W)`` of generated images.
        sampling: sampler options over :data:`SAMPLING_DEFAULTS`.
        config: the experiment config the checkpoint stores.
        class_names: the names of the layout classes.

    It holds one copy of the weights (``ema`` is ``None``: ``model`` is what the training module samples with).
    """

    ema = None
    _trainer = None  # never fitted: ``trainer_ref`` is None, as for a training module loaded from its file

    def __init__(self, denoising_model: nn.Module, diffusion: Mapping[str, Any], image_shape: Sequence[int],
                 sampling: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 class_names: Sequence[str] | None = None):
        super().__init__()
        self.model = denoising_model
        self.diffusion = GaussianDiffusion(**diffusion)
        self.image_shape = tuple(image_shape)
        self.sampling_args = {**SAMPLING_DEFAULTS, **(sampling or {})}
        self.config = dict(config or {})
        self.class_names: list[str] = list(class_names or [])

    @classmethod
    def from_config(cls, denoising_model: nn.Module, config: Mapping[str, Any], image_shape: Sequence[int],
                    class_names: Sequence[str] | None = None) -> "SamplingModule":
        """The module of a checkpoint's ``config`` around its sampling weights ``denoising_model``."""
        process, kwargs = split_diffusion(config["diffusion"])
        return cls(denoising_model, process, image_shape, kwargs.get("sampling"), config, class_names)

    @staticmethod
    def reproduces(config: Mapping[str, Any]) -> bool:
        """True when this module samples as the training module of ``config`` would (:data:`SAMPLING_TRAININGS`)."""
        return training_name(config) in SAMPLING_TRAININGS

    @property
    def device(self) -> torch.device:
        """Where the module is (that of the diffusion's coefficients, which move with it)."""
        return self.diffusion.betas.device
