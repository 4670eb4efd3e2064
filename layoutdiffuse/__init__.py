"""layoutdiffuse: layout-to-image diffusion (DDPM, improved DDPM, the LayoutDiffuse adaptor).

The public names import from the top, lazily (``import layoutdiffuse`` loads neither torch nor
Lightning until a name is used)::

    from layoutdiffuse import DDPMTraining, UNet, sample, load_checkpoint

Where each lives: models in :mod:`layoutdiffuse.nn`, the diffusion math and samplers in
:mod:`layoutdiffuse.diffusion`, LightningModules in :mod:`layoutdiffuse.training`, building and
training from configs in :mod:`layoutdiffuse.experiment`, every module built (and loaded from its checkpoint)
by :mod:`layoutdiffuse.factory`, checkpoint files in :mod:`layoutdiffuse.checkpoints`, devices and
precisions in :mod:`layoutdiffuse.devices`, adaptation in :mod:`layoutdiffuse.adapt`.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # models and their building blocks (the seed's names)
    "UNet": "nn", "EmbedBlock": "nn", "ConditionBlock": "nn", "ResBlock": "nn", "ScaleShiftResBlock": "nn",
    "AttentionBlock": "nn", "LayoutAdaptor": "nn", "LayoutAttention": "nn",
    # diffusion process and samplers
    "GaussianDiffusion": "diffusion", "make_sampler": "diffusion", "classifier_free_guidance": "diffusion",
    # training modules
    "DDPMTraining": "training", "DDIMTraining": "training", "LatentDDPMTraining": "training",
    "DDPM_MNIST": "training", "DDIM_MNIST": "training",
    # configs, experiments, checkpoints
    "load_config": "config", "validate": "config", "build_module": "factory", "train": "experiment",
    "load_checkpoint": "factory", "export_weights": "checkpoints",
    # adaptation, sampling, the layout type
    "adapt": "adapt", "param_groups": "adapt", "sample": "sampling", "sample_batched": "sampling", "load_model": "sampling",
    "edit": "editing",
    "validate_layout": "layout", "pad_layouts": "layout", "LayoutError": "layout", "UserError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
