"""LightningModules and callbacks.

The names load lazily, so the Lightning-free modules of this package (:mod:`.inference`,
:mod:`.sampling_module`, :mod:`.meta`) import without Lightning.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"DDIMTraining": "ddim", "DDPMTraining": "ddpm", "LatentDDPMTraining": "latent", "DDPM_MNIST": "mnist", "DDIM_MNIST": "mnist"}

__all__ = ["DDIMTraining", "DDPMTraining", "DDPM_MNIST", "DDIM_MNIST", "LatentDDPMTraining"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
